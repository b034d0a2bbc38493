"""Batch-level defences: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Both act on the batch after crop and flip (`transform_batch`) and return soft targets: a
`[B, classes]` distribution per sample that sums to one and puts weight on exactly the two mixed
classes (or all of it on one class when both samples share it). The task's loss takes those soft
targets directly. Only training steps see them: the SAL probe and the test set keep hard labels
and unmixed images, so the SAL base loss and the test accuracy mean what they mean for every
other arm (see `harness/runner.py`).

The mixing itself is torchvision's `transforms.v2.MixUp` / `CutMix` with their library defaults
(α = 1.0, so λ ~ Beta(1, 1) = uniform; one λ per batch; each sample is mixed with its predecessor
in the batch, which the harness has already shuffled). torchvision draws λ and the box from the
global RNG, so the call runs inside `global_rng_from(generator)`: the draws derive from the arm's
checkpointed generator and a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torchvision.transforms import v2

from harness.api import Defence, DefenceRecord, Params, hookimpl

from ._common import global_rng_from, require_hard_labels, require_images

LIBRARY = (
    "torchvision's pairing: each sample is mixed with its predecessor in the shuffled batch "
    "rather than with a random permutation of the batch (the same in distribution), with one λ "
    "per batch and on every batch; the ISS/UE benchmark code instead mixes at dataset level, "
    "with probability 0.5, up to twice per sample."
)


class MixParams(Params):
    alpha: float = Field(
        default=1.0, gt=0, description="λ ~ Beta(α, α) (torchvision's default 1.0)"
    )


class MixUp(Defence):
    """Convex combinations of pairs of samples and of their one-hot labels.

    Works on any input shape: non-image inputs (feature vectors) are mixed by the same rule.
    """

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        require_hard_labels(targets, "mixup")
        mix = v2.MixUp(alpha=self.params.alpha, num_classes=num_classes)
        # torchvision checks for an image batch; any other input is mixed through a 4-D view
        images = x if x.dim() == 4 else x.reshape(x.shape[0], 1, 1, -1)
        with global_rng_from(generator):
            mixed, soft = mix(images, targets)
        return mixed.reshape(x.shape), soft


class CutMix(Defence):
    """Paste a random box of each sample's predecessor into it; labels weighted by area.

    The box has area (1 − λ)·H·W before clipping at the border, and λ is recomputed from the
    clipped box, so the label weights are the exact pixel shares. Images only.
    """

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        require_images(x, "cutmix")
        require_hard_labels(targets, "cutmix")
        mix = v2.CutMix(alpha=self.params.alpha, num_classes=num_classes)
        with global_rng_from(generator):
            return mix(x, targets)


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="mixup",
            factory=MixUp,
            params=MixParams,
            description="MixUp of each training batch after crop/flip, soft labels (torchvision defaults, α 1)",
            paper="Zhang, Cisse, Dauphin & Lopez-Paz 2018, 'mixup: Beyond Empirical Risk Minimization' (ICLR)",
            deviations=(LIBRARY,),
        ),
        DefenceRecord(
            name="cutmix",
            factory=CutMix,
            params=MixParams,
            description="CutMix of each training batch after crop/flip, soft labels (torchvision defaults, α 1)",
            paper=(
                "Yun, Han, Oh, Chun, Choe & Yoo 2019, 'CutMix: Regularization Strategy to Train Strong "
                "Classifiers with Localizable Features' (ICCV)"
            ),
            deviations=(LIBRARY,),
        ),
    ]
