"""The state of one arm after its last complete epoch, as saved in `checkpoints/<arm>.pt`.

A checkpoint holds everything a resumed arm needs to continue exactly where it stopped (model,
optimiser, schedule, the arm's random generator, the grad scaler, the optimisation step count)
and every epoch row recorded so far, which are the truth the run file is rebuilt from after a
kill. It is written atomically after each epoch, and loaded with `weights_only=True` so a
checkpoint from elsewhere can never run code.
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
from harness.store import EpochRow


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

    @property
    def epochs_done(self) -> int:
        return len(self.rows)

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
        )


def save_state(path: Path, state: ArmState) -> None:
    atomic_write(path, lambda f: torch.save(state.to_dict(), f))


def load_state(path: Path) -> ArmState | None:
    """The arm's state, None when it has no checkpoint; a damaged one is named, never used."""
    if not path.exists():
        return None
    try:
        return ArmState.from_dict(torch.load(path, weights_only=True))
    except Exception as exc:  # truncated, foreign or tampered: refuse it with the file's name
        raise RunStateError(
            f"{path}: the checkpoint cannot be read ({type(exc).__name__}: {_first_line(exc)}); "
            "delete it to train this arm again from its first epoch"
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
