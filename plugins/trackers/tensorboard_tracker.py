"""TensorBoard: one event stream per arm, with every epoch's metrics and each layer's SAL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from harness.api import BuildContext, Params, RunInfo, Tracker, TrackerRecord, hookimpl

INSTALL = "pip install 'harness[tensorboard]' (or tensorboard)"


class TensorBoardParams(Params):
    log_dir: str | None = Field(
        default=None,
        description="where the event files go (one folder per arm); null: RUN/tensorboard",
    )


class TensorBoardTracker(Tracker):
    """Scalars per arm: the epoch's metrics (`metrics/...`), each layer's SAL (`sal/<layer>`) and
    their mean; at the end of the run UD, #LP and β of each entry (`entry/...`).

    `tensorboard --logdir RUN/tensorboard` shows every arm of a run side by side, live.
    """

    def __init__(self, params: TensorBoardParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            raise ValueError(
                f"the tensorboard tracker needs the tensorboard package: {INSTALL}"
            ) from None
        self._writer_type = SummaryWriter
        self.writers: dict[str, Any] = {}
        self.root: Path | None = None
        self.layers: list[str] = []

    def on_run_start(self, run: RunInfo) -> None:
        self.root = Path(self.params.log_dir) if self.params.log_dir else run.folder / "tensorboard"
        self.layers = list(run.layers)

    def _writer(self, arm_id: str):
        if arm_id not in self.writers:
            assert self.root is not None
            self.writers[arm_id] = self._writer_type(log_dir=str(self.root / arm_id))
        return self.writers[arm_id]

    def on_epoch_end(
        self, arm_id: str, epoch: int, metrics: dict[str, float], sal: list[float]
    ) -> None:
        writer = self._writer(arm_id)
        for name, value in metrics.items():
            writer.add_scalar(f"metrics/{name}", value, epoch)
        for layer, value in zip(self.layers, sal, strict=False):
            writer.add_scalar(f"sal/{layer}", value, epoch)
        if sal:
            writer.add_scalar("sal/mean", sum(sal) / len(sal), epoch)
        writer.flush()

    def on_run_end(self, entries) -> None:
        for entry in entries:
            writer = self._writer(entry.arm_id)
            tag = f"entry/{entry.task_label}/" if entry.task_label else "entry/"
            if entry.results.ud is not None:
                writer.add_scalar(tag + "ud", entry.results.ud, entry.epochs)
            writer.add_scalar(tag + "lp", entry.results.lp, entry.epochs)
            writer.add_scalar(tag + "beta", entry.results.beta, entry.epochs)
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


@hookimpl
def harness_register_trackers() -> list[TrackerRecord]:
    return [
        TrackerRecord(
            name="tensorboard",
            factory=TensorBoardTracker,
            params=TensorBoardParams,
            description="TensorBoard event files per arm: metrics and each layer's SAL per epoch, "
            "UD and #LP at the end (needs tensorboard)",
        )
    ]
