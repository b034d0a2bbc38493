"""An arm's record, forwarded from the process that trains it to the run folder's one writer.

A worker of a distributed run trains an arm with the same `run_arm` as a local run; only its
recorder differs. `Forwarder` satisfies `harness.runner.ArmRecorder` (and `Reporter`) by turning
each call into a message; the driver hands every message to `ArmLedger`, which checks it against
what the run folder already holds and writes it through `RunFolder`, in the same crash-safe
order as a local run. Nothing here knows about Ray: the messages are plain data, so the same
pair serves any transport (Ray's streaming tasks in `harness.executors.ray_executor`, a queue in
the tests).

Why messages rather than files written by the workers:

- the run folder (run.h5 and the checkpoints) has one writer, the driver, so HDF5 is never opened
  by two processes and a node needs no shared file system: workers share nothing but Ray;
- the driver is the one that knows which attempt of an arm is current. Each message names its
  arm, its attempt and (for an epoch) its epoch; the ledger refuses anything from an attempt it
  has replaced, a repeated or skipped epoch, or a finish before the last epoch, so a row from a
  dead worker is never counted and nothing is counted twice;
- a retried or restarted arm starts from the state the driver read back from its own
  checkpoint, the only copy that is known to be complete.

An epoch's state travels in the checkpoint's own format (`ArmState.to_dict`, `torch.save`d into
bytes at the moment the epoch ends, loaded by the driver with `weights_only=True`), so the
worker's next epoch cannot change it in flight and a message can never run code on the driver.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.armconfig import ArmConfig
from harness.checkpoint import ArmState
from harness.plan import Arm
from harness.progress import Reporter
from harness.runner import ArmRecorder, SnapshotSink
from harness.store import EpochRow
from harness.sysinfo import hardware_differs


def encode_state(state: ArmState) -> bytes:
    """The state as the bytes of a checkpoint file (a copy: later training cannot change it)."""
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    return buffer.getvalue()


def decode_state(data: bytes) -> ArmState:
    return ArmState.from_dict(torch.load(io.BytesIO(data), weights_only=True))


@dataclass(frozen=True)
class ArmMessage:
    """What a worker tells the driver about one attempt of one arm."""

    arm_id: str
    attempt: int


@dataclass(frozen=True)
class Begin(ArmMessage):
    """A new arm's empty record (its configuration, hardware, layers)."""

    state: bytes


@dataclass(frozen=True)
class EpochDone(ArmMessage):
    """One finished epoch: the state after it, its row, the trajectory snapshots taken in it."""

    epoch: int
    state: bytes
    row: EpochRow
    steps: list[int]
    snapshots: list[np.ndarray]
    every_steps: int


@dataclass(frozen=True)
class Finish(ArmMessage):
    """The arm's last epoch is recorded: mark it complete."""


@dataclass(frozen=True)
class Report(ArmMessage):
    """A progress call (`Reporter.<method>(*args)`) for the driver's display."""

    method: str
    args: tuple[Any, ...] = ()


REPORTED = ("stage", "arm_start", "sal_layer", "epoch_done", "arm_done", "poison_progress")


class Forwarder(Reporter):
    """The recorder (and reporter) of an arm trained away from the run folder.

    `resume_arm` answers with the state the driver sent with the task (None for a new arm); every
    other call becomes a message passed to `send`.
    """

    def __init__(
        self,
        arm_id: str,
        attempt: int,
        state: ArmState | None,
        send: Callable[[ArmMessage], None],
    ) -> None:
        self.arm_id, self.attempt, self.state, self.send = arm_id, attempt, state, send

    # --- ArmRecorder -----------------------------------------------------------------------------
    def resume_arm(
        self,
        arm_id: str,
        config: ArmConfig | None = None,
        hardware: dict[str, Any] | None = None,
    ) -> ArmState | None:
        """The driver checked the plugins (`RunFolder.resume_arm` with the arm's config); a resume
        on a worker whose hardware differs is recorded in the state, which travels back with
        every epoch."""
        self._check(arm_id)
        state = self.state
        if (
            state is not None
            and hardware is not None
            and not state.complete
            and hardware_differs(state.current_hardware, hardware)
        ):
            state.resumes.append({"epoch": state.epochs_done + 1, "hardware": dict(hardware)})
        return state

    def begin_arm(self, arm_id: str, state: ArmState) -> None:
        self._check(arm_id)
        self.send(Begin(arm_id, self.attempt, encode_state(state)))

    def record_epoch(
        self,
        arm_id: str,
        state: ArmState,
        row: EpochRow,
        snapshots: tuple[list[int], list[np.ndarray]],
        every_steps: int,
    ) -> None:
        self._check(arm_id)
        steps, rows = snapshots
        self.send(
            EpochDone(
                arm_id,
                self.attempt,
                state.epochs_done,
                encode_state(state),
                row,
                list(steps),
                [np.array(r, copy=True) for r in rows],
                every_steps,
            )
        )

    def finish_arm(self, arm_id: str) -> None:
        self._check(arm_id)
        self.send(Finish(arm_id, self.attempt))

    def _check(self, arm_id: str) -> None:
        if arm_id != self.arm_id:
            raise ValueError(f"this forwarder records arm {self.arm_id!r}, not {arm_id!r}")

    # --- Reporter: progress goes to the driver's display -----------------------------------------
    def _report(self, method: str, *args: Any) -> None:
        self.send(Report(self.arm_id, self.attempt, method, tuple(args)))

    def stage(self, message: str) -> None:
        self._report("stage", message)

    def arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self._report("arm_start", arm_id, epochs, done)

    def sal_layer(self, arm_id: str, index: int, total: int) -> None:
        self._report("sal_layer", arm_id, index, total)

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self._report("epoch_done", arm_id, epoch, epochs, _plain(row))

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        self._report("arm_done", arm_id, skipped)

    def poison_progress(self, label: str, message: str, fraction: float) -> None:
        self._report("poison_progress", label, message, fraction)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v for k, v in row.items()}


class FixedInputs:
    """A poisoned arm's training inputs, handed over whole (by the driver, through the object store)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def for_arm(self, arm: Arm) -> Tensor:
        return self.x


@dataclass
class _Attempt:
    number: int
    next_epoch: int
    #: the arm's planned epochs, once its record exists (resumed state, or its Begin message)
    epochs: int | None
    finished: bool = False

    @property
    def begun(self) -> bool:
        return self.epochs is not None


@dataclass
class Refusal:
    message: ArmMessage
    reason: str


@dataclass
class ArmLedger:
    """The driver's side: which attempt of each arm is current, and what it may write.

    `start(arm_id, state)` opens a new attempt from the state the run folder holds (None for a
    new arm) and returns its number; `accept(message)` writes an acceptable message through the
    recorder and returns True, or records why it was refused and returns False.
    """

    recorder: ArmRecorder
    reporter: Reporter = field(default_factory=Reporter)
    #: `--save-snapshots K`: the model of every K-th epoch, taken from the state the epoch's
    #: message carries (the worker sends the checkpoint anyway), kept by the driver
    snapshots: SnapshotSink | None = None
    attempts: dict[str, _Attempt] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)

    def start(self, arm_id: str, state: ArmState | None) -> int:
        previous = self.attempts.get(arm_id)
        number = 1 if previous is None else previous.number + 1
        done = 0 if state is None else state.epochs_done
        epochs = None if state is None else state.epochs
        self.attempts[arm_id] = _Attempt(number, done + 1, epochs)
        return number

    def attempt(self, arm_id: str) -> int:
        return self.attempts[arm_id].number

    def finished(self, arm_id: str) -> bool:
        current = self.attempts.get(arm_id)
        return current is not None and current.finished

    def accept(self, message: ArmMessage) -> bool:
        current = self.attempts.get(message.arm_id)
        if current is None:
            return self._refuse(message, "no attempt of this arm was started by this driver")
        if message.attempt != current.number:
            return self._refuse(
                message, f"attempt {message.attempt} was replaced by attempt {current.number}"
            )
        if isinstance(message, Report):
            if message.method in REPORTED:
                getattr(self.reporter, message.method)(*message.args)
            return True
        if current.finished:
            return self._refuse(message, "the arm is already complete")
        if isinstance(message, Begin):
            if current.begun:
                return self._refuse(message, "the arm has a record already")
            state = decode_state(message.state)
            self.recorder.begin_arm(message.arm_id, state)
            current.epochs = state.epochs
            return True
        if isinstance(message, EpochDone):
            if not current.begun:
                return self._refuse(message, "epoch before the arm's record was begun")
            if message.epoch != current.next_epoch:
                return self._refuse(
                    message, f"epoch {message.epoch} where epoch {current.next_epoch} is due"
                )
            state = decode_state(message.state)
            if state.epochs_done != message.epoch:
                return self._refuse(message, f"its state holds {state.epochs_done} epochs")
            if self.snapshots is not None and message.epoch % self.snapshots.every == 0:
                # before the epoch is recorded, as a local run does
                self.snapshots.save(message.arm_id, message.epoch, state.model)
            self.recorder.record_epoch(
                message.arm_id,
                state,
                message.row,
                (list(message.steps), list(message.snapshots)),
                message.every_steps,
            )
            current.next_epoch += 1
            return True
        if isinstance(message, Finish):
            if current.next_epoch - 1 != current.epochs:
                return self._refuse(message, "finish before the last epoch was recorded")
            self.recorder.finish_arm(message.arm_id)
            current.finished = True
            return True
        return self._refuse(message, f"unknown message {type(message).__name__}")

    def _refuse(self, message: ArmMessage, reason: str) -> bool:
        self.refused.append(Refusal(message, reason))
        self.reporter.stage(
            f"{message.arm_id}: refused {type(message).__name__} from attempt "
            f"{message.attempt}: {reason}"
        )
        return False
