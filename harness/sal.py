"""Sharpness-Aware Learnability of every scored layer, the paper's Definition 1.

The reference estimator (see docs/SAL.md in the shared docs) perturbs one layer's weight at a
time inside the relative L2 ball ‖v‖ ≤ ε‖θ_l‖, with two copies: one climbs the loss with plain
SGD, one descends it. An iteration is one pass of SGD steps over the probe, then a projection
back onto the ball, then an evaluation of each copy over the whole probe. SAL is the larger of
(best ascent loss − base) and (base − best descent loss), each floored at zero.

The model itself is never modified: perturbed weights are passed with `torch.func.functional_call`,
and every other parameter is detached, so backpropagation stops at the layer being probed (for
late layers that is a short walk) and no copy of the model is made per layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

Batches = Sequence[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SALSettings:
    epsilon: float = 0.05
    iterations: int = 10
    inner_lr: float = 0.1


@dataclass
class SALResult:
    layers: list[str]
    values: list[float]
    ascent_losses: list[float]
    descent_losses: list[float]
    base_loss: float


def project_to_ball(w: Tensor, center: Tensor, radius: float) -> Tensor:
    """Nearest point of the L2 ball around `center`: the reference's projection after each pass."""
    v = w - center
    norm = v.norm()
    if norm > radius:
        v = v * (radius / norm)
    return center + v


class _Probe:
    """Evaluates the model's loss with one weight replaced, others frozen, in eval mode."""

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, autocast: contextlib.AbstractContextManager | None
    ):
        self.model = model
        self.loss_fn = loss_fn
        self.params = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = dict(model.named_buffers())
        self.autocast = autocast

    def _ctx(self):
        return self.autocast if self.autocast is not None else contextlib.nullcontext()

    def loss(self, name: str, weight: Tensor, x: Tensor, y: Tensor) -> Tensor:
        with self._ctx():
            out = functional_call(self.model, ({**self.params, name: weight}, self.buffers), (x,))
            return self.loss_fn(out, y).float()

    @torch.no_grad()
    def mean_loss(self, name: str, weight: Tensor, batches: Batches) -> float:
        total, count = 0.0, 0
        for x, y in batches:
            total += float(self.loss(name, weight, x, y)) * len(x)
            count += len(x)
        return total / max(count, 1)

    def step(self, name: str, weight: Tensor, x: Tensor, y: Tensor, lr: float) -> Tensor:
        w = weight.detach().requires_grad_(True)
        loss = self.loss(name, w, x, y)
        (grad,) = torch.autograd.grad(loss, w)
        return (w + lr * grad).detach()


def layer_sal(
    probe: _Probe,
    name: str,
    base: float,
    settings: SALSettings,
    train_batches: Callable[[int], Batches],
    eval_batches: Callable[[int], Batches],
) -> tuple[float, float, float]:
    """(SAL, best ascent loss, best descent loss) of one layer."""
    w0 = probe.params[name]
    radius = settings.epsilon * float(w0.norm())
    ascent, descent = w0.clone(), w0.clone()
    best_up, best_down = -math.inf, math.inf
    for it in range(settings.iterations):
        for x, y in train_batches(it):
            ascent = probe.step(name, ascent, x, y, +settings.inner_lr)
            descent = probe.step(name, descent, x, y, -settings.inner_lr)
        ascent = project_to_ball(ascent, w0, radius)
        descent = project_to_ball(descent, w0, radius)
        batches = eval_batches(it)
        best_up = max(best_up, probe.mean_loss(name, ascent, batches))
        best_down = min(best_down, probe.mean_loss(name, descent, batches))
    max_loss = max(base, best_up)
    min_loss = min(base, best_down)
    return max(max_loss - base, base - min_loss), best_up, best_down


def compute_sal(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: LossFn,
    settings: SALSettings,
    train_batches: Callable[[int], Batches],
    eval_batches: Callable[[int], Batches] | None = None,
    base_loss: float | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    on_layer: Callable[[int], None] | None = None,
) -> SALResult:
    """SAL of each named weight of `model`.

    `train_batches(i)` gives the batches of the i-th SGD pass (shuffled as the caller likes),
    `eval_batches(i)` the batches the i-th evaluation averages over (default: the same data).
    `base_loss` None means the consistent choice: the eval-mode loss of the unperturbed model on
    the probe. Passing the epoch's running training loss reproduces the reference code.
    """
    eval_batches = eval_batches or train_batches
    was_training = model.training
    model.eval()
    try:
        probe = _Probe(model, loss_fn, autocast)
        missing = [n for n in layers if n not in probe.params]
        if missing:
            raise KeyError(f"the model has no parameters named {missing}")
        if base_loss is None:
            first = layers[0]
            base_loss = probe.mean_loss(first, probe.params[first], eval_batches(-1))
        values, ups, downs = [], [], []
        for i, name in enumerate(layers):
            sal, up, down = layer_sal(probe, name, base_loss, settings, train_batches, eval_batches)
            values.append(sal)
            ups.append(up)
            downs.append(down)
            if on_layer is not None:
                on_layer(i)
        return SALResult(list(layers), values, ups, downs, float(base_loss))
    finally:
        model.train(was_training)
