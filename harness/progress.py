"""Progress while a run works: a live display on a terminal, one line per epoch elsewhere (CI logs).

Every line names its arm as "arm k/N" (its place in the plan) and carries an ETA from the epochs
done so far: the arm's own (its remaining epochs at its mean epoch time) and the run's (every
unfinished arm's remaining epochs, divided by the arms running at once). The same reporter serves
local runs and the driver of a Ray run, which receives the workers' progress as messages.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


class Reporter:
    """Silent; the base of the others and what `--quiet` uses."""

    #: whether it shows progress to someone (a Ray worker's poison progress is then printed on
    #: the worker, whose output Ray forwards to the driver's terminal)
    shows_progress = False

    def plan(self, arm_ids: Sequence[str], epochs: int) -> None: ...
    def stage(self, message: str) -> None: ...
    def arm_start(self, arm_id: str, epochs: int, done: int) -> None: ...
    def sal_layer(self, arm_id: str, index: int, total: int) -> None: ...
    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None: ...
    def arm_done(self, arm_id: str, skipped: bool = False) -> None: ...
    def poison_progress(self, label: str, message: str, fraction: float) -> None: ...
    def close(self) -> None: ...


def duration(seconds: float) -> str:
    """42s, 3m05s, 2h07m."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Schedule:
    """Where a run stands: each arm's place in the plan, its epochs, and the ETAs they imply."""

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.seconds: dict[str, list[float]] = {}
        self.running: set[str] = set()
        self.finished: set[str] = set()

    def plan(self, arm_ids: Sequence[str], epochs: int) -> None:
        for i, arm_id in enumerate(arm_ids, start=1):
            self.order[arm_id] = i
            self.epochs.setdefault(arm_id, epochs)
            self.done.setdefault(arm_id, 0)

    def position(self, arm_id: str) -> str:
        if arm_id not in self.order:
            self.order[arm_id] = len(self.order) + 1
        return f"arm {self.order[arm_id]}/{len(self.order)}"

    def start(self, arm_id: str, epochs: int, done: int) -> None:
        self.position(arm_id)
        self.epochs[arm_id], self.done[arm_id] = epochs, done
        self.running.add(arm_id)

    def epoch(self, arm_id: str, epoch: int, seconds: float) -> None:
        self.done[arm_id] = epoch
        self.seconds.setdefault(arm_id, []).append(seconds)

    def finish(self, arm_id: str) -> None:
        self.running.discard(arm_id)
        self.finished.add(arm_id)
        self.done[arm_id] = self.epochs.get(arm_id, self.done.get(arm_id, 0))

    def _per_epoch(self, arm_id: str) -> float | None:
        own = self.seconds.get(arm_id)
        if own:
            return sum(own) / len(own)
        every = [s for values in self.seconds.values() for s in values]
        return sum(every) / len(every) if every else None

    def _remaining(self, arm_id: str) -> int:
        return max(0, self.epochs.get(arm_id, 0) - self.done.get(arm_id, 0))

    def arm_eta(self, arm_id: str) -> float | None:
        per = self._per_epoch(arm_id)
        return None if per is None else per * self._remaining(arm_id)

    def run_eta(self) -> float | None:
        total = 0.0
        for arm_id in self.order:
            if arm_id in self.finished:
                continue
            per = self._per_epoch(arm_id)
            if per is None:
                return None
            total += per * self._remaining(arm_id)
        return total / max(1, len(self.running))

    def eta_text(self, arm_id: str) -> str:
        arm, run = self.arm_eta(arm_id), self.run_eta()
        if arm is None:
            return ""
        return f"ETA arm {duration(arm)}" + ("" if run is None else f", run {duration(run)}")


def _test_text(row: dict[str, Any], digits: int = 4) -> str:
    """The test metric, or every task's for a multi-task arm (whose single metric is NaN)."""
    per_task = {
        k.removeprefix("test_metric."): v for k, v in row.items() if k.startswith("test_metric.")
    }
    if not per_task:
        return f"test {row['test_metric']:.{digits}f}"
    return "test " + " ".join(f"{task} {value:.{digits - 1}f}" for task, value in per_task.items())


def _epoch_line(arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> str:
    return (
        f"{arm_id}: epoch {epoch}/{epochs} loss {row['train_loss']:.4f} "
        f"{_test_text(row)} sal [{min(row['sal']):.3g}, {max(row['sal']):.3g}] "
        f"({row['train_seconds']:.1f}s train, {row['sal_seconds']:.1f}s SAL)"
    )


def _epoch_seconds(row: dict[str, Any]) -> float:
    return float(row.get("train_seconds", 0.0)) + float(row.get("sal_seconds", 0.0))


class LineReporter(Reporter):
    shows_progress = True

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._last_tenth: dict[str, int] = {}
        self.schedule = Schedule()

    def plan(self, arm_ids: Sequence[str], epochs: int) -> None:
        self.schedule.plan(arm_ids, epochs)

    def poison_progress(self, label: str, message: str, fraction: float) -> None:
        tenth = int(max(0.0, min(1.0, fraction)) * 10)
        if tenth != self._last_tenth.get(label):
            self._last_tenth[label] = tenth
            self._print(f"poison {label}: {message} ({fraction:.0%})")

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def stage(self, message: str) -> None:
        self._print(message)

    def arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self.schedule.start(arm_id, epochs, done)
        self._print(
            f"[{self.schedule.position(arm_id)}] {arm_id}: training {epochs} epochs"
            + (f" (resuming after epoch {done})" if done else "")
        )

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        schedule = self.schedule
        schedule.epoch(arm_id, epoch, _epoch_seconds(row))
        eta = schedule.eta_text(arm_id) if epoch < epochs else ""
        self._print(
            f"[{schedule.position(arm_id)}] {_epoch_line(arm_id, epoch, epochs, row)}"
            + (f"; {eta}" if eta else "")
        )

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        self.schedule.finish(arm_id)
        if skipped:
            self._print(f"[{self.schedule.position(arm_id)}] {arm_id}: already complete, reused")


class RichReporter(Reporter):
    shows_progress = True

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.tasks: dict[str, Any] = {}
        self.epochs: dict[str, int] = {}
        self.schedule = Schedule()

    def plan(self, arm_ids: Sequence[str], epochs: int) -> None:
        self.schedule.plan(arm_ids, epochs)

    def stage(self, message: str) -> None:
        self.console.log(message)

    def arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self.schedule.start(arm_id, epochs, done)
        self.epochs[arm_id] = epochs
        self.tasks[arm_id] = self.progress.add_task(
            f"{self.schedule.position(arm_id)} {arm_id}",
            total=epochs,
            completed=done,
            status="training",
        )

    def sal_layer(self, arm_id: str, index: int, total: int) -> None:
        task = self.tasks.get(arm_id)
        if task is not None:
            self.progress.update(task, status=f"SAL layer {index + 1}/{total}")

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self.schedule.epoch(arm_id, epoch, _epoch_seconds(row))
        eta = self.schedule.eta_text(arm_id) if epoch < epochs else ""
        self.progress.update(
            self.tasks[arm_id],
            completed=epoch,
            status=f"loss {row['train_loss']:.3f} {_test_text(row, 3)}"
            + (f" {eta}" if eta else ""),
        )

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        self.schedule.finish(arm_id)
        if skipped:
            self.console.log(f"{self.schedule.position(arm_id)} {arm_id}: already complete, reused")

    def poison_progress(self, label: str, message: str, fraction: float) -> None:
        task_id = f"poison:{label}"
        if task_id not in self.tasks:
            self.tasks[task_id] = self.progress.add_task(f"poison {label}", total=1.0, status="")
        self.progress.update(
            self.tasks[task_id], completed=max(0.0, min(1.0, fraction)), status=message
        )

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool = False) -> Reporter:
    if quiet:
        return Reporter()
    if sys.stderr.isatty():
        return RichReporter()
    return LineReporter()
