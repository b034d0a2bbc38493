"""One writer: an arm trained elsewhere reaches the run folder only through the driver's ledger.

These tests need no cluster: the forwarder's messages are collected in a list, as Ray's
streaming task would carry them, and handed to the ledger that writes the run folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec, write_spec

from harness.executors.forwarding import ArmLedger, Begin, EpochDone, Finish, Forwarder, Report
from harness.plan import plan_arms
from harness.pluginmanager import get_components
from harness.runfolder import RunFolder
from harness.runner import ArmRecorder, Runner, run_arm
from harness.specfile import load_spec


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def open_folder(loaded, path: Path) -> RunFolder:
    folder = RunFolder(path)
    folder.open(loaded.source.as_text(), loaded.resolved(), loaded.hash, loaded.spec.name)
    return folder


def attempt(loaded, arm, number: int, state, stop_after: int | None = None) -> list:
    """The messages of one attempt of `arm`; `stop_after` epochs: the worker dies there."""
    sent: list = []

    class Died(Exception):
        pass

    def send(message) -> None:
        sent.append(message)
        dies = stop_after is not None and isinstance(message, EpochDone)
        if dies and message.epoch >= stop_after:
            raise Died

    forwarder = Forwarder(arm.id, number, state, send)
    with contextlib.suppress(Died):
        run_arm(loaded, arm, forwarder, reporter=forwarder)
    return sent


def test_the_run_folder_and_the_forwarder_are_both_arm_recorders(tmp_path: Path) -> None:
    assert isinstance(RunFolder(tmp_path), ArmRecorder)
    assert isinstance(Forwarder("a", 1, None, print), ArmRecorder)


def test_a_forwarded_arm_writes_what_a_local_run_writes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "f.yaml", tiny_spec("f", training={"epochs": 2, "batch_size": 50}))
    loaded = load_spec(spec, get_components())
    Runner(loaded, get_components(), output_root=tmp_path / "local").run()
    folder = open_folder(loaded, tmp_path / "driver" / "f")
    ledger = ArmLedger(folder)
    arm = plan_arms(loaded.spec)[1]
    ledger.start(arm.id, folder.resume_arm(arm.id))
    messages = attempt(loaded, arm, 1, None)
    kinds = [type(m).__name__ for m in messages if not isinstance(m, Report)]
    assert kinds == ["Begin", "EpochDone", "EpochDone", "Finish"]
    assert all(ledger.accept(m) for m in messages) and ledger.finished(arm.id)
    local = RunFolder(tmp_path / "local" / "f").store().read_arm(arm.id)
    forwarded = folder.store().read_arm(arm.id)
    np.testing.assert_array_equal(forwarded.sal, local.sal)
    for name in ("train_loss", "test_loss", "test_metric", "sal_base_loss"):
        np.testing.assert_array_equal(forwarded.metrics[name], local.metrics[name])
    assert forwarded.complete and forwarded.config == local.config


def test_the_driver_refuses_rows_of_a_replaced_attempt_and_counts_no_epoch_twice(
    tmp_path: Path,
) -> None:
    spec = write_spec(tmp_path / "r.yaml", tiny_spec("r", training={"epochs": 3, "batch_size": 50}))
    loaded = load_spec(spec, get_components())
    Runner(loaded, get_components(), output_root=tmp_path / "local").run()
    folder = open_folder(loaded, tmp_path / "driver" / "r")
    ledger = ArmLedger(folder)
    arm = plan_arms(loaded.spec)[0]

    # attempt 1 records epoch 1, then its worker dies while sending epoch 2
    ledger.start(arm.id, None)
    first = attempt(loaded, arm, 1, None, stop_after=2)
    begin, epoch1, epoch2 = (m for m in first if not isinstance(m, Report))
    assert ledger.accept(begin) and ledger.accept(epoch1)
    assert folder.resume_arm(arm.id).epochs_done == 1  # epoch 2 never reached the driver

    # attempt 2 starts from the driver's checkpoint; the dead attempt's epoch 2 arrives late
    state = folder.resume_arm(arm.id)
    assert ledger.start(arm.id, state) == 2
    assert not ledger.accept(epoch2)
    assert "replaced by attempt 2" in ledger.refused[-1].reason
    second = attempt(loaded, arm, 2, state)
    records = [m for m in second if not isinstance(m, Report)]
    assert [type(m) for m in records] == [EpochDone, EpochDone, Finish]
    assert [m.epoch for m in records[:2]] == [2, 3]  # resumed after epoch 1
    assert not ledger.accept(Begin(arm.id, 2, begin.state))  # a second record of the same arm
    assert not ledger.accept(records[1])  # epoch 3 before epoch 2
    assert all(ledger.accept(m) for m in records)
    assert not ledger.accept(records[0])  # the same epoch twice
    assert len(ledger.refused) == 4

    local = RunFolder(tmp_path / "local" / "r").store().read_arm(arm.id)
    resumed = folder.store().read_arm(arm.id)
    assert resumed.sal.shape[0] == 3 and resumed.complete
    np.testing.assert_array_equal(resumed.sal, local.sal)
    np.testing.assert_array_equal(resumed.metrics["test_metric"], local.metrics["test_metric"])
