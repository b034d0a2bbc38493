"""Progress while a run works: a live display on a terminal, one line per epoch elsewhere (CI logs)."""

from __future__ import annotations

import sys
from typing import Any


class Reporter:
    """Silent; the base of the others and what `--quiet` uses."""

    def stage(self, message: str) -> None: ...
    def arm_start(self, arm_id: str, epochs: int, done: int) -> None: ...
    def sal_layer(self, arm_id: str, index: int, total: int) -> None: ...
    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None: ...
    def arm_done(self, arm_id: str, skipped: bool = False) -> None: ...
    def poison_progress(self, label: str, message: str, fraction: float) -> None: ...
    def close(self) -> None: ...


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


class LineReporter(Reporter):
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self._last_tenth: dict[str, int] = {}

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
        self._print(
            f"{arm_id}: training {epochs} epochs"
            + (f" (resuming after epoch {done})" if done else "")
        )

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self._print(_epoch_line(arm_id, epoch, epochs, row))

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        if skipped:
            self._print(f"{arm_id}: already complete, reused")


class RichReporter(Reporter):
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

    def stage(self, message: str) -> None:
        self.console.log(message)

    def arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self.epochs[arm_id] = epochs
        self.tasks[arm_id] = self.progress.add_task(
            arm_id, total=epochs, completed=done, status="training"
        )

    def sal_layer(self, arm_id: str, index: int, total: int) -> None:
        task = self.tasks.get(arm_id)
        if task is not None:
            self.progress.update(task, status=f"SAL layer {index + 1}/{total}")

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self.progress.update(
            self.tasks[arm_id],
            completed=epoch,
            status=f"loss {row['train_loss']:.3f} {_test_text(row, 3)}",
        )

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        if skipped:
            self.console.log(f"{arm_id}: already complete, reused")

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
