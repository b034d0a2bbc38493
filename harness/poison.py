"""What a poison generator is, and what the harness hands it.

The contract of `Poison.generate`, which every generator must keep (the harness checks what it
can):

- **Same shape and order** as `data.train.x`: sample `i` of the result is the protected version
  of sample `i`. Return a new tensor; never modify `data` (its inputs, labels or targets).
- **Labels never change**: an unlearnable example is the same sample with the same label.
- **Values inside `data.value_range`** (`(0, 1)` for images; `None` for feature data): finish
  with `clamp_to_range(x, data.value_range)`.
- **Randomness only from `ctx.generator(salt)`**: a `torch.Generator` seeded from the arm's seed
  and the salt, so the result is the same every time for one seed and differs across seeds. Use a
  different salt per independent stream; never the global RNG, an unseeded NumPy generator or the
  clock. (Model initialisation inside `ctx.build_model` should run under
  `torch.random.fork_rng` with a seed derived from `ctx.seed`.)
- **Long generators may resume** through `ctx.checkpoint`: call `ctx.checkpoint.load()` once at
  the start and `ctx.checkpoint.save_if_due(make_state)` at points where the generation could go
  on; the state must hold everything the rest depends on (weights, optimizer, the step, the
  state of every `torch.Generator`), so that a generation cut short and resumed gives the same
  poison, bit for bit, as one that ran through.
- **Surrogates from `ctx.build_model(backbone_name, backbone_params)`**: any registered backbone
  with the crafting task's head(s) on top, sized for this data; train it on `ctx.device` with
  `ctx.task_loss(outputs, targets)` and `ctx.train_targets(data)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from harness.data import DataBundle

if TYPE_CHECKING:
    from harness.context import BuildContext


class GenerationCheckpoint:
    """Where a long generator keeps its progress, so a generation cut short resumes.

    Arms resume from their last complete epoch; a poison generation that takes an hour (REM's
    surrogate at a paper's budget) would otherwise start over after every Ctrl-C, lost worker or
    session limit. The harness hands each generation one of these, keyed by everything that
    determines the poison (as the disk cache is: code, parameters, data, seed), so a saved state
    is never resumed by other code or for other data, and deletes it once the poison is made.

    This base keeps nothing (`load` gives None), which is what a generator sees when the poison
    is not cached or called outside the harness; the disk one is `harness.poison_cache`'s.
    """

    def load(self) -> dict[str, Any] | None:
        """The last saved state of this very generation, or None: start from the beginning."""
        return None

    def due(self) -> bool:
        """Whether a state handed now would be written (saves are spaced in time)."""
        return False

    def save(self, state: dict[str, Any]) -> None:
        """Keep `state` (tensors, numbers, strings, lists and dicts of them) for `load`."""

    def save_if_due(self, make_state: Callable[[], dict[str, Any]]) -> bool:
        """Save `make_state()` when a save is due; `make_state` is called only then, so a
        generator may offer its state after every step at no cost. True when it saved."""
        if not self.due():
            return False
        self.save(make_state())
        return True

    def discard(self) -> None:
        """Forget the saved state (the generation finished)."""

    @property
    def earlier_seconds(self) -> float:
        """Seconds the generation ran in earlier attempts, up to the state `load` handed back."""
        return 0.0


@dataclass
class PoisonContext:
    """Everything a generator may use besides the clean data.

    `build_model(backbone_name, backbone_params)` builds any registered backbone with the crafting
    task's head on top, so surrogate-based methods run at whatever scale their parameters ask for.

    For a poison crafted against another task than the one trained (cross-task, paper §3.4),
    `build_model` puts the crafting task's head(s) on the backbone, `task_loss` is that task's
    loss, and `targets` holds its targets for every training sample (a tensor, or a dict by task
    label for several tasks); `classification` says whether they are plain class labels.

    `progress(message, fraction)` reports progress of long generators; `cache_dir` may be None.
    `checkpoint` keeps a long generator's progress between attempts (see `GenerationCheckpoint`).
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
    checkpoint: GenerationCheckpoint = field(default_factory=GenerationCheckpoint)

    def train_targets(self, data: DataBundle) -> Any:
        """The crafting task's targets of every training sample (the class labels by default)."""
        return data.train.y if self.targets is None else self.targets

    def generator(self, salt: int = 0) -> torch.Generator:
        """A fresh generator seeded from the arm's seed and `salt`: the only source of randomness."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + salt)
        return g


class Poison(ABC):
    """Turns the clean training inputs into protected ones. Labels never change.

    Built by its record's factory as `factory(params, context)`; a subclass used directly as the
    factory gets `self.params` (its validated parameters) and `self.context` from this
    constructor, so most generators need no `__init__` of their own.
    """

    #: False for poisons that only read files: caching them would hide a change of the files.
    cacheable: bool = True

    def __init__(self, params: Any = None, context: BuildContext | None = None) -> None:
        self.params = params
        self.context = context

    @abstractmethod
    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        """The protected training inputs, same shape and order as `data.train.x`."""


def clamp_to_range(x: Tensor, value_range: tuple[float, float] | None) -> Tensor:
    """`x` clipped into the data's value range (unchanged for feature data, whose range is None)."""
    if value_range is None:
        return x
    return x.clamp(value_range[0], value_range[1])
