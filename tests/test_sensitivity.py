"""benchmarks/sensitivity.py on a tiny stand-in run: every variant is measured, and the run's
own settings measured again on its snapshots give the UD the run recorded on those epochs."""

from __future__ import annotations

import json
import sys

import h5py
from conftest import load_benchmark, tiny_spec, write_spec

from harness.cli import main
from harness.scoring import score


def test_every_variant_is_measured_and_the_runs_own_settings_reproduce_its_ud(
    tmp_path, monkeypatch
):
    poisons = [
        {"name": "random-noise", "label": "em", "params": {"epsilon": 0.1}},
        {"name": "random-noise", "label": "tap", "params": {"epsilon": 0.1, "mode": "class-wise"}},
    ]
    spec = tiny_spec(
        "paper-table1-cpu",
        poisons=poisons,
        backbone={"name": "small-cnn", "params": {"width": 4, "blocks": 5}},
        training={"epochs": 4, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}},
    )
    path = write_spec(tmp_path / "t1.yaml", spec)
    runs = tmp_path / "runs"
    assert main(["eval", str(path), "--output", str(runs), "--quiet", "--save-snapshots", "2"]) == 0
    run = runs / "paper-table1-cpu"
    out = tmp_path / "docs" / "sensitivity.md"
    monkeypatch.setattr(sys, "argv", ["sensitivity", str(run), "--out", str(out)])
    module = load_benchmark("sensitivity")
    module.main()

    rows = json.loads(out.with_suffix(".json").read_text())
    settings = [row["setting"] for row in rows]
    for label, _ in module.SNAPSHOT_VARIANTS:
        assert label in settings
    assert "first 3 epochs" not in settings  # only cuts shorter than the run
    assert any(s.startswith("4 of ") for s in settings)

    # the run's settings measured again on epochs 2 and 4 give the UD of those recorded epochs
    with h5py.File(run / "run.h5", "r") as f:
        sal = {arm: f[f"arms/{arm}__none__s0/sal"][()] for arm in ("clean", "em", "tap")}
    again = next(row for row in rows if row["setting"] == "run's settings")
    assert again["epochs"] == "2,4"
    for poison in ("em", "tap"):
        assert again["ud"][poison] == score(sal[poison][[1, 3]], sal["clean"][[1, 3]]).ud
    assert "UD(em)" in out.read_text() and "UD(tap)" in out.read_text()
    assert (out.parent / "figures" / "sensitivity.png").stat().st_size > 0

    # adding a recorded row later (here the small-CNN row) reuses the measured rows, measuring
    # nothing again
    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(module, "snapshots", no_measuring)
    again_out = tmp_path / "again" / "sensitivity.md"
    argv = [str(run), "--small-cnn", str(run), "--measured", str(out.with_suffix(".json"))]
    monkeypatch.setattr(sys, "argv", ["sensitivity", *argv, "--out", str(again_out)])
    module.main()
    rows_again = json.loads(again_out.with_suffix(".json").read_text())
    measured = [row for row in rows if row["group"] == module.MEASURED]
    assert [row for row in rows_again if row["group"] == module.MEASURED] == measured
    small = next(row for row in rows_again if row["setting"].startswith("small CNN"))
    assert small["ud"]["em"] == score(sal["em"], sal["clean"]).ud
    assert "`sensitivity.json`, this script's earlier output" in again_out.read_text()
