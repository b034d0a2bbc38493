"""`harness submit` verifies a run as a whole (issue 14, items 1, 3 and 13).

Each case edits a finished run the way an adversary would, reruns the harness's own commands
over the edit where that would launder it (`harness score` rewrites the entries, `harness
eval` resumes), and checks that the submission is refused with the reason and that nothing is
written outside the leaderboard folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from trust_helpers import cli, no_traceback

from harness.cli import main
from harness.specfile import spec_hash
from harness.submit import SubmissionError, verify_run


@pytest.fixture
def run(small_runs, tmp_path) -> Path:
    """A copy of the finished `figs` run (three arms, three epochs), beside its spec."""
    shutil.copy(small_runs["figs"].parent.parent / "figs.yaml", tmp_path / "figs.yaml")
    return Path(shutil.copytree(small_runs["figs"], tmp_path / "runs" / "figs"))


def score(run: Path, capsys) -> None:
    assert main(["score", str(run)]) == 0
    capsys.readouterr()


def test_the_untouched_run_is_accepted(run):
    assert len(verify_run(run)) == 3


# --- item 1: names read from files never become paths unchecked ------------------------------


def test_a_run_name_that_climbs_out_of_the_leaderboard_is_refused(run, tmp_path):
    with h5py.File(run / "run.h5", "a") as f:
        f.attrs["spec_name"] = "../../ESCAPED"
    scored = cli("score", str(run), cwd=tmp_path)
    assert scored.returncode == 2 and "is not a run name" in scored.stderr
    result = cli("submit", str(run), "--leaderboard", "lb", cwd=tmp_path)
    assert result.returncode == 2
    assert "'../../ESCAPED'" in result.stderr
    no_traceback(result)
    assert not [p for p in tmp_path.parent.rglob("*ESCAPED*")]
    assert not (tmp_path / "lb").exists()


def test_an_entry_naming_another_folder_is_not_a_valid_entry(run):
    path = run / "entries" / "clean__none__s0.json"
    raw = json.loads(path.read_text())
    raw["run"] = "../../x"
    path.write_text(json.dumps(raw))
    with pytest.raises(SubmissionError, match="not a valid entry"):
        verify_run(run)


# --- item 3: tampering laundered through the harness's own commands -----------------------


def test_an_edited_sal_value_is_refused_even_after_score_and_eval_refuses_to_resume_it(
    run, tmp_path
):
    with h5py.File(run / "run.h5", "a") as f:
        f["arms/noise-sample__none__s0/sal"][...] = 0.0  # "a perfect unlearnable example"
    assert cli("score", str(run), cwd=tmp_path).returncode == 0  # entries now say UD 0
    entry = json.loads((run / "entries" / "noise-sample__none__s0.json").read_text())
    assert entry["results"]["ud"] == 0.0
    result = cli("submit", str(run), "--leaderboard", "lb", cwd=tmp_path)
    assert result.returncode == 2
    assert "epoch 1 of arm noise-sample__none__s0 differs from what" in result.stderr
    assert "were edited after training" in result.stderr
    no_traceback(result)
    assert not (tmp_path / "lb").exists()
    resumed = cli("eval", str(tmp_path / "figs.yaml"), "--quiet", cwd=tmp_path)
    assert resumed.returncode == 2
    assert "epoch 1 of arm noise-sample__none__s0 differs from what" in resumed.stderr
    no_traceback(resumed)


def test_one_edited_metric_is_refused(run, capsys):
    with h5py.File(run / "run.h5", "a") as f:
        f["arms/clean__none__s0/metrics/test_metric"][2] = 1.0
    score(run, capsys)
    with pytest.raises(SubmissionError, match="epoch 3 of arm clean__none__s0 differs"):
        verify_run(run)


def test_an_arm_the_spec_does_not_plan_is_refused(run, capsys):
    with h5py.File(run / "run.h5", "a") as f:
        f.copy("arms/noise-sample__none__s0", "arms/extra__none__s0")
        config = json.loads(f["arms/extra__none__s0"].attrs["config"])
        config["arm_id"], config["poison_key"] = "extra__none__s0", "extra"
        f["arms/extra__none__s0"].attrs["config"] = json.dumps(config)
        f["arms/extra__none__s0/sal"][...] = 0.0
    shutil.copy(
        run / "checkpoints" / "noise-sample__none__s0.pt",
        run / "checkpoints" / "extra__none__s0.pt",
    )
    score(run, capsys)
    assert (run / "entries" / "extra__none__s0.json").exists()
    with pytest.raises(SubmissionError, match="'extra__none__s0' are not in the spec's plan"):
        verify_run(run)


def test_a_spec_claiming_more_epochs_than_recorded_is_refused(run, capsys):
    with h5py.File(run / "run.h5", "a") as f:
        spec = json.loads(f.attrs["spec"])
        spec["training"]["epochs"] = 200
        f.attrs["spec"], f.attrs["spec_hash"] = json.dumps(spec), spec_hash(spec)
        for arm in f["arms"].values():
            arm.attrs["epochs_planned"] = 200
    (run / "spec.resolved.json").write_text(
        json.dumps({"spec_hash": spec_hash(spec), "spec": spec})
    )
    score(run, capsys)
    with pytest.raises(SubmissionError, match="the spec trains 200 epochs, but run.h5 records 3"):
        verify_run(run)


def test_an_arm_configuration_edited_in_run_h5_is_refused(run, capsys):
    with h5py.File(run / "run.h5", "a") as f:
        config = json.loads(f["arms/noise-class__none__s0"].attrs["config"])
        config["poison"]["params"]["epsilon"] = 0.001  # claim a much smaller budget
        f["arms/noise-class__none__s0"].attrs["config"] = json.dumps(config)
    score(run, capsys)
    with pytest.raises(SubmissionError, match=r"poison\.params is .*0\.001.*the spec plans"):
        verify_run(run)


def test_a_run_without_its_checkpoints_is_refused(run):
    (run / "checkpoints" / "clean__none__s0.pt").unlink()
    with pytest.raises(SubmissionError, match="clean__none__s0.pt: missing"):
        verify_run(run)


def test_rows_and_checkpoint_both_edited_but_not_their_digests_are_refused(run, capsys):
    import torch

    path = run / "checkpoints" / "noise-class__none__s0.pt"
    state = torch.load(path, weights_only=True)
    state["rows"][0]["sal"] = [0.0] * len(state["rows"][0]["sal"])
    torch.save(state, path)
    with h5py.File(run / "run.h5", "a") as f:
        f["arms/noise-class__none__s0/sal"][0] = np.zeros(len(state["rows"][0]["sal"]))
    score(run, capsys)
    with pytest.raises(SubmissionError, match="rows do not match the digests stored with them"):
        verify_run(run)


# --- item 13 (submit's half): a broken file in the leaderboard never blocks the pages ---------


def test_broken_files_in_the_leaderboard_folder_never_block_a_submission(small_runs, tmp_path):
    board = tmp_path / "lb"
    (board / "entries").mkdir(parents=True)
    (board / "entries" / "half-written.json").write_text('{"schema_version": 1, "run": "fi')
    (board / "entries" / "a-folder.json").mkdir()
    (board / "entries" / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    # a broken file where this run's entry goes: refused, unless --replace
    (board / "entries" / "figs__clean__none__s0.json").write_text("{")
    result = cli("submit", str(small_runs["figs"]), "--leaderboard", str(board), cwd=tmp_path)
    assert result.returncode == 2 and "already holds a different entry" in result.stderr
    result = cli(
        "submit",
        str(small_runs["figs"]),
        "--leaderboard",
        str(board),
        "--replace",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    for name in ("half-written.json", "a-folder.json", "binary.json"):
        assert f"{board / 'entries' / name}: not a valid entry" in result.stderr
    no_traceback(result)
    assert len(json.loads((board / "entries.json").read_text())) == 3
    assert "noise-sample" in (board / "leaderboard.md").read_text()
