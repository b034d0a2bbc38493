"""SAL estimators as a plugin kind: named in the spec, recorded in entries and HDF5, part of the
track, compared with the reference on a run's snapshots (`harness sal-agreement`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_spec, write_spec

from harness.agreement_run import parse_estimator
from harness.cli import main
from harness.entries import read_entries
from harness.errors import SpecError
from harness.pluginmanager import get_components
from harness.specfile import load_spec


def run(tmp_path: Path, name: str, *extra: str, **overrides) -> Path:
    spec = write_spec(tmp_path / f"{name}.yaml", tiny_spec(name, **overrides))
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet", *extra]) == 0
    return tmp_path / "runs" / name


def test_both_first_party_estimators_are_registered_with_derivation_and_biases():
    registry = get_components()["sal_estimator"]
    assert {"reference", "normalized-steps"} <= set(registry.names())
    for name in ("reference", "normalized-steps"):
        record = registry.get(name).record
        assert record.derivation and record.biases


def test_a_spec_written_before_estimators_were_plugins_keeps_its_hash_and_names_the_reference(
    tmp_path,
):
    plain = write_spec(tmp_path / "a.yaml", tiny_spec("a"))
    named = write_spec(
        tmp_path / "b.yaml", tiny_spec("a", sal={**tiny_spec()["sal"], "estimator": "reference"})
    )
    defaults = write_spec(
        tmp_path / "c.yaml",
        tiny_spec(
            "a",
            sal={
                **tiny_spec()["sal"],
                "estimator": {"name": "reference", "params": {"convergence_stop": False}},
            },
        ),
    )
    hashes = {load_spec(p, get_components()).hash for p in (plain, named, defaults)}
    assert len(hashes) == 1
    assert load_spec(plain, get_components()).resolved()["sal"]["estimator"] == "reference"


def test_an_unknown_estimator_or_parameter_is_named_with_its_line(tmp_path):
    sal = tiny_spec()["sal"]
    unknown = write_spec(tmp_path / "u.yaml", tiny_spec("u", sal={**sal, "estimator": "nope"}))
    with pytest.raises(SpecError, match=r"u\.yaml:\d+:\d+: sal\.estimator\.name: .*nope"):
        load_spec(unknown, get_components())
    bad = write_spec(
        tmp_path / "p.yaml",
        tiny_spec(
            "p", sal={**sal, "estimator": {"name": "normalized-steps", "params": {"steps": 0}}}
        ),
    )
    with pytest.raises(SpecError, match=r"sal\.estimator\.params\.steps"):
        load_spec(bad, get_components())


def test_the_estimator_is_recorded_in_entries_and_hdf5_and_splits_the_track(tmp_path):
    reference = run(tmp_path, "ref")
    sal = {**tiny_spec()["sal"], "estimator": {"name": "normalized-steps", "params": {"steps": 2}}}
    steps = run(tmp_path, "ns", sal=sal)

    ref_entries, ns_entries = read_entries(reference), read_entries(steps)
    assert {e.track.sal["estimator"] for e in ref_entries} == {"reference"}
    assert {json.dumps(e.track.sal["estimator"]) for e in ns_entries} == {
        json.dumps({"name": "normalized-steps", "params": {"steps": 2}})
    }
    # same data, model, recipe and probe: only the estimator differs, and the tracks do too
    assert {e.track.id for e in ref_entries}.isdisjoint({e.track.id for e in ns_entries})
    with h5py.File(steps / "run.h5") as f:
        spec = json.loads(f.attrs["spec"])
    assert spec["sal"]["estimator"] == {"name": "normalized-steps", "params": {"steps": 2}}
    # the leaderboard shows them as two tracks whose titles name the estimator
    assert (
        main(["leaderboard", "build", str(reference), str(steps), "--out", str(tmp_path / "lb")])
        == 0
    )
    page = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "SAL normalized-steps (steps=2)" in page and "SAL reference" in page
    # the values do differ: it is another estimator, not a label
    with h5py.File(reference / "run.h5") as a, h5py.File(steps / "run.h5") as b:
        arm = "clean__none__s0"
        assert not np.array_equal(a[f"arms/{arm}/sal"][()], b[f"arms/{arm}/sal"][()])


def test_sal_agreement_on_snapshots_reproduces_the_run_and_scores_each_estimator(tmp_path):
    folder = run(tmp_path, "snap", "--save-snapshots", "1")
    for arm in ("clean__none__s0", "noise-sample__none__s0", "noise-class__none__s0"):
        assert sorted(p.name for p in (folder / "snapshots" / arm).iterdir()) == [
            "epoch-0001.pt",
            "epoch-0002.pt",
            "epoch-0003.pt",
        ]
    assert main(["sal-agreement", str(folder), "--quiet"]) == 0
    report = json.loads((folder / "sal-agreement.json").read_text())
    assert report["estimators"] == ["normalized-steps"]
    # the reference recomputed on the snapshots is the run's own SAL, value for value
    assert report["recorded_difference"] == 0
    (result,) = report["results"]
    assert result["estimator"] == "normalized-steps" and result["seed"] == 0
    assert 0 <= result["decisions"] <= 1 and result["cost_ratio"] > 0
    assert {a["arm"] for a in result["arms"]} == {
        "clean__none__s0",
        "noise-sample__none__s0",
        "noise-class__none__s0",
    }
    assert "| normalized-steps | 0 |" in (folder / "sal-agreement.md").read_text()
    # a spot check on some arms: the clean arm comes along (β and UD's denominator)
    assert main(["sal-agreement", str(folder), "--arms", "noise-sample", "--quiet"]) == 0
    report = json.loads((folder / "sal-agreement.json").read_text())
    assert set(report["epochs"]) == {"clean__none__s0", "noise-sample__none__s0"}


def test_sal_agreement_without_snapshots_says_how_to_get_them(tmp_path, capsys):
    folder = run(tmp_path, "nosnap")
    assert main(["sal-agreement", str(folder), "--quiet"]) == 2
    assert "--save-snapshots" in capsys.readouterr().err


def test_estimator_choices_parse_names_and_params():
    ref = parse_estimator("normalized-steps:steps=2")
    assert (ref.name, ref.params) == ("normalized-steps", {"steps": 2})
    assert parse_estimator("reference").params == {}
    with pytest.raises(SpecError, match="KEY=VALUE"):
        parse_estimator("normalized-steps:steps")
