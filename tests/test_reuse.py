"""`harness eval --reuse-arms RUN` adopts every arm another run already trained identically;
`--reuse-clean RUN` only its clean arms, and refuses one trained otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_spec, write_spec

from harness.cli import main
from harness.entries import read_entries

VOLATILE = {"wall_time_s", "hdf5"}
NOISE_SAMPLE = {"name": "random-noise", "label": "noise-sample", "params": {"epsilon": 0.1}}


def noise_class(epsilon: float) -> dict:
    return {
        "name": "random-noise",
        "label": "noise-class",
        "params": {"epsilon": epsilon, "mode": "class-wise"},
    }


def comparable(run: Path) -> dict[str, dict]:
    return {e.arm_id: e.model_dump(exclude=VOLATILE) for e in read_entries(run)}


def sal(run: Path) -> dict[str, np.ndarray]:
    with h5py.File(run / "run.h5", "r") as f:
        return {arm: f["arms"][arm]["sal"][()] for arm in f["arms"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A finished run of clean, noise-sample (ε 0.1) and noise-class (ε 0.1)."""
    root = tmp_path_factory.mktemp("reuse")
    spec = write_spec(
        root / "first.yaml",
        tiny_spec("first", poisons=[NOISE_SAMPLE, noise_class(0.1)], training={"epochs": 2}),
    )
    assert main(["eval", str(spec), "--output", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / "first"


def test_reuse_arms_adopts_identical_arms_and_trains_the_others(first_run, tmp_path, capsys):
    # same track; noise-sample identical, noise-class crafted with another ε (same arm id)
    second = tiny_spec("second", poisons=[NOISE_SAMPLE, noise_class(0.2)], training={"epochs": 2})
    spec = write_spec(tmp_path / "second.yaml", second)
    args = ["eval", str(spec), "--output"]
    assert main([*args, str(tmp_path / "reused"), "--reuse-arms", str(first_run)]) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    assert f"arms from {first_run}: clean__none__s0, noise-sample__none__s0" in said
    assert "not reused" in said and "noise-class__none__s0" in said
    reused = tmp_path / "reused" / "second"
    record = json.loads((reused / "reused_arms.json").read_text())
    assert (
        list(record) == ["noise-sample__none__s0"] and record["noise-sample__none__s0"]["spec_hash"]
    )
    assert json.loads((reused / "clean_reference.json").read_text())["arms"] == ["clean__none__s0"]

    # the adopted arms are what training them here gives: a run without reuse agrees entirely
    assert main([*args, str(tmp_path / "trained"), "--quiet"]) == 0
    trained = tmp_path / "trained" / "second"
    ours, theirs = comparable(reused), comparable(trained)
    assert {e["clean_reference"]["run"] for e in ours.values()} == {"first"}  # provenance kept
    for entries in (ours, theirs):
        for entry in entries.values():
            entry.pop("clean_reference")
    assert ours == theirs
    for arm, values in sal(trained).items():
        np.testing.assert_array_equal(sal(reused)[arm], values)
    assert not np.array_equal(
        sal(reused)["noise-class__none__s0"], sal(first_run)["noise-class__none__s0"]
    )


def test_a_dry_run_says_which_arms_it_would_adopt_and_copies_nothing(first_run, tmp_path, capsys):
    second = tiny_spec("second", poisons=[NOISE_SAMPLE, noise_class(0.2)], training={"epochs": 2})
    spec = write_spec(tmp_path / "second.yaml", second)
    out = tmp_path / "runs"
    args = ["eval", str(spec), "--output", str(out), "--reuse-arms", str(first_run)]
    assert main([*args, "--dry-run", "--quiet"]) == 0
    said = capsys.readouterr().out
    lines = {line.split()[2]: line for line in said.splitlines() if line.startswith("  arm ")}
    for arm in ("clean__none__s0", "noise-sample__none__s0"):
        assert f"adopted from {first_run}" in lines[arm] and "remaining 0s" in lines[arm]
    assert (
        "new" in lines["noise-class__none__s0"] and "adopted" not in lines["noise-class__none__s0"]
    )
    assert (
        f"not reused from {first_run} (configured otherwise there; trained here): noise-class"
        in said
    )
    assert not out.exists()  # nothing copied, nothing written

    # the run then adopts exactly those
    assert main(args) == 0
    said = capsys.readouterr()
    assert f"arms from {first_run}: clean__none__s0, noise-sample__none__s0" in said.out + said.err


def test_reuse_clean_refuses_a_clean_arm_trained_otherwise(first_run, tmp_path, capsys):
    other = tiny_spec("other", poisons=[NOISE_SAMPLE], training={"epochs": 3})  # another recipe
    spec = write_spec(tmp_path / "other.yaml", other)
    code = main(
        ["eval", str(spec), "--output", str(tmp_path / "runs"), "--reuse-clean", str(first_run)]
    )
    assert code == 2
    assert "cannot be reused" in capsys.readouterr().err
