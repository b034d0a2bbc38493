"""`harness eval --arms` trains a part of a run: the arms named (by id, poison or defence) and each
seed's clean reference; the same command without --arms completes the run, which is then what
one command would have given. A campaign split over machines or sessions runs this way."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_spec, write_spec

from harness.cli import main
from harness.entries import read_entries
from harness.errors import SpecError
from harness.plan import plan_arms, select_arms
from harness.spec import Spec

VOLATILE = {"wall_time_s", "hdf5"}
TWO_EPOCHS = {"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}}


def spec_dict() -> dict:
    return tiny_spec("part", training=TWO_EPOCHS, defences=[{"name": "none"}, {"name": "cutout"}])


def stored_arms(run: Path) -> list[str]:
    with h5py.File(run / "run.h5", "r") as f:
        return sorted(f["arms"])


def sal(run: Path) -> dict[str, np.ndarray]:
    with h5py.File(run / "run.h5", "r") as f:
        return {arm: f["arms"][arm]["sal"][()] for arm in f["arms"]}


def entries(run: Path) -> dict[str, dict]:
    return {e.arm_id: e.model_dump(exclude=VOLATILE) for e in read_entries(run)}


def test_arms_are_chosen_by_id_poison_or_defence_with_every_clean_reference():
    spec = Spec.model_validate({**spec_dict(), "seeds": [0, 1]})
    planned = plan_arms(spec)

    def ids(*asked: str) -> list[str]:
        return [arm.id for arm in select_arms(planned, asked)]

    assert ids() == [arm.id for arm in planned]
    assert ids("noise-class") == [
        "clean__none__s0",
        "noise-class__none__s0",
        "noise-class__cutout__s0",
        "clean__none__s1",
        "noise-class__none__s1",
        "noise-class__cutout__s1",
    ]
    assert ids("cutout", "noise-sample__none__s1") == [
        "clean__none__s0",
        "clean__cutout__s0",
        "noise-sample__cutout__s0",
        "noise-class__cutout__s0",
        "clean__none__s1",
        "noise-sample__none__s1",
        "clean__cutout__s1",
        "noise-sample__cutout__s1",
        "noise-class__cutout__s1",
    ]
    with pytest.raises(SpecError, match=r"--arms: jpeg, tap is not an arm, poison or defence"):
        select_arms(planned, ["tap", "jpeg", "cutout"])


def test_a_run_trained_in_parts_equals_the_run_trained_at_once(tmp_path, capsys):
    spec = write_spec(tmp_path / "part.yaml", spec_dict())
    once = tmp_path / "once"
    assert main(["eval", str(spec), "--output", str(once), "--quiet"]) == 0
    once_run = once / "part"

    parts = tmp_path / "parts"
    args = ["eval", str(spec), "--output", str(parts), "--quiet"]
    assert main([*args, "--arms", "noise-class__cutout__s0"]) == 0
    said = capsys.readouterr().out
    assert "trained only the arms asked (--arms): 2 of 6" in said
    run = parts / "part"
    assert stored_arms(run) == ["clean__none__s0", "noise-class__cutout__s0"]
    # scored already: the clean reference came with it
    assert set(entries(run)) == {"clean__none__s0", "noise-class__cutout__s0"}
    assert entries(run)["noise-class__cutout__s0"]["results"]["ud"] is not None
    assert main(["submit", str(run), "--leaderboard", str(tmp_path / "board")]) != 0  # partial

    assert main([*args, "--arms", "noise-sample,none"]) == 0  # the clean arm is not trained again
    # noise-sample's two arms and the three undefended ones, beside the first part's two
    assert len(stored_arms(run)) == 5
    assert main(args) == 0  # the rest
    assert stored_arms(run) == stored_arms(once_run)
    for arm, values in sal(once_run).items():
        np.testing.assert_array_equal(sal(run)[arm], values, err_msg=arm)
    # the entries of a run trained in parts and of one trained at once are the same, but for
    # defended arms scored before their undefended arm existed (no UD change then): scored again
    # at the end, they agree too
    assert entries(run) == entries(once_run)


def test_arms_no_run_has_is_refused_before_anything_is_written(tmp_path, capsys):
    spec = write_spec(tmp_path / "part.yaml", spec_dict())
    out = tmp_path / "runs"
    for extra in ([], ["--dry-run"]):
        assert main(["eval", str(spec), "--output", str(out), "--arms", "em", *extra]) == 2
        said = capsys.readouterr().err
        assert "--arms: em is not an arm, poison or defence of this run" in said
        assert "clean__none__s0" in said and "Traceback" not in said
    assert not out.exists()


def test_a_dry_run_of_a_part_costs_only_its_arms(tmp_path, capsys):
    spec = write_spec(tmp_path / "part.yaml", spec_dict())
    args = ["eval", str(spec), "--output", str(tmp_path / "runs"), "--dry-run", "--quiet"]
    assert main([*args, "--arms", "cutout"]) == 0
    listed = [
        line.split()[2]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("  arm ")
    ]
    assert listed == [
        "clean__none__s0",
        "clean__cutout__s0",
        "noise-sample__cutout__s0",
        "noise-class__cutout__s0",
    ]
