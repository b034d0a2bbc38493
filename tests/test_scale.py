"""Large data and the execution settings: uint8 images, streaming from disk, the ImageNet-100 spec,
the dry run, uint8 poisons, and settings that never touch a result's identity."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from conftest import tiny_spec, write_spec
from PIL import Image
from ruamel.yaml import YAML

from harness.api import BuildContext, StoragePolicy
from harness.cli import main
from harness.data import DiskImages, Subset, float_to_pixels, pixels_to_float
from harness.entries import read_entries
from harness.pluginmanager import get_components
from harness.progress import LineReporter
from harness.runfolder import RunFolder
from harness.specfile import load_spec
from harness_plugins import datasets

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = {"wall_time_s", "hdf5"}


def build(name: str, storage: StoragePolicy | None = None, subset=None, **params):
    record = {r.name: r for r in datasets.harness_register_datasets()}[name]
    context = BuildContext(subset=subset, storage=storage)
    return record.factory(record.params(**params), context)


def image_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> Path:
    """train/ and test/ of random-noise PNGs (lossless: the decoded bytes are what was written)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("test", max(1, per_class // 3))):
        for c in range(classes):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., 0] = pixels[..., 0] // 2 + 127 * (c % 2)  # something to learn
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


# --- uint8 images, converted per batch --------------------------------------------------------


def test_uint8_pixels_convert_to_exactly_the_float32_the_readers_computed_before() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    before = pixels.astype(np.float32) / np.float32(255.0)  # what the CIFAR reader did
    assert np.array_equal(pixels_to_float(torch.from_numpy(pixels)).numpy(), before)
    assert torch.equal(
        float_to_pixels(pixels_to_float(torch.from_numpy(pixels))), torch.arange(256)
    )


def test_cifar_is_kept_as_uint8_with_the_subset_taken_before_converting(tmp_path: Path) -> None:
    from test_datasets import fake_cifar10

    folder = fake_cifar10(tmp_path, per_batch=20)
    full = build("cifar10", root=str(folder))
    assert full.train.storage == "uint8" and full.train.nbytes == 100 * 3 * 32 * 32
    first = pickle.loads((folder / "data_batch_1").read_bytes(), encoding="latin1")
    expected = first["data"][:20].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
    assert np.array_equal(full.train.x[:20].numpy(), expected)  # bit for bit
    small = build("cifar10", subset=Subset(train=30, test=None, seed=4), root=str(folder))
    assert len(small.train) == 30 and small.train.storage == "uint8"
    assert torch.equal(small.train.x, full.train.x[small.train.indices])
    assert torch.equal(
        small.train.rows(torch.tensor([3, 1])), full.train.x[small.train.indices[[3, 1]]]
    )


def test_a_split_over_the_memory_budget_streams_from_a_uint8_file_in_the_cache(
    tmp_path: Path,
) -> None:
    root = image_folder(tmp_path / "folder", classes=3, per_class=8, size=16)
    memory = build("image-folder", root=str(root))
    policy = StoragePolicy(budget=1000, workers=1, cache=tmp_path / "arrays")
    streamed = build("image-folder", storage=policy, root=str(root))
    assert memory.train.storage == "uint8" and streamed.train.storage == "disk"
    [array] = [p for p in (tmp_path / "arrays").glob("*.npy") if len(DiskImages.open(p)) == 24]
    assert array.stat().st_size < 24 * 3 * 16 * 16 + 200  # one byte per value, plus the header
    order = [torch.tensor([5, 0, 23]), torch.tensor([7, 8, 9, 10]), torch.tensor([1])]
    for workers in (0, 1):
        for got, idx in zip(streamed.train.batches(order, workers=workers), order, strict=True):
            assert torch.equal(got, memory.train.x[idx])
    again = build("image-folder", storage=policy, root=str(root))  # written once, then reused
    assert again.train.inputs.path == streamed.train.inputs.path
    assert array.stat().st_mtime_ns == again.train.inputs.path.stat().st_mtime_ns


def peak_rss_mib(args: list[str], env: dict[str, str]) -> float:
    """Run `harness` in a fresh process; its peak resident memory in MiB. (Data workers are
    forked: their pages are the parent's, shared until written, so they are not added.)"""
    code = (
        "import resource, sys\n"
        "from harness.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print(f'PEAK {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}')\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("PEAK"))
    return float(line.split()[1])


def test_a_folder_larger_than_the_memory_budget_trains_exactly_as_in_memory(tmp_path: Path) -> None:
    """A generated ImageFolder whose training split (2.4 MB as uint8, 9.8 MB as float32) is over a
    1 MB budget: decoded once into the cache, streamed by a worker process, same values."""
    root = image_folder(tmp_path / "folder", classes=4, per_class=50, size=64)
    spec = tiny_spec(
        "big",
        data={"name": "image-folder", "params": {"root": str(root)}},
        training={"epochs": 2, "batch_size": 40, "augmentation": [{"name": "crop"}]},
        sal={"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
        poisons=[],
    )
    path = write_spec(tmp_path / "big.yaml", spec)
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    memory = peak_rss_mib(["eval", str(path), "--output", str(tmp_path / "memory"), "--quiet"], env)
    streamed = peak_rss_mib(
        ["eval", str(path), "--output", str(tmp_path / "streamed"), "--quiet"]
        + ["--memory-budget", "1", "--data-workers", "1"],
        env,
    )
    print(f"peak RSS: {memory:.0f} MiB with the data in memory, {streamed:.0f} MiB streamed")
    arrays = sorted((tmp_path / "cache" / "arrays").glob("*.npy"))
    # the training split streams; the test split (64 images, 0.8 MB) fits the budget
    assert [DiskImages.open(p).shape for p in arrays] == [(200, 3, 64, 64)]
    a = RunFolder(tmp_path / "memory" / "big").store().read_arm("clean__none__s0")
    b = RunFolder(tmp_path / "streamed" / "big").store().read_arm("clean__none__s0")
    np.testing.assert_array_equal(a.sal, b.sal)
    for name in ("train_loss", "test_loss", "test_metric", "sal_base_loss"):
        np.testing.assert_array_equal(a.metrics[name], b.metrics[name])
    one = read_entries(tmp_path / "memory" / "big")
    two = read_entries(tmp_path / "streamed" / "big")
    assert [e.model_dump(exclude=VOLATILE) for e in one] == [
        e.model_dump(exclude=VOLATILE) for e in two
    ]


# --- the ImageNet-100 spec -------------------------------------------------------------------------


def standin_spec(tmp_path: Path, **changes) -> Path:
    """specs/imagenet100-resnet18.yaml on a synthetic stand-in: 100 classes of small JPEGs,
    resized to 224 px by the data set as the real ones are."""
    root = tmp_path / "imagenet100"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(100):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "0.JPEG", quality=90)
    yaml = YAML(typ="safe", pure=True)
    spec = yaml.load((ROOT / "specs" / "imagenet100-resnet18.yaml").read_text())
    spec["data"]["params"]["root"] = str(root)
    for key, value in changes.items():
        spec[key] = value(spec[key]) if callable(value) else value
    return write_spec(tmp_path / "imagenet100-resnet18.yaml", spec)


def test_the_imagenet100_spec_validates(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(standin_spec(tmp_path))]) == 0
    assert "valid" in capsys.readouterr().out


def test_the_imagenet100_spec_runs_two_epochs_on_a_synthetic_stand_in(tmp_path: Path) -> None:
    """At 224 px with the ImageNet stem, its training split streamed from disk; narrower, with a
    smaller probe and no poisons, so that two epochs take seconds on a CPU."""
    spec = standin_spec(
        tmp_path,
        backbone=lambda b: {**b, "params": {**b["params"], "width": 4}},
        training=lambda t: {**t, "epochs": 2, "batch_size": 50},
        sal=lambda s: {**s, "iterations": 1, "probe_size": 16, "probe_batch_size": 16},
        poisons=[],
        execution={"executor": "local", "memory_budget_mb": 8, "data_workers": 1},
    )
    out = tmp_path / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["eval", str(spec), "--output", str(out), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    arm = RunFolder(out / "imagenet100-resnet18").store().read_arm("clean__none__s0")
    assert arm.complete and arm.sal.shape == (2, 21)
    [entry] = read_entries(out / "imagenet100-resnet18")
    assert entry.track.backbone.params == {"width": 4, "stem": "imagenet"}
    streamed = list((Path(os.environ["HARNESS_CACHE"]) / "arrays").glob("*.npy"))
    assert any(DiskImages.open(p).shape == (100, 3, 224, 224) for p in streamed)


# --- execution settings, the dry run, uint8 poisons ---------------------------------------------


def test_execution_settings_change_neither_the_hash_nor_the_resolved_spec(tmp_path: Path) -> None:
    plain = load_spec(write_spec(tmp_path / "a.yaml", tiny_spec("a")), get_components())
    ray = tiny_spec("a", execution={"executor": "ray", "cpus_per_arm": 2, "memory_budget_mb": 64})
    placed = load_spec(write_spec(tmp_path / "b.yaml", ray), get_components())
    assert placed.spec.execution.executor == "ray" and placed.spec.execution.cpus_per_arm == 2
    assert placed.hash == plain.hash and "execution" not in placed.resolved()


def test_execution_options_are_checked_and_named(tmp_path: Path, capsys) -> None:
    path = write_spec(tmp_path / "o.yaml", tiny_spec("o"))
    assert main(["eval", str(path), "--cpus-per-arm", "0", "--dry-run"]) == 2
    assert "--cpus-per-arm" in capsys.readouterr().err
    assert main(["eval", str(path), "--address", "127.0.0.1:1", "--dry-run"]) == 2
    assert "--executor ray" in capsys.readouterr().err


def test_a_dry_run_lists_arms_poisons_and_costs_and_writes_nothing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # no poison generated yet
    spec = tiny_spec("dry", defences=["none", "cutout"])
    path = write_spec(tmp_path / "dry.yaml", spec)
    out = tmp_path / "runs"
    assert main(["eval", str(path), "--output", str(out), "--dry-run", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert "6 arms" in text and "arm 6/6" in text
    assert "noise-sample (seed 0)  to generate" in text
    assert "used by 2 arm(s): noise-sample__none__s0, noise-sample__cutout__s0" in text
    assert "waits on noise-class (seed 0)" in text and "s/epoch" in text
    assert "estimated arm time" in text


def test_uint8_poisons_stay_within_their_budget_and_are_their_own_track(tmp_path: Path) -> None:
    clean = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    delta = (torch.rand(8, 3, 4, 4) * 2 - 1) * (8 / 255)
    poisoned = (pixels_to_float(clean) + delta).clamp(0, 1)
    stored = float_to_pixels(poisoned)
    assert (pixels_to_float(stored) - poisoned).abs().max() <= 0.5 / 255 + 1e-7
    assert (stored.int() - clean.int()).abs().max() <= 8  # an 8/255 budget stays 8/255

    spec = tiny_spec("q", training={"epochs": 1, "batch_size": 50, "poison_storage": "uint8"})
    spec["poisons"] = spec["poisons"][:1]
    path = write_spec(tmp_path / "q.yaml", spec)
    assert main(["eval", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    entries = {e.arm_id: e for e in read_entries(tmp_path / "runs" / "q")}
    assert entries["noise-sample__none__s0"].track.training["poison_storage"] == "uint8"
    resolved = json.loads((tmp_path / "runs" / "q" / "spec.resolved.json").read_text())
    assert resolved["spec"]["training"]["poison_storage"] == "uint8"


def test_progress_names_each_arm_k_of_n_with_an_eta() -> None:
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.extend(t for t in text.splitlines() if t)

        def flush(self) -> None: ...

    reporter = LineReporter(Stream())
    reporter.plan(["a", "b"], 4)
    reporter.arm_start("a", 4, 0)
    row = {"train_loss": 1.0, "test_metric": 0.5, "sal": [0.1, 0.2]}
    reporter.epoch_done("a", 1, 4, {**row, "train_seconds": 1.0, "sal_seconds": 1.0})
    reporter.epoch_done("a", 2, 4, {**row, "train_seconds": 2.0, "sal_seconds": 2.0})
    assert lines[0] == "[arm 1/2] a: training 4 epochs"
    # 3 s per epoch so far: 2 epochs of a, 4 of b, one arm at a time
    assert lines[-1].startswith("[arm 1/2] a: epoch 2/4") and lines[-1].endswith(
        "ETA arm 6s, run 18s"
    )
    reporter.arm_done("b", skipped=True)
    assert lines[-1] == "[arm 2/2] b: already complete, reused"
