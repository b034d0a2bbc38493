"""A run folder withstands what happens to files on a shared machine (issue 14, items 7, 8, 12, 15).

Each case runs the real `harness` in its own process: a second `eval` of a folder in use, links
planted inside a run folder, damaged files, and the modes written files get under a umask.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trust_helpers import cli, no_traceback, spec_file

from harness.cli import main
from harness.runfolder import RunFolder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(spec file, run folder) of a finished tiny run, made once; copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    spec = spec_file(root)
    assert main(["eval", str(spec), "--output", str(root / "runs"), "--quiet"]) == 0
    return spec, root / "runs" / "t"


def copy_of(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    spec, run = finished
    shutil.copy(spec, tmp_path / spec.name)
    shutil.copytree(run, tmp_path / "runs" / "t")
    return tmp_path / spec.name, tmp_path / "runs" / "t"


# --- item 7: one writer per run folder ------------------------------------------------------------


def test_a_second_eval_of_a_folder_in_use_says_who_holds_it_and_exits_2(finished, tmp_path):
    spec, run = copy_of(finished, tmp_path)
    folder = RunFolder(run)
    folder.lock("eval")  # this test process holds it, as a running `harness eval` would
    try:
        result = cli("eval", str(spec), "--quiet", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in result.stderr
        assert "harness eval" in result.stderr
        no_traceback(result)
        score = cli("score", str(run), cwd=tmp_path)  # nor may anything read it mid-write
        assert score.returncode == 2 and "is in use by" in score.stderr
    finally:
        folder.unlock()
    assert cli("eval", str(spec), "--quiet", cwd=tmp_path).returncode == 0


def test_two_evals_started_together_one_runs_the_other_is_refused(tmp_path):
    # long enough that the first is still training when the second starts, on any machine;
    # it is killed below
    spec = spec_file(tmp_path, training={"epochs": 10_000, "batch_size": 64})
    first = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "eval", str(spec), "--quiet"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "runs" / "t"
    try:
        lock = run / ".lock"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == first.pid
        second = cli("eval", str(spec), "--quiet", cwd=tmp_path)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2
        assert f"is in use by pid {first.pid}" in second.stderr
        no_traceback(second)
    finally:
        first.kill()  # the hardest way to stop: the lock goes with the process all the same
        first.communicate(timeout=120)
    folder = RunFolder(run)
    folder.check_unlocked()
    folder.lock("eval")
    folder.unlock()


# --- item 12: links inside a run folder -------------------------------------------------------


@pytest.mark.parametrize("planted", ["results.md", "entries", "checkpoints", "run-folder"])
def test_a_link_inside_a_run_folder_is_refused_and_nothing_outside_is_written(
    finished, tmp_path, planted
):
    spec, run = copy_of(finished, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "victim.txt").write_text("precious\n")
    if planted == "results.md":
        (run / "results.md").unlink()
        (run / "results.md").symlink_to(victim / "victim.txt")
    elif planted == "run-folder":  # runs/<name> itself points elsewhere
        shutil.move(str(run), str(victim / "t"))
        run.symlink_to(victim / "t", target_is_directory=True)
    else:
        shutil.move(str(run / planted), str(victim / planted))
        (run / planted).symlink_to(victim / planted, target_is_directory=True)
    before = {p: p.stat().st_mtime_ns for p in victim.rglob("*")}
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "is a symbolic link" in result.stderr
    no_traceback(result)
    assert (victim / "victim.txt").read_text() == "precious\n"
    assert {p: p.stat().st_mtime_ns for p in victim.rglob("*")} == before
    if planted == "entries":  # `harness score` writes entries: it refuses too
        score = cli("score", str(run), cwd=tmp_path)
        assert score.returncode == 2 and "is a symbolic link" in score.stderr


def test_a_link_in_place_of_a_figure_is_refused_by_report(finished, tmp_path):
    _, run = copy_of(finished, tmp_path)
    victim = tmp_path / "victim.png"
    victim.write_text("precious\n")
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / "sal_heatmap.png").symlink_to(victim)
    result = cli("report", str(run), cwd=tmp_path)
    assert result.returncode == 2 and "is a symbolic link" in result.stderr
    assert victim.read_text() == "precious\n"


# --- item 15: written files get the umask's mode -----------------------------------------------


def test_every_file_written_gets_the_mode_the_umask_gives(tmp_path):
    spec = spec_file(tmp_path)
    assert cli("eval", str(spec), "--quiet", cwd=tmp_path, umask=0o022).returncode == 0
    run = tmp_path / "runs" / "t"
    assert cli("report", str(run), cwd=tmp_path, umask=0o022).returncode == 0
    result = cli("submit", str(run), "--leaderboard", "lb", cwd=tmp_path, umask=0o022)
    assert result.returncode == 0, result.stderr
    written = [
        run / "spec.yaml",
        run / "spec.resolved.json",
        run / "results.md",
        run / "report.html",
        *run.glob("entries/*.json"),
        *run.glob("checkpoints/*.pt"),
        *run.glob("figures/*.png"),
        tmp_path / "lb" / "index.html",
        tmp_path / "lb" / "leaderboard.md",
        *(tmp_path / "lb").glob("entries/*.json"),
    ]
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {"0o644"}, modes
    for folder in (run / "entries", run / "checkpoints", tmp_path / "lb" / "entries"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755


# --- item 8: damaged files are named ----------------------------------------------------------


def test_a_truncated_checkpoint_is_named_before_any_training(finished, tmp_path):
    spec, run = copy_of(finished, tmp_path)
    checkpoint = run / "checkpoints" / "noise__none__s0.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with __import__("h5py").File(run / "run.h5", "a") as f:  # the arm is to be resumed
        f["arms/noise__none__s0"].attrs["complete"] = False
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert "runs/t/checkpoints/noise__none__s0.pt: the checkpoint cannot be read" in result.stderr
    assert "delete it to train this arm again" in result.stderr
    no_traceback(result)


def test_a_damaged_resolved_spec_is_named_and_fresh_starts_over(finished, tmp_path):
    spec, run = copy_of(finished, tmp_path)
    (run / "spec.resolved.json").write_text('{"spec_hash": "ab')
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    assert "spec.resolved.json: unreadable: JSONDecodeError" in result.stderr
    assert "--fresh" in result.stderr
    no_traceback(result)
    fresh = cli("eval", str(spec), "--quiet", "--fresh", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert list(tmp_path.glob("runs/t.replaced-*"))
