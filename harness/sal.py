"""Sharpness-Aware Learnability of every scored layer, the paper's Definition 1.

SAL of a weight θ_l is the largest change of the probe loss inside the relative L2 ball
‖v‖ ≤ ε‖θ_l‖, every other parameter frozen, the model in eval mode (docs/sal.md). The
estimators live in `harness.sal_estimators`; the objective they search, and the exact cache of
the frozen prefix that makes the reference cheaper, in `harness.sal_prefix`.

`compute_sal` is the reference estimator as a function, for callers that hold the spec's SAL
settings (anything with `epsilon`, `iterations` and `inner_lr`, such as the spec's `SALSpec`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import nn

from harness.sal_estimators import ReferenceEstimator, SALResult, project_to_ball, sal_value
from harness.sal_prefix import Batches, LossFn, ProbeBatches

__all__ = ["ReferenceSettings", "SALResult", "compute_sal", "project_to_ball", "sal_value"]


class ReferenceSettings(Protocol):
    """The reference's three settings, as the spec's SAL section holds them."""

    epsilon: float
    iterations: int
    inner_lr: float


def compute_sal(
    model: nn.Module,
    layers: Sequence[str],
    loss_fn: LossFn,
    settings: ReferenceSettings,
    train_batches: Callable[[int], Batches],
    eval_batches: Callable[[int], Batches] | None = None,
    base_loss: float | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
    on_layer: Callable[[int], None] | None = None,
    fixed: bool = False,
) -> SALResult:
    """SAL of each named weight of `model` with the reference estimator.

    `train_batches(i)` gives the batches of the i-th SGD pass (shuffled as the caller likes),
    `eval_batches(i)` the batches the i-th evaluation averages over (default: the same data).
    `base_loss` None means the consistent choice: the eval-mode loss of the unperturbed model on
    the probe. Passing the epoch's running training loss reproduces the reference code. `fixed`
    True promises that every call returns the same unaugmented batches, which lets the
    estimator cache the frozen prefix (same values, faster).
    """
    probe = ProbeBatches(train_batches, eval_batches or train_batches, fixed)
    estimator = ReferenceEstimator(settings.epsilon, settings.iterations, settings.inner_lr)
    return estimator.estimate(model, layers, loss_fn, probe, base_loss, autocast, on_layer)


@dataclass(frozen=True)
class SALSettings:
    """Transitional, for `harness/runner.py` only, which still builds one positionally.

    Remove it when the runner passes its `SALSpec` (or an estimator) instead: `compute_sal` takes
    any object with these three attributes.
    """

    epsilon: float = 0.05
    iterations: int = 10
    inner_lr: float = 0.1
