"""Image-level defences: image shortcut squeezing (JPEG, grayscale, bit-depth reduction) and blur.

Liu et al. 2023 (ISS) squeeze each training image *before* crop and flip, which is exactly the
`transform_images` hook point. Each works on float batches `[B, C, H, W]` in [0, 1], keeps the
shape, dtype, device and range, and accepts 1-channel images as well as RGB.

JPEG and posterize are defined on 8-bit images, as the originals ran them (PIL on CIFAR's uint8
pixels): the batch is rounded to the nearest 8-bit level, compressed or posterized with
torchvision, and converted back. JPEG runs on the CPU even when training on a GPU: torchvision's
CUDA encoder (nvJPEG) is a different codec, and the CPU path makes the defended images identical
on every machine (it is the same libjpeg as PIL's; at quality 10 it matches PIL bit for bit).

All four are deterministic, so they ignore the generator they are given.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from harness.api import Defence, DefenceRecord, NoParams, Params, hookimpl

from ._common import from_uint8, require_images, to_uint8

ISS = (
    "Liu, Zhao & Larson 2023, 'Image Shortcut Squeezing: Countering Perturbative "
    "Availability Poisons with Compression' (ICML)"
)
ROUNDING = (
    "The harness's poisons are float images, so they are rounded to the nearest 8-bit level "
    "before the 8-bit operation; the original's poisons were already saved as 8-bit images."
)


class JPEGParams(Params):
    quality: int = Field(default=10, ge=1, le=100, description="JPEG quality factor (ISS: 10)")


class JPEG(Defence):
    """JPEG-compress every training image (and the SAL probe's images) at a fixed quality.

    Quality 10 removes the high-frequency part of most perturbations; it is ISS's choice against
    L∞-bounded poisons. Compression of a 1-channel image is plain grayscale JPEG.
    """

    per_image = True

    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        require_images(x, "jpeg")
        if x.shape[1] not in (1, 3):
            raise ValueError(
                f"defence 'jpeg' needs 1- or 3-channel images; got {x.shape[1]} channels"
            )
        with warnings.catch_warnings():
            # torchvision 0.29 announces the move of its codecs to TorchCodec; the call still works
            warnings.filterwarnings(
                "ignore",
                message=".*encoding capabilities of TorchVision.*",
                category=DeprecationWarning,
            )
            compressed = TF.jpeg(to_uint8(x).cpu(), quality=self.params.quality)
        return from_uint8(compressed, x)


class Grayscale(Defence):
    """Replace each RGB image by its luma (ITU-R 601-2 weights, as PIL), copied to 3 channels.

    The colour channels are where class-wise colour shortcuts live; grayscale is ISS's choice
    against L2-bounded and colour-based poisons. A 1-channel image is already gray: unchanged.
    """

    per_image = True

    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        require_images(x, "grayscale")
        if x.shape[1] == 1:
            return x
        if x.shape[1] != 3:
            raise ValueError(
                f"defence 'grayscale' needs 1- or 3-channel images; got {x.shape[1]} channels"
            )
        return TF.rgb_to_grayscale(x, num_output_channels=3).clamp(0, 1)


class BitDepthParams(Params):
    bits: int = Field(default=2, ge=1, le=8, description="bits kept per channel (ISS: 2)")


class BitDepthReduction(Defence):
    """Posterize: keep the top `bits` bits of every 8-bit channel value (PIL's posterize).

    With 2 bits only the levels 0, 64, 128 and 192 (of 255) remain, so perturbations smaller than
    a quarter of the range mostly vanish; ISS found it effective against low-L0 poisons.
    """

    per_image = True

    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        require_images(x, "bdr")
        return from_uint8(TF.posterize(to_uint8(x), bits=self.params.bits), x)


class BlurParams(Params):
    kernel_size: int = Field(
        default=3, ge=1, description="side of the square Gaussian kernel (odd)"
    )
    sigma: float = Field(
        default=0.1, gt=0, description="standard deviation of the Gaussian, in pixels"
    )

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd")
        return value


class GaussianBlur(Defence):
    """Gaussian low-pass filter of every training image (torchvision's, reflect padding).

    Note that the original default, kernel 3 with σ 0.1, is almost the identity: the outer taps
    weigh exp(-50) ≈ 2e-22, and on the original's 8-bit images it is exactly the identity after
    rounding. It is kept as the original's setting; raise `sigma` (say 1.0) for a real low-pass.
    """

    def transform_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        require_images(x, "blur")
        k, s = self.params.kernel_size, self.params.sigma
        if k > min(x.shape[-2:]):
            raise ValueError(
                f"defence 'blur': kernel_size {k} is larger than the {tuple(x.shape[-2:])} images"
            )
        return TF.gaussian_blur(x, kernel_size=[k, k], sigma=[s, s]).clamp(0, 1)


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="jpeg",
            factory=JPEG,
            params=JPEGParams,
            description="JPEG-compress each training image before crop/flip (ISS; quality 10)",
            paper=ISS,
            deviations=(ROUNDING,),
        ),
        DefenceRecord(
            name="grayscale",
            factory=Grayscale,
            params=NoParams,
            description="grayscale each training image before crop/flip, replicated to 3 channels (ISS)",
            paper=ISS,
            deviations=(
                "The luma is computed in floating point and not rounded to 8 bits as PIL's "
                "Grayscale is.",
            ),
        ),
        DefenceRecord(
            name="bdr",
            factory=BitDepthReduction,
            params=BitDepthParams,
            description="bit-depth reduction (posterize) of each training image before crop/flip (ISS; 2 bits)",
            paper=ISS,
            deviations=(ROUNDING,),
        ),
        DefenceRecord(
            name="blur",
            factory=GaussianBlur,
            params=BlurParams,
            description="Gaussian blur of each training image before crop/flip (kernel 3, σ 0.1)",
            paper="Gaussian-filter baseline of " + ISS + " (GaussianBlur(3, sigma=0.1))",
            deviations=(
                "Blurs the float images and does not round back to 8 bits; at the default "
                "σ 0.1 the original is exactly the identity on 8-bit images, here it changes "
                "pixels by about 1e-22.",
            ),
        ),
    ]
