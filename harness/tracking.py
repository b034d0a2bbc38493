"""Experiment trackers: a run watched live in TensorBoard, MLflow or any tracker a plugin adds.

A tracker is a component (`harness_register_trackers`) built from the spec's `trackers:` list or
`harness eval --log-to tensorboard,mlflow`. It observes a run through five events, all sent from
the process that writes the run folder (so a distributed run is tracked once):

    on_run_start(run)                      the run's name, spec hash, resolved spec, folder, layers
    on_arm_start(arm_id, epochs, done)     an arm begins (done > 0: it resumes after that epoch)
    on_epoch_end(arm_id, epoch, metrics, sal)   one epoch's metrics and per-layer SAL
    on_arm_end(arm_id)
    on_run_end(entries)                    every arm's entry: UD, #LP, β, test metric

Trackers only observe: they never change what is trained or scored, so they are not part of the
spec hash or of any track, and a tracker that fails is reported and switched off rather than
stopping the run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.progress import Reporter

if TYPE_CHECKING:
    from harness.assembly import Assembly
    from harness.context import BuildContext
    from harness.entries import Entry
    from harness.pluginmanager import Components
    from harness.runfolder import RunFolder
    from harness.specfile import LoadedSpec


@dataclass(frozen=True)
class RunInfo:
    """What a tracker knows about the run it watches."""

    name: str
    spec_hash: str
    spec: dict[str, Any]
    folder: Path
    layers: list[str]
    task_layers: list[str] = field(default_factory=list)


class Tracker:
    """Base of trackers; every event does nothing unless overridden.

    Built as `factory(params, context)`; subclasses used as the factory get `self.params`.
    Raise nothing on purpose: a failure is caught, reported once, and the tracker switched off.
    """

    def __init__(self, params: Any = None, context: BuildContext | None = None) -> None:
        self.params = params
        self.context = context

    def on_run_start(self, run: RunInfo) -> None: ...
    def on_arm_start(self, arm_id: str, epochs: int, done: int) -> None: ...
    def on_epoch_end(
        self, arm_id: str, epoch: int, metrics: dict[str, float], sal: list[float]
    ) -> None: ...
    def on_arm_end(self, arm_id: str) -> None: ...
    def on_run_end(self, entries: list[Entry]) -> None: ...
    def close(self) -> None: ...


class TrackingReporter(Reporter):
    """A reporter that also sends the run's events to trackers, switching off one that fails."""

    def __init__(self, inner: Reporter, trackers: dict[str, Tracker]) -> None:
        self.inner = inner
        self.trackers = dict(trackers)

    def _send(self, event: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, event)(*args)
            except Exception as exc:  # a tracker must never stop a run: report it, switch it off
                print(
                    f"warning: tracker {name!r} failed in {event} ({type(exc).__name__}: {exc}); "
                    "it is switched off for the rest of the run",
                    file=sys.stderr,
                )
                self.trackers.pop(name, None)
                with contextlib.suppress(Exception):  # already failing: nothing more to report
                    tracker.close()

    def run_start(self, run: RunInfo) -> None:
        self._send("on_run_start", run)

    def run_end(self, entries: list[Entry]) -> None:
        self._send("on_run_end", entries)
        self._send("close")

    # --- the Reporter interface, forwarded --------------------------------------------------
    def plan(self, arm_ids: Sequence[str], epochs: int) -> None:
        self.inner.plan(arm_ids, epochs)

    def stage(self, message: str) -> None:
        self.inner.stage(message)

    def arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self.inner.arm_start(arm_id, epochs, done)
        self._send("on_arm_start", arm_id, epochs, done)

    def sal_layer(self, arm_id: str, index: int, total: int) -> None:
        self.inner.sal_layer(arm_id, index, total)

    def epoch_done(self, arm_id: str, epoch: int, epochs: int, row: dict[str, Any]) -> None:
        self.inner.epoch_done(arm_id, epoch, epochs, row)
        metrics = {k: float(v) for k, v in row.items() if k != "sal"}
        self._send("on_epoch_end", arm_id, epoch, metrics, [float(v) for v in row["sal"]])

    def arm_done(self, arm_id: str, skipped: bool = False) -> None:
        self.inner.arm_done(arm_id, skipped)
        if not skipped:
            self._send("on_arm_end", arm_id)

    def poison_progress(self, label: str, message: str, fraction: float) -> None:
        self.inner.poison_progress(label, message, fraction)

    def close(self) -> None:
        self.inner.close()


def tracked_reporter(
    reporter: Reporter,
    loaded: LoadedSpec,
    components: Components,
    folder: RunFolder,
    assembly: Assembly,
    log_to: Sequence[str] = (),
) -> Reporter:
    """`reporter`, also sending the run's events to the spec's trackers and those of --log-to.

    The run's start is sent at once; the caller sends its end (`TrackingReporter.run_end`).
    """
    spec = loaded.spec
    refs = [(ref.name, ref.params) for ref in spec.trackers]
    refs += [(name, {}) for name in log_to if name not in {r[0] for r in refs}]
    if not refs:
        return reporter
    trackers = {name: components.build("tracker", name, params) for name, params in refs}
    tracking = TrackingReporter(reporter, trackers)
    tracking.run_start(
        RunInfo(
            spec.name,
            loaded.hash,
            loaded.resolved(),
            folder.path,
            assembly.layers,
            assembly.task_layers,
        )
    )
    return tracking
