"""The reference SAL estimator on cases whose maximum can be worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from harness.backbone import TaskModel, scored_layers
from harness.sal import compute_sal, project_to_ball


def settings(epsilon: float = 0.05, iterations: int = 10, inner_lr: float = 0.1) -> SimpleNamespace:
    """The reference's settings, as any object with these attributes (the spec's SAL section)."""
    return SimpleNamespace(epsilon=epsilon, iterations=iterations, inner_lr=inner_lr)


def one_weight_model(w0: float) -> nn.Module:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w0)
    return model


def batches_of(x: torch.Tensor, y: torch.Tensor):
    return lambda _: [(x, y)]


def test_quadratic_loss_reaches_the_edge_of_the_ball_uphill():
    # L(w) = (w − 2)², w0 = 1, ε = 0.5 → the ball is [0.5, 1.5].
    # Uphill the edge w = 0.5 gives 2.25 (+1.25); downhill w = 1.5 gives 0.25 (−0.75). SAL = 1.25.
    model = one_weight_model(1.0)
    x, y = torch.ones(1, 1), torch.full((1, 1), 2.0)
    result = compute_sal(
        model,
        ["weight"],
        nn.functional.mse_loss,
        settings(epsilon=0.5, iterations=10, inner_lr=0.1),
        batches_of(x, y),
    )
    assert result.base_loss == pytest.approx(1.0)
    assert result.ascent_losses[0] == pytest.approx(2.25, abs=1e-5)
    assert result.descent_losses[0] == pytest.approx(0.25, abs=1e-5)
    assert result.values[0] == pytest.approx(1.25, abs=1e-5)


def test_concave_loss_takes_the_larger_drop_downhill():
    # L(w) = −(w − 2)²: base −1; uphill to 1.5 gives −0.25 (+0.75), downhill to 0.5 gives −2.25 (−1.25).
    model = one_weight_model(1.0)
    x, y = torch.ones(1, 1), torch.full((1, 1), 2.0)
    result = compute_sal(
        model,
        ["weight"],
        lambda out, t: -nn.functional.mse_loss(out, t),
        settings(epsilon=0.5, iterations=10, inner_lr=0.1),
        batches_of(x, y),
    )
    assert result.values[0] == pytest.approx(1.25, abs=1e-5)
    assert result.descent_losses[0] == pytest.approx(-2.25, abs=1e-5)


def test_linear_loss_gives_epsilon_times_weight_norm_times_gradient_norm():
    # L(w) = mean(w·x) is linear: the maximum over ‖v‖ ≤ ε‖w0‖ is ε‖w0‖‖∇L‖, reached on the boundary.
    torch.manual_seed(0)
    model = nn.Linear(6, 1, bias=False)
    x = torch.randn(8, 6)
    grad = x.mean(0)
    eps = 0.05
    expected = eps * float(model.weight.detach().norm()) * float(grad.norm())
    result = compute_sal(
        model,
        ["weight"],
        lambda out, _: out.mean(),
        settings(epsilon=eps, iterations=10, inner_lr=0.1),
        batches_of(x, torch.zeros(8)),
    )
    assert result.values[0] == pytest.approx(expected, rel=1e-4)


def test_reference_base_loss_option_is_used_as_given():
    # The reference code subtracts the running training loss. With a base above every probed
    # loss, only the downhill side counts: SAL = base − best descent loss.
    model = one_weight_model(1.0)
    x, y = torch.ones(1, 1), torch.full((1, 1), 2.0)
    result = compute_sal(
        model,
        ["weight"],
        nn.functional.mse_loss,
        settings(epsilon=0.5, iterations=10, inner_lr=0.1),
        batches_of(x, y),
        base_loss=10.0,
    )
    assert result.base_loss == 10.0
    assert result.values[0] == pytest.approx(10.0 - 0.25, abs=1e-5)


def test_projection_keeps_points_inside_and_pulls_outside_points_to_the_sphere():
    center = torch.zeros(3)
    inside = torch.tensor([0.1, 0.0, 0.0])
    assert torch.equal(project_to_ball(inside, center, 1.0), inside)
    far = torch.tensor([3.0, 4.0, 0.0])
    assert float(project_to_ball(far, center, 1.0).norm()) == pytest.approx(1.0)


class TinyConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 4

    def forward(self, x):
        return self.features(x)


def test_sal_leaves_the_model_untouched_and_uses_running_batch_norm_statistics():
    torch.manual_seed(0)
    model = TaskModel(TinyConvNet(), nn.Linear(4, 3))
    model.train()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 3, (16,))
    model(x)  # give batch norm some running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = scored_layers(model)
    assert layers == ["backbone.features.0.weight", "head.weight"]  # conv and linear weights only
    result = compute_sal(
        model, layers, nn.functional.cross_entropy, settings(iterations=3), batches_of(x, y)
    )
    assert len(result.values) == 2 and all(v >= 0 and math.isfinite(v) for v in result.values)
    assert model.training  # mode restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with torch.no_grad():
        eval_loss = float(nn.functional.cross_entropy(model(x), y))
    assert result.base_loss == pytest.approx(eval_loss, rel=1e-5)  # the default base is eval mode
