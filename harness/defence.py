"""What a defence is: it may act on images, on batches, or on the training step itself.

The three hook points mirror where published defences act. A defence overrides any of them;
the defaults leave training untouched, so `none` is simply `Defence()`.

- `transform_images`: each training image before the usual augmentation (JPEG, grayscale,
  bit-depth reduction, blur). Called on every batch, so random transforms stay random.
- `transform_batch`: after augmentation, on the batch and its targets; may return soft targets
  ([B, classes] distributions) for MixUp and CutMix.
- `training_loss`: replaces the loss of one step (adversarial training, UEraser's max over
  augmented copies). Gets the model, the batch and the task's loss functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class StepContext:
    """What a step-level defence may use."""

    epoch: int
    generator: torch.Generator
    loss: Callable[[Tensor, Tensor], Tensor]
    per_sample_loss: Callable[[Tensor, Tensor], Tensor]
    value_range: tuple[float, float] | None
    augment: Callable[[Tensor, torch.Generator], Tensor]


class Defence:
    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return x, targets

    def training_loss(self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext) -> Tensor:
        return ctx.loss(model(x), targets)
