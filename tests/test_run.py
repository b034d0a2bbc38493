"""A whole run on a tiny spec: the HDF5 layout, the entries, rescoring, reuse and refusal."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from harness.cli import main
from harness.entries import Entry, compute_entries, read_entries
from harness.errors import RunStateError
from harness.pluginmanager import get_components
from harness.runner import Runner
from harness.specfile import load_spec

ARMS = {"clean__none__s0", "noise-sample__none__s0", "noise-class__none__s0"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(spec file, run folder) of a tiny three-arm run, trained once for the whole module."""
    from conftest import tiny_spec, write_spec

    root = tmp_path_factory.mktemp("run")
    spec = write_spec(root / "tiny.yaml", tiny_spec())
    assert main(["eval", str(spec), "--output", str(root / "runs"), "--quiet"]) == 0
    return spec, root / "runs" / "tiny"


def test_run_folder_holds_spec_hdf5_checkpoints_entries_and_table(finished_run):
    _, run = finished_run
    assert (run / "spec.yaml").exists() and (run / "spec.resolved.json").exists()
    assert (run / "run.h5").exists() and (run / "results.md").exists()
    assert {p.stem for p in (run / "entries").glob("*.json")} == ARMS
    assert {p.stem for p in (run / "checkpoints").glob("*.pt")} == ARMS


def test_hdf5_layout(finished_run):
    spec, run = finished_run
    loaded = load_spec(spec, get_components())
    with h5py.File(run / "run.h5", "r") as f:
        assert f.attrs["format_version"] == 1
        assert f.attrs["spec_hash"] == loaded.hash
        assert json.loads(f.attrs["spec"])["name"] == "tiny"
        assert set(f["arms"]) == ARMS
        arm = f["arms/noise-class__none__s0"]
        layers = [s.decode() for s in arm["layer_names"][()]]
        # small-cnn with two blocks: two convolutions, then the classification head
        assert layers == ["backbone.features.0.weight", "backbone.features.3.weight", "head.weight"]
        for name in ("sal", "sal_ascent_loss", "sal_descent_loss"):
            assert arm[name].shape == (3, 3)  # epochs × layers
            assert arm[name].maxshape == (None, 3)  # resizable along epochs: streamed
        for name in (
            "train_loss",
            "test_loss",
            "test_metric",
            "sal_base_loss",
            "lr",
            "train_seconds",
            "sal_seconds",
        ):
            assert arm["metrics"][name].shape == (3,)
        assert arm.attrs["last_complete_epoch"] == 3 and bool(arm.attrs["complete"])
        config = json.loads(arm.attrs["config"])
        assert config["poison"]["params"] == {"epsilon": 0.1, "mode": "class-wise"}
        assert config["track"]["backbone"]["params"]["width"] == 4
        assert (arm["sal"][()] >= 0).all()


def test_entries_are_valid_and_carry_what_a_leaderboard_needs(finished_run):
    _, run = finished_run
    entries = {e.arm_id: e for e in read_entries(run)}
    clean = entries["clean__none__s0"]
    assert clean.poison is None and clean.results.ud == pytest.approx(1.0)
    noisy = entries["noise-class__none__s0"]
    assert noisy.poison.name == "random-noise" and noisy.poison.distribution == "harness"
    assert noisy.results.beta == clean.results.beta  # β always comes from the clean arm
    assert noisy.results.ud == pytest.approx(noisy.results.lp / clean.results.lp)
    assert (
        0 <= noisy.results.test_metric.final <= 1 and noisy.results.test_metric.name == "accuracy"
    )
    assert noisy.track.id == clean.track.id
    assert noisy.hdf5.path == "run.h5" and len(noisy.hdf5.sha256) == 64
    raw = json.loads((run / "entries" / "noise-class__none__s0.json").read_text())
    assert raw["schema_version"] == 1 and isinstance(
        raw["results"]["ud"], float
    )  # numbers as numbers
    Entry.model_validate(raw)


def test_score_recomputes_the_same_entries_from_the_hdf5_file_alone(finished_run, capsys):
    _, run = finished_run
    stored = {e.arm_id: e for e in read_entries(run)}
    assert {e.arm_id: e for e in compute_entries(run)} == stored
    assert main(["score", str(run), "--no-write"]) == 0
    assert "noise-class" in capsys.readouterr().out


def test_rerunning_a_finished_run_recomputes_nothing(finished_run):
    spec, run = finished_run
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.pt")}
    assert main(["eval", str(spec), "--output", str(run.parent), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.pt")} == before


def test_a_changed_spec_is_refused_unless_fresh_is_asked(finished_run, tmp_path):
    from conftest import tiny_spec, write_spec

    _, run = finished_run
    changed = write_spec(
        tmp_path / "tiny.yaml", tiny_spec(training={"epochs": 2, "batch_size": 50})
    )
    runner = Runner(load_spec(changed, get_components()), get_components(), output_root=run.parent)
    with pytest.raises(RunStateError, match="different spec"):
        runner.prepare()
    assert main(["eval", str(changed), "--output", str(run.parent), "--quiet"]) == 2


def test_entries_are_written_as_each_arm_finishes(tmp_path, monkeypatch):
    """A long run's results can be read (and kept) before its end."""
    from conftest import tiny_spec, write_spec

    import harness.runner as runner

    scored_before = []
    train = runner.run_arm

    def looking(loaded, arm, folder, **kwargs):
        scored_before.append(sorted(p.stem for p in (folder.path / "entries").glob("*.json")))
        return train(loaded, arm, folder, **kwargs)

    monkeypatch.setattr(runner, "run_arm", looking)
    spec = write_spec(tmp_path / "tiny.yaml", tiny_spec(training={"epochs": 1, "batch_size": 50}))
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    assert scored_before == [
        [],
        ["clean__none__s0"],
        ["clean__none__s0", "noise-sample__none__s0"],
    ]
