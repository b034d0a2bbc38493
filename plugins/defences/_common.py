"""Helpers shared by the first-party defences (this module registers nothing).

* Image defences receive float batches `[B, C, H, W]` in [0, 1]; the operations the originals ran
  on 8-bit images (JPEG, posterize, TrivialAugment) round to 8 bits and back here, once, in one
  way, so every defence quantises identically.
* Library code that draws from torch's *global* RNG (kornia, torchvision's MixUp/CutMix and
  TrivialAugmentWide) is run inside `global_rng_from(generator)`: the global RNG is forked,
  seeded from one draw of the arm's generator, and restored afterwards. The defence's randomness
  then derives only from the generator the harness checkpoints, so a resumed run is bit-identical
  to an uninterrupted one, and the caller's global RNG is neither read nor disturbed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

SEED_BOUND = 2**63 - 1


def require_images(x: Tensor, who: str) -> None:
    """Refuse inputs that are not image batches, with a message naming the defence."""
    if x.dim() != 4:
        raise ValueError(
            f"defence {who!r} needs image batches [B, C, H, W] with values in [0, 1]; "
            f"got inputs of shape {tuple(x.shape)}"
        )


def require_hard_labels(targets: Tensor, who: str) -> None:
    if targets.dim() != 1 or targets.is_floating_point():
        raise ValueError(
            f"defence {who!r} needs hard integer labels [B]; got {tuple(targets.shape)} "
            f"of {targets.dtype}"
        )


def to_uint8(x: Tensor) -> Tensor:
    """[0, 1] floats to 8-bit levels, rounding to the nearest level (values outside are clipped).

    Rounding, not torchvision's `to_dtype(..., scale=True)` (which floors), so an image that is
    already on the 8-bit grid, as every original's CIFAR images were, comes back unchanged.
    """
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


def from_uint8(u: Tensor, like: Tensor) -> Tensor:
    """8-bit levels back to floats in [0, 1], with the dtype and device of `like`."""
    return u.to(device=like.device, dtype=like.dtype).div(255)


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, SEED_BOUND, (1,), generator=generator))


@contextlib.contextmanager
def global_rng_from(
    generator: torch.Generator, device: torch.device | None = None
) -> Iterator[None]:
    """Run a block whose library calls use the global RNG as if they drew from `generator`.

    The CPU RNG is always forked and seeded; the CUDA RNG of `device` as well when it is a CUDA
    device (kornia samples some parameters on the input's device). One integer is drawn from
    `generator` per call, so each call gets fresh, reproducible randomness.
    """
    seed = draw_seed(generator)
    cuda = device is not None and device.type == "cuda"
    devices: list[int] = []
    if cuda:
        assert device is not None
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield
