"""CUDA, convolution-based unlearnable data sets (Sadasivan et al. 2023).

Every class owns one random 3×3 kernel: taps uniform in [0, blur], one random tap set to 1, the
same kernel for every channel. Each image is convolved with its class's kernel (zero padding,
same size) and divided by its own maximum. The class-wise blur is a multiplicative shortcut a
network learns instead of the image content, and since it is not an additive bounded noise it
survives adversarial training with additive budgets; there is no norm bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from harness.api import DataBundle, DataError, Params, Poison, PoisonContext, PoisonRecord, hookimpl

CHUNK = 4096


class CUDAParams(Params):
    blur: float = Field(default=0.3, gt=0, description="upper end of the uniform kernel taps")
    kernel_size: int = Field(
        default=3, gt=0, description="odd kernel side; 3 as the original on CIFAR"
    )
    peak: float = Field(
        default=1.0,
        gt=0,
        description="value of the one random tap (the original's center_parameter)",
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd so that 'same' padding is symmetric")
        return value


def class_conv(x: Tensor, kernels: Tensor) -> Tensor:
    """Each image x[i] ([C, H, W]) convolved with kernels[i] ([k, k]) on every channel.

    Zero padding keeps the size; like torch's conv2d this is a cross-correlation. It is a sum of
    k² shifted copies weighted per image, which vectorises over images without a grouped
    convolution of one group per image.
    """
    k = kernels.shape[-1]
    h, w = x.shape[2:]
    padded = F.pad(x, (k // 2,) * 4)
    out = torch.zeros_like(x)
    for a in range(k):
        for b in range(k):
            out.add_(padded[:, :, a : a + h, b : b + w] * kernels[:, a, b].view(-1, 1, 1, 1))
    return out


class CUDA(Poison):
    """Class-wise random blur, each result divided by its own maximum."""

    def kernels(self, num_classes: int, ctx: PoisonContext) -> Tensor:
        """One kernel per class [classes, k, k], shared by the channels (drawn from the seed)."""
        k = self.params.kernel_size
        g = ctx.generator(salt=41)
        kernels = torch.rand((num_classes, k, k), generator=g) * self.params.blur
        peak = torch.randint(0, k * k, (num_classes,), generator=g)
        kernels.view(num_classes, -1)[torch.arange(num_classes), peak] = self.params.peak
        return kernels

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        if not data.is_image or data.value_range is None:
            raise DataError(
                f"cuda convolves images; data set {data.name!r} has inputs of shape "
                f"{data.input_shape} and value range {data.value_range} (expected [C, H, W] pixels)"
            )
        low, high = data.value_range
        x, y = data.train.x, data.train.y
        kernels = self.kernels(data.num_classes, ctx)
        out = torch.empty_like(x)
        for start in range(0, len(x), CHUNK):
            ctx.progress("convolving", start / len(x))
            part = (x[start : start + CHUNK] - low) / (high - low)  # the original works in [0, 1]
            conv = class_conv(part, kernels[y[start : start + CHUNK]])
            peak = conv.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            out[start : start + CHUNK] = low + (high - low) * (conv / peak).clamp(0.0, 1.0)
        ctx.progress("done", 1.0)
        return out


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="cuda",
            factory=CUDA,
            params=CUDAParams,
            description="convolution-based unlearnable data: one random blur kernel per class, no norm bound",
            paper="Sadasivan, Soltanolkotabi, Feizi: CUDA: Convolution-based Unlearnable Datasets, CVPR 2023",
            deviations=(
                "The result stays in floating point; the original stores it as uint8 "
                "(×255 and truncation), a quantisation of at most 1/255.",
                "The kernel size is not scaled with the image size (3 at any size, the "
                "original's CIFAR setting); set kernel_size for large images.",
                "An all-black image (maximum 0 after convolution) stays black instead of "
                "dividing by zero.",
                "Kernels are drawn from the run seed with torch instead of numpy's global "
                "seed, so they differ from the original's for the same seed number.",
            ),
        )
    ]
