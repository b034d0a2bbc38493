"""Random noise, the baseline every unlearnable-example paper reports."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.api import (
    DataBundle,
    Params,
    Poison,
    PoisonBudget,
    PoisonContext,
    PoisonRecord,
    clamp_to_range,
    hookimpl,
)


class RandomNoiseParams(Params):
    epsilon: float = Field(default=8 / 255, gt=0, le=1, description="L∞ bound of the noise")
    mode: Literal["sample-wise", "class-wise"] = "sample-wise"


class RandomNoise(Poison):
    """Uniform noise in [−ε, ε], one pattern per image (sample-wise) or per class (class-wise).

    Class-wise noise is a shortcut a network can learn from the label alone, which is why it
    already degrades accuracy at 8/255 on CIFAR-10 while sample-wise noise does not.
    """

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        x = data.train.x
        g = ctx.generator(salt=1)
        eps = self.params.epsilon
        if self.params.mode == "sample-wise":
            noise = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
        else:
            patterns = (torch.rand((data.num_classes, *x.shape[1:]), generator=g) * 2 - 1) * eps
            noise = patterns[data.train.y]
        return clamp_to_range(x + noise, data.value_range)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="random-noise",
            budget=PoisonBudget("linf", "epsilon"),
            factory=RandomNoise,
            params=RandomNoiseParams,
            description="uniform L∞ noise, sample-wise or class-wise (the baseline of every UE paper)",
            paper="baseline (e.g. Huang et al. 2021, Table 1)",
        )
    ]
