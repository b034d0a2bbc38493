"""CutOut (DeVries & Taylor 2017): zero one square patch of every training image."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from harness.api import Defence, DefenceRecord, Params, hookimpl

from ._common import require_images

REFERENCE_LENGTH = 16  # px on 32×32 images


class CutoutParams(Params):
    length: int | None = Field(
        default=None,
        ge=2,
        description="side of the square in px; null: 16 px scaled to the image, round(16·min(H, W)/32), at least 2",
    )


def scaled_length(height: int, width: int) -> int:
    """16 px on 32×32, in proportion elsewhere (4 px on 8×8, 32 px on 64×64)."""
    return max(2, round(REFERENCE_LENGTH * min(height, width) / 32))


class Cutout(Defence):
    """Zero one square per image, after crop and flip.

    The hook is `transform_batch`, not `transform_images`: the original applies CutOut as the
    last transform of its pipeline, after random crop and flip, so the square falls anywhere on
    the image the network sees, and a new square is drawn every time an image is seen. The targets
    pass through unchanged.

    As in the original, the square's centre is uniform over the image, it spans `length // 2`
    pixels on either side of the centre (an odd length loses one pixel) and it is clipped at the
    border, so near an edge less than length² pixels are zeroed. Randomness comes from the
    generator only (two integers per image).
    """

    def length_for(self, height: int, width: int) -> int:
        return (
            self.params.length if self.params.length is not None else scaled_length(height, width)
        )

    def transform_batch(
        self, x: Tensor, targets: Tensor, num_classes: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        require_images(x, "cutout")
        b, _, h, w = x.shape
        half = self.length_for(h, w) // 2
        cy = torch.randint(0, h, (b,), generator=generator)
        cx = torch.randint(0, w, (b,), generator=generator)
        y1, y2 = (cy - half).clamp(0, h), (cy + half).clamp(0, h)
        x1, x2 = (cx - half).clamp(0, w), (cx + half).clamp(0, w)
        rows, cols = torch.arange(h), torch.arange(w)
        in_rows = (rows >= y1[:, None]) & (rows < y2[:, None])  # [B, H]
        in_cols = (cols >= x1[:, None]) & (cols < x2[:, None])  # [B, W]
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(device=x.device, dtype=x.dtype), targets


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="cutout",
            factory=Cutout,
            params=CutoutParams,
            description="zero one random square per image after crop/flip (16 px on 32×32, scaled with the image)",
            paper="DeVries & Taylor 2017, 'Improved Regularization of Convolutional Neural Networks with Cutout'",
            deviations=(
                "The square is zeroed in the harness's [0, 1] pixel space, as ISS's CutOut does; "
                "DeVries & Taylor cut after normalisation, which fills with the mean colour.",
                "On images other than 32×32 the default length is 16 px scaled by min(H, W)/32.",
            ),
        )
    ]
