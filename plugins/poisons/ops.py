"""OPS, the one-pixel shortcut (Wu et al. 2022).

Every image of a class gets one and the same pixel set to one and the same extreme colour. The
(position, colour) pair of a class is the one whose colour stands out most consistently from the
class's own pixels at that position, measured by mean(|c − x_pos|) / std(|c − x_pos|) over the
class's images: a large, stable difference is the easiest feature a network can latch onto. A
pair taken by an earlier class is not reused, so every class has its own shortcut.

Colours are the corners of the value range: the 8 binary RGB colours for 3-channel images, and
the two values 0 and 1 (black and white) for 1-channel images (2^C colours for C channels).
|c − x_pos| is summed over channels, which gives the same ranking as the mean (the score is a
ratio). There is no randomness: the result does not depend on the seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.api import DataBundle, DataError, Params, Poison, PoisonContext, PoisonRecord, hookimpl

#: images scored at once; bounds memory to about 8 · chunk · C·H·W floats
CHUNK = 512
#: more channels than this would make 2^C colours unreasonable
MAX_CHANNELS = 8


class OPSParams(Params):
    """OPS has no parameters: L0 = 1 pixel, colours fixed to the corners of the value range."""


def binary_colours(channels: int, low: float, high: float) -> Tensor:
    """All 2^C colours whose channels are each `low` or `high`, as a [2^C, C] tensor."""
    codes = torch.arange(2**channels)
    bits = (codes[:, None] >> torch.arange(channels - 1, -1, -1)) & 1
    return torch.where(bits.bool(), torch.tensor(high), torch.tensor(low)).to(torch.float32)


def class_scores(x: Tensor, colours: Tensor) -> tuple[Tensor, Tensor]:
    """The OPS score of every (colour, position) for one class's images x [n, C, H, W].

    Returns the score mean(d) / std(d) and mean(d), both [n_colours, H·W], over the images,
    with d = Σ_c |colour_c − x_c|.
    Sums are accumulated in float64 over chunks of images, so a 5,000-image class needs no more
    memory than a chunk. A zero spread gives +inf when the colour differs from the pixel (a
    perfectly constant difference, the best possible shortcut) and −inf when it never differs
    (setting that colour would change nothing).
    """
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    total = torch.zeros((len(colours), flat.shape[2]), dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, n, CHUNK):
        part = flat[start : start + CHUNK]  # [m, C, P]
        # [K, m, C, P] -> sum over channels -> [K, m, P]
        d = (colours[:, None, :, None] - part[None]).abs_().sum(dim=2, dtype=torch.float64)
        total += d.sum(dim=1)
        total_sq += (d * d).sum(dim=1)
    mean = total / n
    var = (total_sq / n - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    score = mean / std
    tiny = std <= 1e-6 * mean.abs().clamp_min(1.0)  # float64 cancellation leaves ~1e-8
    score = torch.where(
        tiny & (mean > 1e-9), torch.tensor(float("inf"), dtype=torch.float64), score
    )
    score = torch.where(
        tiny & (mean <= 1e-9), torch.tensor(float("-inf"), dtype=torch.float64), score
    )
    return score, mean


class OPS(Poison):
    """One pixel per class, chosen per class by the OPS score, distinct (position, colour) pairs."""

    def choose(self, data: DataBundle, ctx: PoisonContext) -> dict[int, tuple[int, int, Tensor]]:
        """class → (row, column, colour [C]) for every class that has training images."""
        if not data.is_image or data.value_range is None:
            raise DataError(
                f"ops sets one pixel of each image; data set {data.name!r} has inputs of shape "
                f"{data.input_shape} and value range {data.value_range} (expected [C, H, W] pixels)"
            )
        c, h, w = data.input_shape
        if c > MAX_CHANNELS:
            raise DataError(f"ops scores 2^C colours; {c} channels would be {2**c} colours")
        low, high = data.value_range
        colours = binary_colours(c, low, high)
        k = data.num_classes
        present = [cls for cls in range(k) if bool((data.train.y == cls).any())]
        if len(present) > len(colours) * h * w:
            raise DataError(
                f"ops needs one distinct (position, colour) pair per class: {len(present)} classes "
                f"but only {h}×{w} positions × {len(colours)} colours"
            )
        used = torch.zeros((len(colours), h * w), dtype=torch.bool)
        chosen: dict[int, tuple[int, int, Tensor]] = {}
        for done, cls in enumerate(present):
            ctx.progress(f"scoring class {cls}", done / len(present))
            score, mean = class_scores(data.train.x[data.train.y == cls], colours)
            score[used] = float("-inf")
            # highest score first; among equal scores (several +inf when a pixel never varies)
            # the larger mean difference, then the lowest (colour, position) index, so the
            # choice is reproducible. Used pairs sort last and are never reached (enough pairs).
            by_mean = torch.sort(mean.flatten(), descending=True, stable=True).indices
            by_score = torch.sort(score.flatten()[by_mean], descending=True, stable=True).indices
            best = int(by_mean[by_score[0]])
            colour, pos = divmod(best, h * w)
            used[colour, pos] = True
            chosen[cls] = (pos // w, pos % w, colours[colour])
        ctx.progress("done", 1.0)
        return chosen

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        x = data.train.x.clone()
        for cls, (row, col, colour) in self.choose(data, ctx).items():
            members = data.train.y == cls
            x[members, :, row, col] = colour.to(x.dtype)
        return x


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="ops",
            factory=OPS,
            params=OPSParams,
            description="one-pixel shortcut: one extreme-colour pixel per class, chosen by a mean/std score",
            paper="Wu, Chen, Xie, Huang: One-Pixel Shortcut: on the Learning Preference of Deep Neural Networks, ICLR 2023",
            deviations=(
                "Images with other than 3 channels use the 2^C binary colours of the value range "
                "(black and white for 1-channel images) instead of the 8 RGB colours.",
                "|colour − pixel| is summed over channels; the score is a ratio, so this ranks "
                "pairs exactly as the channel mean would.",
                "A pixel that never varies within a class scores +inf for any colour that "
                "differs from it and −inf for its own value; equal scores go to the larger mean "
                "difference, then to the lowest (colour, position) index.",
                "Pairs are unique as (position, colour): two classes may share a position with "
                "different colours.",
                "Position and colour count do not depend on the image size (L0 = 1 pixel at any size).",
            ),
        )
    ]
