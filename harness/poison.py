"""What a poison generator is, and what the harness hands it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.data import DataBundle


@dataclass
class PoisonContext:
    """Everything a generator may use besides the clean data.

    `build_model(backbone_name, backbone_params)` builds any registered backbone with the track's
    task head on top, so surrogate-based methods run at whatever scale their parameters ask for.

    For a poison crafted against another task than the one trained (cross-task, paper §3.4),
    `build_model` puts the crafting task's head(s) on the backbone, `task_loss` is that task's
    loss, and `targets` holds its targets for every training sample (a tensor, or a dict by task
    label for several tasks); `classification` says whether they are plain class labels.
    """

    seed: int
    device: torch.device
    data: DataBundle
    build_model: Callable[[str, dict[str, Any]], torch.nn.Module]
    task_loss: Callable[[Tensor, Tensor], Tensor]
    cache_dir: Path | None = None
    progress: Callable[[str, float], None] = field(default=lambda message, fraction: None)
    targets: Any = None
    classification: bool = True
    crafting_task: str | None = None

    def train_targets(self, data: DataBundle) -> Any:
        """The crafting task's targets of every training sample (the class labels by default)."""
        return data.train.y if self.targets is None else self.targets

    def generator(self, salt: int = 0) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + salt)
        return g


class Poison(ABC):
    """Turns the clean training inputs into protected ones. Labels never change."""

    #: False for poisons that only read files: caching them would hide a change of the files.
    cacheable: bool = True

    @abstractmethod
    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        """The protected training inputs, same shape and order as `data.train.x`."""


def clamp_to_range(x: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    if value_range is None:
        return x
    return x.clamp(value_range[0], value_range[1])
