"""A run killed with SIGKILL at any moment resumes to exactly the entries of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import tiny_spec, write_spec

from harness.entries import read_entries

VOLATILE = {"wall_time_s", "hdf5"}  # timings and the file's bytes differ between any two runs


def comparable(run: Path) -> dict[str, dict]:
    return {e.arm_id: e.model_dump(exclude=VOLATILE) for e in read_entries(run)}


def harness_eval(spec: Path, output: Path, quiet: bool = True) -> subprocess.Popen:
    """`harness eval SPEC --output OUTPUT` in a fresh interpreter; with `quiet=False` its
    progress lines are on the process's stdout (a pipe)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "eval", str(spec), "--output", str(output)]
        + (["--quiet"] if quiet else []),
        env=env,
        stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=not quiet,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read().decode()}")
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run never reached the point to kill it at")


def finish(spec: Path, output: Path) -> None:
    proc = harness_eval(spec, output)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()


@pytest.fixture(scope="module")
def spec_and_reference(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    spec = write_spec(
        root / "resume.yaml", tiny_spec("resume", training={"epochs": 4, "batch_size": 50})
    )
    finish(spec, root / "reference")
    return spec, root / "reference" / "resume"


def test_killed_twice_mid_run_resumes_to_the_same_entries(spec_and_reference, tmp_path):
    spec, reference = spec_and_reference
    out = tmp_path / "runs"
    run = out / "resume"
    # first kill: the clean arm has finished at least one epoch but not all of them
    kill_when(
        harness_eval(spec, out), lambda: (run / "checkpoints" / "clean__none__s0.pt").exists()
    )
    # second kill: inside the second arm
    kill_when(
        harness_eval(spec, out),
        lambda: (run / "checkpoints" / "noise-sample__none__s0.pt").exists(),
    )
    finish(spec, out)
    assert comparable(run) == comparable(reference)
    with h5py.File(run / "run.h5") as a, h5py.File(reference / "run.h5") as b:
        for arm in b["arms"]:
            np.testing.assert_array_equal(a["arms"][arm]["sal"][()], b["arms"][arm]["sal"][()])


def test_a_run_file_damaged_by_a_kill_mid_write_is_rebuilt_from_checkpoints(
    spec_and_reference, tmp_path
):
    spec, reference = spec_and_reference
    out = tmp_path / "runs"
    run = out / "resume"
    kill_when(
        harness_eval(spec, out),
        lambda: (run / "checkpoints" / "noise-sample__none__s0.pt").exists(),
    )
    data = (run / "run.h5").read_bytes()
    (run / "run.h5").write_bytes(
        data[: len(data) // 3]
    )  # what a kill inside an HDF5 write can leave
    finish(spec, out)
    assert comparable(run) == comparable(reference)


def shrink_end_of_allocation(path: Path, by: int) -> None:
    """What a kill between an HDF5 data write and its end-of-file update leaves: the superblock's
    end-of-allocation address (bytes 40–48 of a version-0 superblock) short of the data, so the
    file opens and lists its arms but reading the last-written chunks fails with 'addr overflow'."""
    data = bytearray(path.read_bytes())
    assert data[:8] == b"\x89HDF\r\n\x1a\n" and data[8] == 0
    eoa = int.from_bytes(data[40:48], "little")
    data[40:48] = (eoa - by).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def test_a_run_file_that_opens_but_cannot_be_read_back_is_rebuilt(spec_and_reference, tmp_path):
    from harness.store import RunStore

    spec, reference = spec_and_reference
    out = tmp_path / "runs"
    run = out / "resume"
    kill_when(
        harness_eval(spec, out),
        lambda: (run / "checkpoints" / "noise-sample__none__s0.pt").exists(),
    )
    shrink_end_of_allocation(run / "run.h5", 2000)
    store = RunStore(run / "run.h5")
    assert store.readable() and not store.intact()  # the header is fine; the data is not
    finish(spec, out)
    assert comparable(run) == comparable(reference)
    assert (run / "run.h5.damaged").exists()


def test_a_poison_generation_killed_mid_way_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """SIGKILL while REM's surrogate trains: the next run goes on from the generation's last
    checkpoint (not from the start) and ends with the entries of a run that was never killed."""
    monkeypatch.setenv("HARNESS_POISON_CHECKPOINT_S", "0")  # a checkpoint after every step
    rem = {
        "name": "rem",
        "params": {
            "train_steps": 60,
            "steps": 2,
            "attack_steps": 1,
            "eot_samples": 1,
            "surrogate": {"backbone": "small-cnn", "backbone_params": {"width": 4, "blocks": 2}},
        },
    }
    spec = write_spec(
        tmp_path / "rem.yaml",
        tiny_spec("rem", poisons=[rem], training={"epochs": 1, "batch_size": 50}),
    )
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "reference-cache"))
    finish(spec, tmp_path / "reference")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    partial = tmp_path / "cache" / "poisons" / "partial"
    kill_when(harness_eval(spec, tmp_path / "runs"), lambda: any(partial.glob("*.pt")))
    resumed = harness_eval(spec, tmp_path / "runs", quiet=False)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming its generation from the checkpoint" in out + err
    assert not any(partial.glob("*.pt"))
    assert comparable(tmp_path / "runs" / "rem") == comparable(tmp_path / "reference" / "rem")
