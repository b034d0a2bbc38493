"""L∞ sign-gradient PGD on inputs: the one loop every poison and defence that attacks inputs uses.

Error-minimising noise descends the loss, adversarial examples (adversarial training, REM's inner
attacker, TAP) ascend it; both are the same projected sign-gradient walk on a perturbation δ,
kept inside the L∞ ball of radius ε and, unless asked otherwise, inside the data's value range.
Random starts are drawn on the CPU from the caller's generator, so they are the same on every
device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from harness.poison import clamp_to_range

LossFn = Callable[[Tensor, Tensor], Tensor]
ValueRange = tuple[float, float] | None
Augmentation = Callable[[Tensor, torch.Generator], Tensor]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Parameters stop requiring gradients while inputs are optimised (saves the weight gradients
    every PGD step would otherwise compute), and are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def project_linf(delta: Tensor, x: Tensor, epsilon: float, value_range: ValueRange) -> Tensor:
    """δ clipped to the L∞ ball of radius ε and then to what keeps x + δ in the value range."""
    delta = delta.clamp(-epsilon, epsilon)
    if value_range is None:
        return delta
    return clamp_to_range(x + delta, value_range) - x


def sign_step(delta: Tensor, grad: Tensor, step_size: float, descend: bool) -> Tensor:
    """One sign-gradient step: down the loss (error-minimising, targeted) or up (adversarial)."""
    return delta - step_size * grad.sign() if descend else delta + step_size * grad.sign()


def uniform_start(
    shape: Sequence[int], epsilon: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """U(−ε, ε) noise drawn on the CPU (so the draw is the same on every device)."""
    return ((torch.rand(tuple(shape), generator=generator) * 2 - 1) * epsilon).to(device)


def input_gradient(
    model: nn.Module,
    z: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    augment: Augmentation | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """∇_z loss(model(aug(z)), y) at the (already clamped) input z, and the loss.

    The gradient is taken at the input itself rather than through a clamp of x + δ: a clamp has
    zero gradient at the boundary, which would freeze every pixel sitting at 0 or 1 (most of a
    digit's background) on its first step. Gradients do flow through the augmentation, which
    must be built from differentiable tensor operations.
    """
    z = z.detach().requires_grad_(True)
    inputs = z
    if augment is not None:
        assert generator is not None, "augmentation needs a generator"
        inputs = augment(z, generator)
    loss = loss_fn(model(inputs), y)
    (grad,) = torch.autograd.grad(loss, z)
    return grad, loss.detach()


def sign_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    delta: Tensor,
    *,
    loss_fn: LossFn,
    epsilon: float,
    step_size: float,
    steps: int,
    value_range: ValueRange,
    descend: bool,
    augment: Augmentation | None = None,
    generator: torch.Generator | None = None,
    project_range: bool = True,
) -> Tensor:
    """`steps` projected sign-gradient steps on δ from `delta`, against a fixed model (the caller
    sets its mode). Returns the detached δ.

    Each step evaluates the model at z = clamp(x + δ), steps from z and projects:
    δ ← Π(z − x ∓ α·sign ∇_z). With `project_range` δ is also cut to keep x + δ in the value
    range; without it only the L∞ ball is enforced (EM's class-wise update takes its per-class
    mean over the ε-clipped δ of every sample, as the original does).
    """
    rng = value_range if project_range else None
    delta = project_linf(delta.detach(), x, epsilon, rng)
    with frozen(model):
        for _ in range(steps):
            z = clamp_to_range(x + delta, value_range)
            grad, _ = input_gradient(model, z, y, loss_fn, augment, generator)
            delta = project_linf(sign_step(z - x, grad, step_size, descend), x, epsilon, rng)
    return delta.detach()
