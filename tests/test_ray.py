"""`harness eval --executor ray` on a real Ray cluster: a head and a second node started with
`ray start` on the loopback interface by the tests (never local_mode), stopped at the end.

What must hold: a Ray run writes the same SAL arrays and entries as a local run with one thread
per arm; a worker killed in the middle of an arm is retried and resumes from its last complete
epoch; a driver stopped by SIGTERM, then one killed, resumes when the command is run again; a
node that disappears has its arms rescheduled. Nothing lost, nothing counted twice: every run is compared, array by array,
with the uninterrupted local run.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_spec, write_spec

pytest.importorskip("ray")
from raycluster import RayCluster  # noqa: E402

from harness.checkpoint import load_state  # noqa: E402
from harness.entries import read_entries  # noqa: E402

pytestmark = pytest.mark.ray

VOLATILE = {"wall_time_s", "hdf5"}
TIMINGS = {"train_seconds", "sal_seconds"}


def spec_dict(epochs: int) -> dict:
    return tiny_spec("rayrun", training={"epochs": epochs, "batch_size": 50})


def harness(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "eval", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 400) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


def arrays(run: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(run / "run.h5", "r") as f:

        def visit(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] not in TIMINGS:
                out[name] = obj[()]

        f.visititems(visit)
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """Every dataset of run.h5 but the timings, bit for bit, and every entry but its timing."""
    got, want = arrays(run), arrays(reference)
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    entries = {e.arm_id: e.model_dump(exclude=VOLATILE) for e in read_entries(run)}
    assert entries == {e.arm_id: e.model_dump(exclude=VOLATILE) for e in read_entries(reference)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node and a second node joining it, one CPU each."""
    cache = tmp_path_factory.mktemp("ray-node-cache")  # the nodes' poison cache
    cluster = RayCluster(cpus=1, env={"HARNESS_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    try:
        cluster.start_node(1)
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.processes()


EPOCHS = 8


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """The spec file and its uninterrupted local run, one thread (as Ray gives one per CPU)."""
    root = tmp_path_factory.mktemp("ray-reference")
    spec = write_spec(root / "rayrun.yaml", spec_dict(EPOCHS))
    finish(
        harness(str(spec), "--output", str(root), "--executor", "local", "--save-snapshots", "4")
    )
    return spec, root / "rayrun"


def progress(run: Path) -> dict[str, int]:
    """Epochs checkpointed per arm so far."""
    done = {}
    for path in (run / "checkpoints").glob("*.pt"):
        try:
            state = load_state(path)
        except Exception:
            continue
        if state is not None:
            done[path.stem] = state.epochs_done
    return done


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended before the fault: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the run never reached the point of the fault")


def caught_mid_arm(pids: list[int], arm_id: str, run: Path) -> bool:
    """Stop `pids` (SIGSTOP), then look: True, still stopped, when the arm has a complete epoch
    checkpointed and more to go; else they continue. No race between looking and killing."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    if 1 <= progress(run).get(arm_id, 0) < EPOCHS:
        return True
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    return False


def arm_of(pid: int) -> str:
    """The arm a worker process runs, from its title (`ray::arm <arm id>`)."""
    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    return title.split("arm ", 1)[1].strip()


def test_a_ray_run_gives_the_local_runs_sal_arrays_and_entries(cluster, reference, tmp_path):
    spec, local = reference
    args = ("--executor", "ray", "--address", cluster.address, "--save-snapshots", "4")
    err = finish(harness(str(spec), "--output", str(tmp_path), *args))
    assert "2 node(s)" in err and "[arm 3/3]" in err and "ETA arm" in err
    run = tmp_path / "rayrun"
    assert_same_run(run, local)
    # the driver keeps the snapshots from the states the workers send: the local run's, exactly
    snapshots = sorted(p.relative_to(local) for p in (local / "snapshots").rglob("*.pt"))
    assert len(snapshots) == 3 * 2  # three arms, epochs 4 and 8
    assert sorted(p.relative_to(run) for p in (run / "snapshots").rglob("*.pt")) == snapshots
    for path in snapshots:
        got, want = torch.load(run / path), torch.load(local / path)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{path}: {key}"


def test_a_run_trained_in_parts_on_the_cluster_is_the_local_run(cluster, reference, tmp_path):
    spec, local = reference
    args = (str(spec), "--output", str(tmp_path), "--executor", "ray", "--address", cluster.address)
    err = finish(harness(*args, "--arms", "noise-class"))
    assert "[arm 2/2]" in err  # noise-class and the clean reference only
    run = tmp_path / "rayrun"
    with h5py.File(run / "run.h5", "r") as f:
        assert sorted(f["arms"]) == ["clean__none__s0", "noise-class__none__s0"]
    finish(harness(*args))  # the rest
    assert_same_run(run, local)


def test_a_worker_killed_mid_arm_is_retried_and_resumes_from_its_last_epoch(
    cluster, reference, tmp_path
):
    spec, local = reference
    run = tmp_path / "rayrun"
    proc = harness(
        str(spec), "--output", str(tmp_path), "--executor", "ray", "--address", cluster.address
    )

    def mid_arm():
        for pid in cluster.workers("arm "):
            arm_id = arm_of(pid)
            if caught_mid_arm([pid], arm_id, run):
                return arm_id, pid
        return None

    arm_id, pid = wait_for(mid_arm, proc)
    os.kill(pid, signal.SIGKILL)
    err = finish(proc)
    lost = re.search(rf"{arm_id}: attempt 1 lost \((\w+).*attempt 2 resumes after epoch (\d+)", err)
    assert lost, err[-3000:]
    assert int(lost.group(2)) >= 1  # from its checkpoint, not from the start
    assert f"{arm_id}: training {EPOCHS} epochs (resuming after epoch {lost.group(2)})" in err
    assert_same_run(run, local)


def test_a_terminated_then_killed_driver_resumes_when_the_command_is_run_again(
    cluster, reference, tmp_path
):
    spec, local = reference
    run = tmp_path / "rayrun"
    args = (str(spec), "--output", str(tmp_path), "--executor", "ray", "--address", cluster.address)

    def stopped_mid_run(proc: subprocess.Popen, after: dict[str, int]):
        """Stop `proc` (SIGSTOP) once some arm has epochs beyond `after` and more to go."""

        def look():
            os.kill(proc.pid, signal.SIGSTOP)
            done = progress(run)
            if any(after.get(a, 0) < d < EPOCHS for a, d in done.items()):
                return done
            os.kill(proc.pid, signal.SIGCONT)
            return None

        return wait_for(look, proc)

    # SIGTERM (a scheduler's preemption): the orderly stop of Ctrl-C, not Ray's sys.exit
    proc = harness(*args)
    stopped_mid_run(proc, {})
    proc.send_signal(signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated; rerun the same command to resume" in err
    assert "sys.exit" not in err and "Traceback" not in err
    # then SIGKILL, which nothing can handle, once the rerun has trained further
    proc = harness(*args)
    second = stopped_mid_run(proc, progress(run))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    err = finish(harness(*args))
    resumed = [a for a, done in second.items() if 0 < done < EPOCHS]
    assert any(f"{a}: training {EPOCHS} epochs (resuming after epoch" in err for a in resumed), err[
        -3000:
    ]
    assert_same_run(run, local)


def test_a_poisons_progress_reaches_the_driver_and_quiet_silences_it(cluster, tmp_path):
    em = {
        "name": "em",
        "params": {
            "max_rounds": 2,
            "train_steps": 2,
            "steps": 2,
            "surrogate": {"backbone": "small-cnn", "backbone_params": {"width": 4, "blocks": 2}},
        },
    }
    spec = tiny_spec("rayem", training={"epochs": 1, "batch_size": 50}, poisons=[em])
    spec["data"]["subset"] = {"train": 100, "test": 100}
    path = write_spec(tmp_path / "rayem.yaml", spec)
    args = ("--output", str(tmp_path), "--executor", "ray", "--address", cluster.address)
    proc = harness(str(path), *args)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    # the worker's lines, forwarded by Ray under the task's name
    assert re.search(r"poison em: round 1: .*\(50%\)", out + err), (out + err)[-3000:]
    # another seed: a poison not in the nodes' cache yet, generated in silence
    quiet = harness(str(path), *args, "--fresh", "--quiet", "--seeds", "1")
    out, err = quiet.communicate(timeout=400)
    assert quiet.returncode == 0, err[-3000:]
    assert "poison em:" not in out + err


def test_a_node_that_disappears_has_its_arms_rescheduled(cluster, reference, tmp_path):
    spec, local = reference
    run = tmp_path / "rayrun"
    node = cluster.start_node(1)  # a third node, which will vanish
    held: set[int] = set()  # arm workers on the other nodes, stopped while they hold their CPU
    try:
        proc = harness(
            str(spec), "--output", str(tmp_path), "--executor", "ray", "--address", cluster.address
        )

        def arm_on_node():
            # Ray may place every arm on the first two nodes (tiny arms finish in seconds): an
            # arm worker elsewhere is stopped and keeps its CPU, so the next arm can only go to
            # the third node
            there = set(cluster.workers("arm ", node_port=node))
            for pid in cluster.workers("arm "):
                if pid in there:
                    arm_id = arm_of(pid)
                    if caught_mid_arm([pid], arm_id, run):
                        return arm_id
                elif pid not in held:
                    os.kill(pid, signal.SIGSTOP)
                    held.add(pid)
            return None

        arm_id = wait_for(arm_on_node, proc)
        cluster.kill_node(node)
        for pid in held:
            os.kill(pid, signal.SIGCONT)
        held.clear()
        err = finish(proc)
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        cluster.kill_node_if_alive(node)
    lost = re.search(
        rf"{arm_id}: attempt 1 lost \((.*)\); attempt 2 resumes after epoch [1-9]", err
    )
    assert lost, err[-3000:]
    print(f"node lost: {lost.group(1)}")
    assert_same_run(run, local)
