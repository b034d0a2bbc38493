"""Shared helpers: tiny specs that train in a second or two on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML


def tiny_spec(name: str = "tiny", **overrides) -> dict:
    spec = {
        "name": name,
        "data": {"name": "digits", "subset": {"train": 300, "test": 200}},
        "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 2}},
        "training": {"epochs": 3, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}},
        "sal": {"iterations": 3, "probe_size": 64, "probe_batch_size": 32},
        "poisons": [
            {"name": "random-noise", "label": "noise-sample", "params": {"epsilon": 0.1}},
            {
                "name": "random-noise",
                "label": "noise-class",
                "params": {"epsilon": 0.1, "mode": "class-wise"},
            },
        ],
    }
    for key, value in overrides.items():
        spec[key] = value
    return spec


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (`benchmarks/NAME.py`), to test its parts."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_spec(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        YAML(typ="safe", pure=True).dump(spec, f)
    return path


@pytest.fixture
def spec_file(tmp_path: Path):
    """A function writing a tiny spec (with overrides) into the test's folder."""

    def make(name: str = "tiny", **overrides) -> Path:
        return write_spec(tmp_path / f"{name}.yaml", tiny_spec(name, **overrides))

    return make


def pytest_configure(config) -> None:
    """Generated poisons are cached under $HARNESS_CACHE; tests keep theirs out of the user's cache.

    One torch thread per test process (and the `harness` processes tests start), unless the
    caller chose otherwise: the suite runs on pytest-xdist with one worker per core, and two
    multi-threaded torch processes on the same cores slow each other several times over.
    """
    import os
    import tempfile

    os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="harness-test-cache-")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def figures_spec() -> dict:
    """Three arms on the small CNN, the clean and one poisoned arm tracing their parameters."""
    return tiny_spec(
        "figs",
        training={"epochs": 3, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.1}},
        sal={"iterations": 2, "probe_size": 64, "probe_batch_size": 32},
        landscape={"enabled": True, "every_steps": 2, "arms": ["clean", "noise-sample"]},
    )


def linear_spec() -> dict:
    """Another track (the linear backbone), two seeds: for leaderboards."""
    return tiny_spec(
        "lin",
        backbone={"name": "linear"},
        training={"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.1}},
        sal={"iterations": 2, "probe_size": 64, "probe_batch_size": 32},
        poisons=[
            {
                "name": "random-noise",
                "label": "noise-class",
                "params": {"epsilon": 0.1, "mode": "class-wise"},
            }
        ],
        seeds=[0, 1],
    )


@pytest.fixture(scope="session")
def small_runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs of different tracks, trained once per test session: {name: run folder}.

    One torch thread: on a busy 2-core machine, tiny models train several times faster so.
    """
    import torch

    from harness.cli import main

    root = tmp_path_factory.mktemp("small-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec in (figures_spec(), linear_spec()):
            path = write_spec(root / f"{spec['name']}.yaml", spec)
            assert main(["eval", str(path), "--output", str(root / "runs"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"figs": root / "runs" / "figs", "lin": root / "runs" / "lin"}


REPO = Path(__file__).resolve().parent.parent
#: the CIFAR-10 ImageFolder archive: named by $HARNESS_CIFAR10_JPG, else shared/ beside the clone
#: (as in CI), else this project's machines' copy
CIFAR10_ARCHIVES = [
    os.environ.get("HARNESS_CIFAR10_JPG"),
    REPO.parent / "shared" / "data" / "cifar10-jpg.tar.xz",
    Path("/work/shared/data/cifar10-jpg.tar.xz"),
]
#: where the specs and official tracks read CIFAR-10 from (`harness data extract` puts it there)
CIFAR10_CACHE = Path("~/.cache/harness/data/cifar10-jpg").expanduser()


@pytest.fixture(scope="session")
def cifar10_folder() -> Path:
    """CIFAR-10 as an ImageFolder in the user's data cache (not the per-session $HARNESS_CACHE
    the tests use for poisons), extracted from the archive once; skips where no archive is on
    the machine. Extraction is atomic, so xdist workers asking at once are safe."""
    from harness.archive import extract_archive

    archive = next((Path(c) for c in CIFAR10_ARCHIVES if c and Path(c).exists()), None)
    if archive is None:
        pytest.skip(f"{CIFAR10_ARCHIVES[1]} is not on this machine")
    return extract_archive(archive, CIFAR10_CACHE)
