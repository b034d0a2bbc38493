"""What a defence is: it may act on images, on batches, or on the training step itself.

The three hook points mirror where published defences act. A defence overrides any of them;
the defaults leave training untouched, so `none` is simply `Defence()`. Per training batch the
harness calls them in this order:

1. `transform_images(x, generator)`: each training image, before the spec's crop and flip
   (JPEG, grayscale, bit-depth reduction, blur). The SAL probe's images get it too, so SAL
   measures the data the model is actually trained on.
2. the spec's augmentation (crop, flip);
3. `transform_batch(x, targets, num_classes, generator)`: the augmented batch and its hard
   labels (CutOut, MixUp, CutMix); it may return soft targets, a `[B, classes]` distribution per
   sample that sums to one. Mixing labels has no meaning for dense targets, so a defence that
   overrides this hook is refused on dense and multi-task specs.
4. `training_loss(model, x, targets, ctx)`: the loss of the step (adversarial training,
   UEraser's max over augmented copies).

All randomness comes from the `generator` handed in (the arm's, checkpointed with it), so a
resumed arm continues exactly where it stopped. Never use the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from harness.context import BuildContext


@dataclass
class StepContext:
    """What a step-level defence may use: the epoch (1-based), the arm's generator, the task's
    `loss` and `per_sample_loss` (both accept hard or soft targets), the data's `value_range` and
    the spec's `augment(x, generator)`."""

    epoch: int
    generator: torch.Generator
    loss: Callable[[Tensor, Tensor], Tensor]
    per_sample_loss: Callable[[Tensor, Tensor], Tensor]
    value_range: tuple[float, float] | None
    augment: Callable[[Tensor, torch.Generator], Tensor]


class Defence:
    """Built as `factory(params, context)`; subclasses used as the factory get `self.params`."""

    #: True when `transform_images` is a fixed function of each image on its own (no generator,
    #: no dependence on the batch, exact per-pixel or per-image arithmetic). The harness may then
    #: apply it once per arm to a training split held in memory, instead of to every batch of
    #: every epoch; the images are the same (JPEG, grayscale, bit-depth reduction).
    per_image: bool = False

    def __init__(self, params: Any = None, context: BuildContext | None = None) -> None:
        self.params = params
        self.context = context

    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return x, targets

    def training_loss(
        self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext
    ) -> Tensor:
        return ctx.loss(model(x), targets)

    @property
    def mixes_labels(self) -> bool:
        """Whether the defence rewrites class labels across a batch (meaningless for dense targets)."""
        return type(self).transform_batch is not Defence.transform_batch


class ImagesApplied(Defence):
    """A `per_image` defence whose image transform was already applied to the training split.

    Everything else (batch transform, training step) is the wrapped defence's.
    """

    def __init__(self, inner: Defence) -> None:
        super().__init__(inner.params, inner.context)
        self.inner = inner

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return self.inner.transform_batch(x, targets, num_classes, generator)

    def training_loss(
        self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext
    ) -> Tensor:
        return self.inner.training_loss(model, x, targets, ctx)

    @property
    def mixes_labels(self) -> bool:
        return self.inner.mixes_labels


def apply_images_once(defence: Defence, split: Any, chunk: int = 1024) -> tuple[Any, Defence]:
    """(split, defence) with a `per_image` defence's transform applied once to an in-memory
    float split; anything else is returned as it was."""
    if not defence.per_image or split.storage in ("disk", "uint8"):
        return split, defence
    unused = torch.Generator()  # a per-image defence draws nothing from it
    parts = [
        defence.transform_images(
            split.rows(torch.arange(start, min(start + chunk, len(split)))), unused
        )
        for start in range(0, len(split), chunk)
    ]
    return split.with_inputs(torch.cat(parts)), ImagesApplied(defence)
