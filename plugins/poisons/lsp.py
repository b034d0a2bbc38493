"""LSP, linear separable synthetic patches (Yu et al. 2022).

Each class gets a cluster of points from scikit-learn's `make_classification` with one informative
feature per (channel, patch) of a grid over the image; every training image receives its own
point of its class, upsampled so that each feature value fills one patch, scaled to a fixed L2
norm, added and clipped. The points are linearly separable by class, so a network learns the
patches instead of the images: the shortcut needs no surrogate model and no optimisation.

Sizes are tied to the image size rather than to CIFAR's 32×32: the default grid is 4×4 patches
(patch 8 on 32×32, H/4 × W/4 elsewhere), and the default norm keeps the original per-value
magnitude, sqrt((6/255)² · C·H·W) (≈ 1.30 on 3×32×32).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from harness.api import (
    DataBundle,
    DataError,
    Params,
    Poison,
    PoisonContext,
    PoisonRecord,
    clamp_to_range,
    hookimpl,
)

#: patches per side when `patch_size` is not set: the original's 32 / 8 = 4
DEFAULT_GRID = 4
#: per-value magnitude of the original's norm: L2 = sqrt((6/255)² · 3072) on 3×32×32
PER_VALUE = 6 / 255


class LSPParams(Params):
    patch_size: int | None = Field(
        default=None,
        gt=0,
        description="side of one patch in pixels; None: a 4×4 grid (8 on 32×32, as the original)",
    )
    norm: float | None = Field(
        default=None,
        gt=0,
        description="L2 norm of every perturbation; None: sqrt((6/255)² · C·H·W), ≈ 1.30 on 3×32×32",
    )
    class_sep: float = Field(default=10.0, gt=0, description="make_classification's class_sep")


def _require_images(data: DataBundle, method: str) -> tuple[int, int, int]:
    if not data.is_image or data.value_range is None:
        raise DataError(
            f"{method} perturbs images; data set {data.name!r} has inputs of shape "
            f"{data.input_shape} and value range {data.value_range} (expected [C, H, W] pixels)"
        )
    c, h, w = data.input_shape
    return c, h, w


class LSP(Poison):
    """Sample-wise perturbations drawn from class-separable synthetic points, one per image."""

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patches per column and per row (the last patch is cropped when sizes do not divide)."""
        if self.params.patch_size is None:
            return min(DEFAULT_GRID, height), min(DEFAULT_GRID, width)
        p = self.params.patch_size
        return math.ceil(height / p), math.ceil(width / p)

    def norm(self, data: DataBundle) -> float:
        if self.params.norm is not None:
            return self.params.norm
        c, h, w = data.input_shape
        return math.sqrt(PER_VALUE**2 * c * h * w)

    def perturbations(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        """δ for every training image, each with L2 norm exactly `norm` (before any clipping)."""
        c, h, w = _require_images(data, "lsp")
        gh, gw = self.grid(h, w)
        features = c * gh * gw
        y = data.train.y
        k = data.num_classes
        counts = torch.bincount(y, minlength=k)
        per_class = int(counts.max())
        if k > 2**features:
            raise DataError(
                f"lsp: {k} classes need more than {features} patch features "
                f"({c} channels × {gh}×{gw} patches); use a smaller patch_size"
            )
        from sklearn.datasets import make_classification

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator(salt=11)))
        ctx.progress("sampling separable points", 0.0)
        # k · per_class samples: make_classification then gives every class exactly per_class
        # points (one cluster per class), enough for the largest class
        points, labels = make_classification(
            n_samples=k * per_class,
            n_features=features,
            n_informative=features,
            n_redundant=0,
            n_repeated=0,
            n_classes=k,
            n_clusters_per_class=1,
            class_sep=self.params.class_sep,
            flip_y=0.0,
            random_state=seed,
        )
        points_t = torch.as_tensor(points, dtype=torch.float64)
        labels_t = torch.as_tensor(labels)
        chosen = torch.empty((len(y), features), dtype=torch.float64)
        for cls in range(k):
            members = torch.nonzero(y == cls).flatten()
            if len(members):
                pool = points_t[labels_t == cls]
                chosen[members] = pool[: len(members)]
        ctx.progress("upsampling patches", 0.5)
        grid = chosen.reshape(len(y), c, gh, gw)
        if self.params.patch_size is None:
            delta = F.interpolate(grid, size=(h, w), mode="nearest")
        else:
            p = self.params.patch_size
            delta = grid.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)[:, :, :h, :w]
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (self.norm(data) / norms).view(-1, 1, 1, 1)
        ctx.progress("done", 1.0)
        return delta.to(torch.float32)

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        return clamp_to_range(data.train.x + self.perturbations(data, ctx), data.value_range)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="lsp",
            factory=LSP,
            params=LSPParams,
            description="linear separable synthetic patches: one class-separable patch pattern per image, fixed L2 norm",
            paper="Yu, Zhang, Chen, Yin, Liu: Availability Attacks Create Shortcuts, KDD 2022",
            deviations=(
                "The default patch size is a quarter of the image side, so the grid stays 4×4 "
                "patches at any size (8 on 32×32 as in the original); when the side is not a "
                "multiple of 4, nearest-neighbour upsampling makes patches differ by one pixel.",
                "The default L2 norm is scaled with the number of pixel values, "
                "sqrt((6/255)² · C·H·W), which is the original 1.30 on 3×32×32.",
                "make_classification is asked for classes × (largest class size) points so every "
                "class has one point per image even when classes are unbalanced; its "
                "random_state comes from the run seed.",
                "One feature per channel and patch (C × grid cells), so 1-channel images get "
                "16 features instead of 48.",
            ),
        )
    ]
