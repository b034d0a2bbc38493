"""Diverged training stops its arm with a clear error and a resumable state (issue 14, item 6).

An epoch whose loss or SAL is not finite is never recorded: the arm stops at its last good
epoch, marked `diverged` in run.h5, and `eval` exits 1. Every later command says so without a
traceback: `score` and `submit` refuse (a run with a diverged arm has no entries), `report`
draws what is finite, `leaderboard` finds nothing to rank.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_spec
from trust_helpers import cli, no_traceback, tiny

from harness.api import Defence, DefenceRecord, hookimpl
from harness.cli import main
from harness.errors import DivergedError
from harness.pluginmanager import load_components
from harness.runner import Runner
from harness.specfile import load_spec


def test_a_run_that_diverges_exits_1_and_no_command_shows_a_traceback(tmp_path, capsys):
    spec = write_spec(
        tmp_path / "d.yaml",
        tiny("d", training={"epochs": 2, "batch_size": 64, "optimizer": {"lr": 1.0e6}}),
    )
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error: arm clean__none__s0 diverged at epoch 1:" in result.stderr
    assert "lower training.optimizer.lr" in result.stderr
    no_traceback(result)
    run = tmp_path / "runs" / "d"
    with h5py.File(run / "run.h5", "r") as f:
        arm = f["arms/clean__none__s0"]
        assert arm["sal"].shape[0] == 0 and "diverged" in arm.attrs  # nothing non-finite kept
    # the state is resumable: the same command gets as far, and says the same
    again = cli("eval", str(spec), "--quiet", cwd=tmp_path)
    assert again.returncode == 1 and "diverged at epoch 1" in again.stderr

    assert main(["score", str(run)]) == 1
    assert "training diverged in arm clean__none__s0 at epoch 1" in capsys.readouterr().err
    assert main(["report", str(run)]) == 2
    assert "nothing to draw: clean__none__s0 stopped at epoch 1" in capsys.readouterr().err
    assert main(["submit", str(run), "--leaderboard", str(tmp_path / "lb")]) == 2
    assert "arm clean__none__s0 diverged at epoch 1" in capsys.readouterr().err
    assert main(["leaderboard", str(run), "--out", str(tmp_path / "site")]) == 2
    assert "no entries found" in capsys.readouterr().err
    assert not (tmp_path / "lb").exists()


class NaNFromEpoch2(Defence):
    """Trains normally for one epoch, then its loss becomes NaN."""

    def training_loss(self, model, x, targets, ctx):
        loss = ctx.loss(model(x), targets)
        return loss * float("nan") if ctx.epoch >= 2 else loss


class Plugin:
    @hookimpl
    def harness_register_defences(self):
        return [DefenceRecord(name="nan-later", factory=NaNFromEpoch2)]


def test_an_arm_diverging_later_keeps_its_good_epochs_and_the_report_draws_them(tmp_path, capsys):
    components = load_components(extra_plugins=[("nan-later", Plugin())])
    spec = write_spec(tmp_path / "n.yaml", tiny("n", poisons=[], defences=["nan-later"]))

    def run() -> None:
        runner = Runner(load_spec(spec, components), components, output_root=tmp_path / "runs")
        runner.prepare()
        runner.run()

    with pytest.raises(DivergedError, match="arm clean__nan-later__s0 diverged at epoch 2"):
        run()
    folder = tmp_path / "runs" / "n"
    state = torch.load(folder / "checkpoints" / "clean__nan-later__s0.pt", weights_only=True)
    assert len(state["rows"]) == 1 and not state["complete"]  # the last good epoch
    with pytest.raises(DivergedError, match="diverged at epoch 2"):
        run()  # resumed from epoch 1, and diverges where it did
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert "clean__nan-later__s0 stopped at epoch 2, where training diverged" in page


def test_a_run_recorded_with_nan_before_the_fix_still_reports_and_scores_cleanly(
    small_runs, tmp_path, capsys
):
    run = Path(shutil.copytree(small_runs["figs"], tmp_path / "figs"))
    with h5py.File(run / "run.h5", "a") as f:
        sal = f["arms/noise-sample__none__s0/sal"]
        sal[1] = np.full(sal.shape[1], np.nan)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "noise-sample__none__s0 diverged at epoch 2" in page and "left out" in page
    assert main(["score", str(run)]) == 1
    err = capsys.readouterr().err
    assert "noise-sample__none__s0 at epoch 2 (sal has" in err
    assert "Traceback" not in err
