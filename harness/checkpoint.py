"""The state of one arm after its last complete epoch, as saved in `checkpoints/<arm>.pt`.

A checkpoint holds everything a resumed arm needs to continue exactly where it stopped (model,
optimiser, schedule, the arm's random generator, the grad scaler, the optimisation step count)
and every epoch row recorded so far, which are the truth the run file is rebuilt from after a
kill. It is written atomically after each epoch, and loaded with `weights_only=True` so a
checkpoint from elsewhere can never run code.

Beside the rows it keeps their chained digests (`harness.store.row_digest`): the digest after
epoch t covers every row up to t as `run.h5` stores it. A resume, and `harness submit`, compare
the rows of `run.h5` with them, so a value edited in the run file is found whatever rewrote the
entries afterwards. `config` records the plugins (distribution, version, code digest) the arm
started with, and `resumes` every later machine whose facts differed (device, threads, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.armconfig import ArmConfig
from harness.atomic import atomic_write
from harness.errors import RunStateError
from harness.store import EpochRow, row_digests, stored_metric_names


@dataclass
class ArmState:
    config: ArmConfig
    hardware: dict[str, Any]
    layers: list[str]
    epochs: int
    rows: list[EpochRow] = field(default_factory=list)
    complete: bool = False
    #: multi-task arms: the task labels and the shared backbone's layers their SAL covers
    task_labels: list[str] = field(default_factory=list)
    task_layers: list[str] = field(default_factory=list)
    model: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    generator: Tensor | None = None
    scaler: dict[str, Any] = field(default_factory=dict)
    #: optimisation steps taken so far (the parameter trajectory is cut back to it on resume)
    steps: int = 0
    #: the chained digest after each row (`harness.store.row_digest`)
    row_digests: list[str] = field(default_factory=list)
    #: machines the arm was resumed on whose facts differ from `hardware`: {epoch, hardware}
    resumes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

    @property
    def metric_names(self) -> list[str]:
        """The metrics `run.h5` holds for this arm."""
        return stored_metric_names(self.task_labels or None)

    def computed_digests(self) -> list[str]:
        """The chained digests of the rows this state holds."""
        return row_digests(self.rows, self.metric_names)

    def seal(self) -> None:
        """Bring the digests up to the rows (after the runner appended an epoch's row)."""
        self.row_digests = self.computed_digests()

    def recorded_hardware(self) -> dict[str, Any]:
        """The hardware as entries report it: where the arm started, and where it was resumed."""
        if not self.resumes:
            return dict(self.hardware)
        return {**self.hardware, "resumed": [dict(r) for r in self.resumes]}

    @property
    def current_hardware(self) -> dict[str, Any]:
        return dict(self.resumes[-1]["hardware"]) if self.resumes else dict(self.hardware)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: plain containers and tensors only (what `weights_only` loads)."""
        out: dict[str, Any] = {
            "config": self.config.as_dict(),
            "hardware": self.hardware,
            "layers": list(self.layers),
            "epochs": self.epochs,
            "rows": [asdict(row) for row in self.rows],
            "complete": self.complete,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "generator": self.generator,
            "scaler": self.scaler,
            "steps": self.steps,
            "row_digests": list(self.row_digests),
            "resumes": list(self.resumes),
        }
        if self.task_labels:
            out["tasks"], out["task_layers"] = list(self.task_labels), list(self.task_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArmState:
        return cls(
            config=ArmConfig.model_validate(data["config"]),
            hardware=dict(data["hardware"]),
            layers=list(data["layers"]),
            epochs=int(data["epochs"]),
            rows=[EpochRow(**row) for row in data["rows"]],
            complete=bool(data["complete"]),
            task_labels=list(data.get("tasks") or []),
            task_layers=list(data.get("task_layers") or []),
            model=data.get("model"),
            optimizer=data.get("optimizer"),
            scheduler=data.get("scheduler"),
            generator=data.get("generator"),
            scaler=data.get("scaler") or {},
            steps=int(data.get("steps", 0)),
            row_digests=list(data.get("row_digests") or []),
            resumes=list(data.get("resumes") or []),
        )


def save_state(path: Path, state: ArmState, *, root: Path | None = None) -> None:
    atomic_write(path, lambda f: torch.save(state.to_dict(), f), root=root)


def load_state(path: Path, *, mmap: bool = False) -> ArmState | None:
    """The arm's state, None when it has no checkpoint; a damaged one is named, never used.

    Damaged means unreadable, or holding rows that do not match the digests stored with them
    (checkpoints written before digests existed get them computed from their rows).
    `mmap=True` maps the tensors instead of reading them (for checks that need no weights).
    """
    if not path.exists():
        return None
    try:
        state = ArmState.from_dict(torch.load(path, weights_only=True, mmap=mmap))
    except Exception as exc:  # truncated, foreign or tampered: refuse it with the file's name
        raise RunStateError(
            f"{path}: the checkpoint cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
            "delete it to train this arm again from its first epoch"
        ) from None
    computed = state.computed_digests()
    if state.row_digests and state.row_digests != computed:
        raise RunStateError(
            f"{path}: the checkpoint's rows do not match the digests stored with them (the file "
            "was damaged or edited); delete it to train this arm again from its first epoch"
        )
    state.row_digests = computed
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
