"""SAL estimators: the reference search, and a cheaper estimate validated against it.

SAL of a scored weight θ_l (Definition 1, see docs/sal.md) is the largest change of the probe
loss inside the ball ‖v‖ ≤ ε‖θ_l‖, all other parameters frozen, the model in eval mode:

    SAL = max(max(base, L⁺) − base, base − min(base, L⁻))

where L⁺ is the highest and L⁻ the lowest loss the estimator found in the ball. Estimators
differ only in how they look for L⁺ and L⁻; every one reports both, and the base loss.

Every estimator reads the model without changing it: weights are bound with
`torch.func.functional_call`, the model is put in eval mode for the search and its mode restored.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from harness.sal_prefix import (
    DEFAULT_CACHE_BYTES,
    IndexedSamples,
    LayerObjective,
    LossFn,
    ObjectiveFactory,
    ProbeBatch,
    ProbeBatches,
)

__all__ = [
    "IndexedSamples",
    "NormalizedStepsEstimator",
    "ProbeBatches",
    "ReferenceEstimator",
    "SALEstimator",
    "SALResult",
    "SearchStep",
    "shared_gradient",
    "project_to_ball",
    "sal_value",
]


@dataclass
class SALResult:
    """Per scored layer: SAL, the highest and lowest loss found in the ball; the base loss.

    `paths` says per layer how the loss was evaluated ("cached" or "plain", same values);
    `notes` why a faster path was not taken, for the run's record.
    """

    layers: list[str]
    values: list[float]
    ascent_losses: list[float]
    descent_losses: list[float]
    base_loss: float
    paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: per layer, the search's steps, when the estimator was asked to record them (diagnostics)
    traces: dict[str, list[SearchStep]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchStep:
    """One iteration (reference) or step (normalised steps) of a layer's search, for diagnostics.

    The losses are those of the copies after the step; distances are ‖copy − θ_l‖ / (ε‖θ_l‖),
    so 1 means the copy sits on the edge of the ball.
    """

    ascent_loss: float
    descent_loss: float
    ascent_distance: float
    descent_distance: float


def _step_record(
    up: Tensor, down: Tensor, ascent: Tensor, descent: Tensor, w0: Tensor, radius: float
) -> SearchStep:
    r = max(radius, 1e-30)
    return SearchStep(
        float(up), float(down), float((ascent - w0).norm()) / r, float((descent - w0).norm()) / r
    )


def sal_value(base: float, best_up: float, best_down: float) -> float:
    """The larger of the ascent gain and the descent gain, each floored at zero (the reference)."""
    max_loss = max(base, best_up)
    min_loss = min(base, best_down)
    return max(max_loss - base, base - min_loss)


def project_to_ball(w: Tensor, center: Tensor, radius: float) -> Tensor:
    """Nearest point of the L2 ball around `center`, without a host sync.

    Same arithmetic as `center + v·(radius/‖v‖)` when ‖v‖ > radius and `center + v` otherwise
    (the reference's projection after each pass), chosen on the device.
    """
    v = w - center
    norm = v.norm()
    scale = torch.where(norm > radius, radius / norm, torch.ones_like(norm))
    return center + v * scale


@contextlib.contextmanager
def searching(model: nn.Module) -> Iterator[None]:
    """Eval mode for the search (batch norm on running statistics), the caller's mode restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class SALEstimator(ABC):
    """Estimates SAL of each named weight of a model on a probe."""

    #: the estimator's registered name, recorded with every value it produces
    name: str = ""

    @abstractmethod
    def estimate(
        self,
        model: nn.Module,
        layers: Sequence[str],
        loss_fn: LossFn,
        probe: ProbeBatches,
        base_loss: float | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        on_layer: Callable[[int], None] | None = None,
    ) -> SALResult:
        """SAL of every name in `layers`.

        `base_loss` None means the consistent base: the unperturbed eval-mode loss over
        `probe.eval_batches(-1)`. Passing the epoch's running training loss reproduces the
        reference code. `on_layer(i)` is called after the i-th layer is done.
        """


def _check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    names = dict(model.named_parameters())
    missing = [n for n in layers if n not in names]
    if missing:
        raise KeyError(f"the model has no parameters named {missing}")


class _LayerwiseEstimator(SALEstimator):
    """An estimator that searches each layer's objective on its own, after some shared setup.

    Subclasses give `prepare` (the base loss, and anything shared by the layers) and `search`
    (the best ascent and descent losses of one layer). `cache` lets the objectives use the exact
    prefix cache (`harness.sal_prefix`) where the probe is fixed; `record` keeps every layer's
    search steps in `SALResult.traces` (a host sync per step: diagnostics only).
    """

    #: whether `search` reads training passes (the cache then holds their batches too)
    train_passes = True

    def __init__(
        self, cache: bool = True, cache_bytes: int = DEFAULT_CACHE_BYTES, record: bool = False
    ):
        self.cache = cache
        self.cache_bytes = cache_bytes
        self.record = record

    def estimate(
        self,
        model: nn.Module,
        layers: Sequence[str],
        loss_fn: LossFn,
        probe: ProbeBatches,
        base_loss: float | None = None,
        autocast: contextlib.AbstractContextManager | None = None,
        on_layer: Callable[[int], None] | None = None,
    ) -> SALResult:
        _check_layers(model, layers)
        with searching(model):
            factory = ObjectiveFactory(
                model, loss_fn, probe, autocast, self.cache, self.cache_bytes, self.train_passes
            )
            base, shared = self.prepare(model, layers, loss_fn, probe, factory, autocast, base_loss)
            result = SALResult(list(layers), [], [], [], base)
            for i, objective in enumerate(factory.objectives(layers)):
                trace: list[SearchStep] | None = [] if self.record else None
                up, down = self.search(objective, shared, trace)
                result.values.append(sal_value(base, up, down))
                result.ascent_losses.append(up)
                result.descent_losses.append(down)
                result.paths.append(objective.path)
                if trace is not None:
                    result.traces[objective.name] = trace
                del objective  # frees the layer's cached activations before the next layer
                if on_layer is not None:
                    on_layer(i)
            result.notes = factory.notes
            return result

    @abstractmethod
    def prepare(
        self,
        model: nn.Module,
        layers: Sequence[str],
        loss_fn: LossFn,
        probe: ProbeBatches,
        factory: ObjectiveFactory,
        autocast: contextlib.AbstractContextManager | None,
        base_loss: float | None,
    ) -> tuple[float, Any]:
        """(base loss, what the layers share)."""

    @abstractmethod
    def search(
        self, objective: LayerObjective, shared: Any, trace: list[SearchStep] | None
    ) -> tuple[float, float]:
        """(best ascent loss, best descent loss) of one layer."""


class ReferenceEstimator(_LayerwiseEstimator):
    """The paper's reference search, value for value.

    Derivation: SAL is a maximum over the ball, which the reference code approximates by
    projected SGD on one layer at a time: two copies of θ_l, one climbing the loss with plain SGD
    (learning rate `inner_lr`, no momentum), one descending it; an iteration is one pass of steps
    over the probe's batches, then a projection of each copy back onto the ball, then an
    evaluation of each copy over the whole probe. The copies carry over between iterations, and
    the best ascent and descent losses seen give SAL (`sal_value`).

    Known biases: a local search. With few SGD steps per pass (a small probe at a large batch)
    the copies may not reach the edge of the ball within `iterations`, so SAL is then lower than
    the maximum, and lower than the same model measured on a bigger probe; the steps use raw
    gradients, so a layer with small gradients moves little, however wide its ball. The
    projection comes only after a whole pass, so a copy may leave the ball during the pass.

    Speed, at identical values: when the probe is fixed (unaugmented), the frozen prefix below
    each layer is computed once per sample and only the rest of the network runs per pass
    (`harness.sal_prefix`); losses are summed on the device and the best losses are read back
    once per layer (once per iteration with `convergence_stop`). `cache=False` forces the plain
    path. `convergence_stop` ends a layer's search after an iteration in which neither copy
    improved its best loss; it changes values only where a later iteration would have improved
    again, so it is a recorded setting, off by default.
    """

    name = "reference"

    def __init__(
        self,
        epsilon: float = 0.05,
        iterations: int = 10,
        inner_lr: float = 0.1,
        convergence_stop: bool = False,
        cache: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        record: bool = False,
    ) -> None:
        super().__init__(cache, cache_bytes, record)
        self.epsilon = epsilon
        self.iterations = iterations
        self.inner_lr = inner_lr
        self.convergence_stop = convergence_stop

    def prepare(
        self,
        model: nn.Module,
        layers: Sequence[str],
        loss_fn: LossFn,
        probe: ProbeBatches,
        factory: ObjectiveFactory,
        autocast: contextlib.AbstractContextManager | None,
        base_loss: float | None,
    ) -> tuple[float, Any]:
        """The base loss: as given, or the eval-mode loss over `eval_batches(-1)`."""
        return (factory.base_loss(layers[0]) if base_loss is None else float(base_loss)), None

    def search(
        self, objective: LayerObjective, shared: Any, trace: list[SearchStep] | None = None
    ) -> tuple[float, float]:
        """(best ascent loss, best descent loss) of one layer."""
        w0 = objective.weight
        radius = self.epsilon * float(w0.norm())
        ascent, descent = w0.clone(), w0.clone()
        best_up = torch.tensor(-math.inf, dtype=torch.float64, device=w0.device)
        best_down = torch.tensor(math.inf, dtype=torch.float64, device=w0.device)
        for it in range(self.iterations):
            for batch in objective.train_pass(it):
                ascent = objective.step(ascent, batch, +self.inner_lr)
                descent = objective.step(descent, batch, -self.inner_lr)
            ascent = project_to_ball(ascent, w0, radius)
            descent = project_to_ball(descent, w0, radius)
            batches = objective.eval_pass(it)
            up = objective.mean_loss(ascent, batches)
            down = objective.mean_loss(descent, batches)
            if trace is not None:
                trace.append(_step_record(up, down, ascent, descent, w0, radius))
            improved = bool((up > best_up) | (down < best_down)) if self.convergence_stop else True
            best_up = torch.maximum(best_up, up)
            best_down = torch.minimum(best_down, down)
            if not improved:
                break
        return float(best_up), float(best_down)


class NormalizedStepsEstimator(_LayerwiseEstimator):
    """Normalised steps to the edge of the ball, from one gradient shared by every layer.

    Derivation: for a small ball the loss is nearly linear in v, L(θ_l + v) ≈ L + g_lᵀv, and the
    maximum of a linear function over ‖v‖ ≤ r (r = ε‖θ_l‖) sits on the sphere in the direction of
    the gradient: v* = r·g_l/‖g_l‖. So one gradient g of the probe loss at θ (eval mode, one
    backward pass gives every scored layer's g_l) points each layer to its candidate points
    θ_l ± r·ĝ_l, and two evaluations of the loss over the probe replace the reference's search:

        L⁺ = L(θ_l + r·ĝ_l),  L⁻ = L(θ_l − r·ĝ_l),  SAL = sal_value(base, L⁺, L⁻).

    With `steps` = k > 1, each copy takes k − 1 further steps from its point v_j, each along the
    layer's own normalised gradient h_j of the probe loss at θ_l + v_j (same sign as the copy),
    the j-th step (j = 1, 2, ..., k) of length r/j, each followed by a projection onto the ball:

        v_1 = ±r·ĝ_l,   v_{j} = Π(v_{j−1} ± (r/j)·h_{j−1}/‖h_{j−1}‖),   Π(u) = u·min(1, r/‖u‖).

    From a point on the sphere a step along a gradient that still points outwards leaves the
    ball and the projection brings it back, turned towards the gradient: projected normalised
    gradient ascent (descent) on the ball, which stops where v is parallel to the gradient at
    θ_l + v, the condition for a maximum (minimum) on the sphere. The step lengths shrink so
    the iteration settles: with a constant length r it can jump between two points of the
    sphere for ever (it does on an anisotropic quadratic, see the tests), and steps of total
    length r (r/k each) would never reach the projection at all. L⁺ and L⁻ are the best losses
    over the k points visited, so steps = k never gives less than steps = 1. The loss at a
    point and its gradient come from one forward and backward pass over the probe, so k steps
    cost k forward passes per copy and layer and k − 1 backward passes (on top of the shared
    gradient). The j-th point (j = 1..k) is evaluated on `eval_batches(j − 1)`; the shared
    gradient and the base loss come from `eval_batches(-1)`.

    Known biases: it only evaluates points on the sphere, so where the best point of the ball
    is inside it (the loss turns back within the ball) it misses it; it follows the gradient at
    θ, so where curvature dominates (a saddle, a near-zero gradient) its sphere point can be far
    from the best one. Against the reference on a small probe it is a different estimator, not a
    noisy copy: the reference often stops short of the sphere (docs/sal.md), this one always
    reaches it, so its values are typically larger. β comes from its own clean arm, so a uniform
    scale does not change decisions. The first-order value ε‖θ_l‖·‖g_l‖ (no evaluation at all)
    is not offered: it missed the agreement bar.
    """

    name = "normalized-steps"
    train_passes = False

    def __init__(
        self,
        epsilon: float = 0.05,
        steps: int = 1,
        cache: bool = True,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        record: bool = False,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        super().__init__(cache, cache_bytes, record)
        self.epsilon = epsilon
        self.steps = steps

    def prepare(
        self,
        model: nn.Module,
        layers: Sequence[str],
        loss_fn: LossFn,
        probe: ProbeBatches,
        factory: ObjectiveFactory,
        autocast: contextlib.AbstractContextManager | None,
        base_loss: float | None,
    ) -> tuple[float, Any]:
        """The base loss and every scored layer's gradient, from one pass over `eval_batches(-1)`."""
        loss0, grads = shared_gradient(model, layers, loss_fn, probe.eval_batches(-1), autocast)
        return (loss0 if base_loss is None else float(base_loss)), grads

    def search(
        self, objective: LayerObjective, shared: Any, trace: list[SearchStep] | None = None
    ) -> tuple[float, float]:
        """(best ascent loss, best descent loss) over the points the two copies visit."""
        w0 = objective.weight
        radius = self.epsilon * float(w0.norm())
        grad = shared[objective.name]
        up_dir, down_dir = grad, -grad
        ascent, descent = w0, w0
        best_up = torch.tensor(-math.inf, dtype=torch.float64, device=w0.device)
        best_down = torch.tensor(math.inf, dtype=torch.float64, device=w0.device)
        for j in range(self.steps):
            length = radius / (j + 1)
            ascent = project_to_ball(ascent + _along(up_dir, length), w0, radius)
            descent = project_to_ball(descent + _along(down_dir, length), w0, radius)
            batches = objective.eval_pass(j)
            if j + 1 < self.steps:
                up, up_dir = objective.mean_loss_and_grad(ascent, batches)
                down, down_grad = objective.mean_loss_and_grad(descent, batches)
                down_dir = -down_grad
            else:
                up = objective.mean_loss(ascent, batches)
                down = objective.mean_loss(descent, batches)
            if trace is not None:
                trace.append(_step_record(up, down, ascent, descent, w0, radius))
            best_up = torch.maximum(best_up, up)
            best_down = torch.minimum(best_down, down)
        return float(best_up), float(best_down)


def _along(direction: Tensor, length: float) -> Tensor:
    """`length` along `direction` (zero for a zero direction: no information, no move)."""
    norm = direction.norm()
    return direction * torch.where(norm > 0, length / norm, torch.zeros_like(norm))


def shared_gradient(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: LossFn,
    batches: Sequence[tuple[Tensor, object]],
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[float, dict[str, Tensor]]:
    """Mean probe loss at θ and its gradient in every named weight: one backward pass per batch.

    Eval mode is the caller's (`searching`). Every parameter is bound detached, the named ones
    as fresh leaves that require a gradient, so the model's own `.grad` is never touched.
    """
    scored = set(layers)
    params = {n: p.detach().requires_grad_(n in scored) for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    leaves = [params[n] for n in layers]
    grads = [torch.zeros_like(p) for p in leaves]
    wrapped = [ProbeBatch((x,), y, len(x)) for x, y in batches]
    count = sum(b.size for b in wrapped)
    device = leaves[0].device if leaves else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for batch in wrapped:
        with autocast if autocast is not None else contextlib.nullcontext():
            out = functional_call(model, (params, buffers), batch.inputs)
            loss = loss_fn(out, batch.targets).float()
        for g, part in zip(
            grads, torch.autograd.grad(loss * (batch.size / max(count, 1)), leaves), strict=True
        ):
            g += part
        total = total + loss.detach().double() * batch.size
    return float(total / max(count, 1)), dict(zip(layers, grads, strict=True))
