"""Helpers of the trust tests (issue 14): tiny specs, the CLI in a subprocess, fake installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import write_spec

REPO = Path(__file__).resolve().parents[1]


def tiny(name: str = "t", **overrides) -> dict:
    """Three arms that train in a few seconds: clean and random noise, two epochs."""
    spec = {
        "name": name,
        "data": {"name": "digits", "subset": {"train": 200, "test": 100}},
        "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 1}},
        "training": {"epochs": 2, "batch_size": 64, "optimizer": {"name": "sgd", "lr": 0.05}},
        "sal": {"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
        "poisons": [{"name": "random-noise", "label": "noise", "params": {"epsilon": 0.1}}],
    }
    spec.update(overrides)
    return spec


def spec_file(folder: Path, name: str = "t", **overrides) -> Path:
    return write_spec(folder / f"{name}.yaml", tiny(name, **overrides))


def cli(
    *args: str,
    cwd: Path,
    site: Path | None = None,
    env: dict[str, str] | None = None,
    umask: int | None = None,
    timeout: int = 600,
) -> subprocess.CompletedProcess[str]:
    """`python -m harness.cli ARGS` in a fresh interpreter (one torch thread)."""
    full = dict(os.environ)
    full["OMP_NUM_THREADS"] = "1"
    if site is not None:
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), full.get("PYTHONPATH")]))
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def install(site: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Write `<name>-<version>.dist-info` into `site`, as pip does; return the folder."""
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{key} = {target}\n" for key, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[harness]\n{lines}", encoding="utf-8")
    return dist_info


def plugin_site(folder: Path, package: str, source: str, version: str = "0.1.0") -> Path:
    """A site folder where distribution `<package>` (one module) is installed."""
    site = folder / "site"
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text(source, encoding="utf-8")
    install(site, package.replace("_", "-"), version, {"main": package})
    return site


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
