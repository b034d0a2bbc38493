"""Shared machinery of the surrogate-based poisons (EM, REM, TAP, HYPO, DeepConfuse).

Every one of those methods trains a network on (possibly perturbed) data and runs sign-gradient
PGD against it (`harness.api.sign_pgd`, shared with adversarial training). Keeping the pieces
here means the budgets, the projections and the randomness behave identically across methods:

* the surrogate is built through `ctx.build_model`, so it is any registered backbone with the
  track's task head, initialised under a seed derived from `ctx.seed` (inside `fork_rng`, so a
  poison neither depends on nor disturbs the caller's global RNG state);
* every random draw (batch order, random starts, augmentation) comes from a `torch.Generator`
  obtained from `ctx.generator(salt)`, and is drawn on the CPU, so a given seed gives the same
  poison bit for bit on the CPU and the same random choices on any device;
* perturbations are kept inside the L∞ ball *and* the data's value range after every step,
  instead of being rounded through uint8 (which would drop negative values).

This module registers nothing (its name starts with an underscore).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from harness.api import (
    DataBundle,
    LossFn,
    Params,
    PoisonContext,
    take_targets,
)

# --------------------------------------------------------------------------------------------
# parameters


class SurrogateParams(Params):
    """The network a poison is optimised against, and how it is trained.

    The defaults are the UE literature's surrogate: a CIFAR-form ResNet-18 trained with SGD
    0.1 / momentum 0.9 / weight decay 5e-4. Methods whose original used another batch size or
    no gradient clipping subclass this model and change only those defaults, so that a spec
    overriding one field (say the backbone) keeps the method's other defaults.
    """

    backbone: str = Field(default="resnet18", description="registered backbone of the surrogate")
    backbone_params: dict[str, Any] = Field(default_factory=dict, description="its parameters")
    lr: float = Field(default=0.1, gt=0, description="SGD learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(default=5e-4, ge=0, description="SGD weight decay")
    batch_size: int = Field(default=512, gt=0, description="surrogate training batch size")
    grad_clip: float | None = Field(default=5.0, gt=0, description="gradient-norm clip; null: none")


class UnclippedSurrogateParams(SurrogateParams):
    """ResNet-18, SGD 0.1 / 0.9 / 5e-4, batch 128, no gradient clipping (the scripts of REM, TAP and
    HYPO's authors)."""

    batch_size: int = Field(default=128, gt=0, description="surrogate training batch size")
    grad_clip: float | None = Field(
        default=None, gt=0, description="gradient-norm clip; null: none"
    )


class AugmentParams(Params):
    """The training augmentation the surrogate sees (and, for TAP and REM, the attack's EOT).

    CIFAR's standard recipe is a random crop after 4 px of zero padding and a horizontal flip;
    `padding: null` scales the 4 px with the image (round(4·H/32), at least 1: 1 px on 8×8).
    """

    enabled: bool = Field(default=True, description="false: no augmentation at all")
    padding: int | None = Field(
        default=None, ge=0, description="crop padding in px; null: 4 px scaled to the image size"
    )
    flip: bool = Field(default=True, description="random horizontal flip with probability 0.5")


# --------------------------------------------------------------------------------------------
# seeding


def derived_seed(ctx: PoisonContext, salt: int) -> int:
    """The seed `ctx.generator(salt)` starts from: one integer per (run seed, purpose)."""
    return int(ctx.generator(salt).initial_seed())


@contextlib.contextmanager
def seeded(ctx: PoisonContext, salt: int) -> Iterator[None]:
    """Run a block under a global torch seed derived from `ctx.seed`, restoring the RNG after.

    Layer initialisation (and any dropout in a third-party backbone) draws from the global RNG,
    which the harness does not own; forking it makes the poison reproducible and side-effect free.
    """
    devices: list[int] = []
    if ctx.device.type == "cuda":
        devices = [
            ctx.device.index if ctx.device.index is not None else torch.cuda.current_device()
        ]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(ctx, salt))
        yield


def build_surrogate(ctx: PoisonContext, params: SurrogateParams, salt: int) -> nn.Module:
    """A freshly, deterministically initialised surrogate on `ctx.device`."""
    with seeded(ctx, salt):
        model = ctx.build_model(params.backbone, dict(params.backbone_params))
    return model.to(ctx.device)


def make_sgd(model: nn.Module, params: SurrogateParams) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
    )


# --------------------------------------------------------------------------------------------
# batches and training


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = False
) -> list[Tensor]:
    """One pass over `n` samples: in order without a generator, shuffled with one.

    `drop_last` drops the short final batch only when there is at least one full batch, so a
    tiny data set still yields a batch.
    """
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


class BatchStream:
    """An endless stream of index batches, starting a new pass when one is used up.

    The bi-level methods (EM, REM) interleave a few training batches with perturbation updates,
    so they need "the next batch" rather than whole epochs, as the originals' `next(iterator)`.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        self.n, self.batch_size, self.generator, self.drop_last = (
            n,
            batch_size,
            generator,
            drop_last,
        )
        self._pending: list[Tensor] = []

    def next(self) -> Tensor:
        if not self._pending:
            self._pending = batch_indices(self.n, self.batch_size, self.generator, self.drop_last)
        return self._pending.pop(0)


def train_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None = None,
) -> float:
    """One SGD step in training mode; returns the batch loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


def train_surrogate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    params: SurrogateParams,
    *,
    epochs: int,
    generator: torch.Generator,
    augment: Augment | None = None,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    progress: Callable[[str, float], None] | None = None,
) -> nn.Module:
    """Train `model` on (x, y) for `epochs` shuffled epochs with SGD from `params`.

    `milestones` are fractions of the run at which the learning rate is multiplied by `gamma`
    (e.g. (2/3, 5/6) for 100/125 of 150 epochs), so a shortened run keeps the schedule's shape.
    """
    optimizer = make_sgd(model, params)
    marks = sorted({max(1, round(m * epochs)) for m in milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=marks, gamma=gamma)
    for epoch in range(epochs):
        for idx in batch_indices(len(x), params.batch_size, generator):
            idx = idx.to(x.device)
            xb = x[idx] if augment is None else augment(x[idx], generator)
            train_step(model, xb, y[idx], loss_fn, optimizer, params.grad_clip)
        scheduler.step()
        if progress is not None:
            progress(f"surrogate epoch {epoch + 1}/{epochs}", (epoch + 1) / max(epochs, 1))
    model.eval()
    return model


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """Arg-max class of every input, in eval mode."""
    model.eval()
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]
    )


def classification_error(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> float:
    return float((predictions(model, x, batch_size) != y).float().mean())


@torch.no_grad()
def crafting_loss(
    model: nn.Module, x: Tensor, targets: Tensor | dict, loss_fn: LossFn, batch_size: int
) -> float:
    """Mean loss of `model` (eval mode) over x, for crafting tasks that have no class error."""
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        index = torch.arange(start, min(start + batch_size, len(x)), device=x.device)
        total += float(loss_fn(model(x[index]), take_targets(targets, index))) * len(index)
    return total / max(len(x), 1)


# --------------------------------------------------------------------------------------------
# differentiable augmentation


def scaled_padding(size: int, at_32: int = 4) -> int:
    """A padding given for 32×32 images, scaled to `size` (4 px → 1 px on 8×8), at least 1."""
    return max(1, round(at_32 * size / 32))


class Augment:
    """Per-sample random crop (zero padding + shift) and horizontal flip of a batch.

    Built only from padding, indexing and `torch.where`, so gradients flow back to the
    perturbation: TAP's differentiable augmentation and REM's expectation over transformations
    need that. Offsets and flips are drawn from the given CPU generator, one per sample.
    """

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding = padding
        self.flip = flip

    @classmethod
    def from_params(cls, params: AugmentParams, data: DataBundle) -> Augment | None:
        if not params.enabled:
            return None
        if not data.is_image:
            raise ValueError(
                f"augmentation needs image inputs [C, H, W], got shape {data.input_shape}"
            )
        padding = (
            params.padding
            if params.padding is not None
            else scaled_padding(min(data.input_shape[1:]))
        )
        return cls(padding, params.flip)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            padded = nn.functional.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[batch, channel, rows, cols]
        if self.flip:
            flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        return x
