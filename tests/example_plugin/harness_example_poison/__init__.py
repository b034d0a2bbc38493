"""example-stripes: a toy class-wise poison, shipped as a third-party harness plugin.

This is a worked example of the plugin API, NOT a published unlearnable-example method. Every
training image of class c gets the same horizontal stripe pattern added to it,

    delta[row] = epsilon * cos(2π (row / period + c / num_classes))

whose phase depends on the class, so the pattern is a class-wise shortcut (like class-wise random
noise, but with no randomness at all). The result is clamped to the data's value range.

It imports only the plugin authors' API, `harness.api`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from harness.api import (
    DataBundle,
    Params,
    Poison,
    PoisonContext,
    PoisonRecord,
    clamp_to_range,
    hookimpl,
)

__version__ = "0.1.0"


class StripesParams(Params):
    """What a spec may set under `params:`; unknown keys are an error (extra="forbid")."""

    epsilon: float = Field(default=8 / 255, gt=0, le=1, description="L∞ bound of the pattern")
    period: int = Field(default=8, ge=2, le=256, description="rows per light-dark cycle")


def stripes(num_classes: int, shape: tuple[int, ...], epsilon: float, period: int) -> Tensor:
    """One pattern per class, shape [num_classes, *shape], with values in [-epsilon, epsilon].

    Row r of class c is epsilon * cos(2π (r / period + c / num_classes)): the same horizontal
    stripes for every class, shifted by a fraction c / num_classes of a period. Rows are the
    second-last axis of an image ([C, H, W]); a feature vector ([F]) is treated as one column.
    """
    rows = shape[-2] if len(shape) >= 2 else shape[-1]
    row = torch.arange(rows, dtype=torch.float64).unsqueeze(0)  # [1, rows]
    phase = (
        torch.arange(num_classes, dtype=torch.float64).unsqueeze(1) / num_classes
    )  # [classes, 1]
    wave = epsilon * torch.cos(2 * torch.pi * (row / period + phase))  # [classes, rows]
    if len(shape) >= 2:
        wave = wave.unsqueeze(-1)  # [classes, rows, 1]: constant along each row
        while wave.dim() < len(shape) + 1:
            wave = wave.unsqueeze(1)  # [classes, 1, rows, 1]: the same in every channel
    return wave.expand(num_classes, *shape).float().contiguous()


class Stripes(Poison):
    """Adds the class's stripe pattern to each training input; deterministic, labels unchanged."""

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        # The contract: same shape and order as data.train.x, labels untouched, inside
        # data.value_range. No randomness here; a random method would draw from
        # ctx.generator(salt) so that its output depends on the seed only.
        x = data.train.x
        patterns = stripes(
            data.num_classes, tuple(x.shape[1:]), self.params.epsilon, self.params.period
        ).to(dtype=x.dtype, device=x.device)
        return clamp_to_range(x + patterns[data.train.y], data.value_range)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="example-stripes",
            factory=Stripes,
            params=StripesParams,
            description="toy class-wise horizontal stripes of amplitude epsilon (plugin example)",
            paper="(example, not a published method)",
        )
    ]
