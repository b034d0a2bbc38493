"""SAL estimators on losses whose answers are known by hand, and the exact prefix cache.

The models here are tiny on purpose: a "model" whose output is its own weight turns the loss
into any function of that weight we like (a bowl, a ridge), so the maximum over the ball can be
worked out on paper; a small residual network and the CIFAR ResNet-18 check that the cached
frozen prefix gives the plain reference's values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from harness.backbone import TaskModel, scored_layers
from harness.context import BuildContext
from harness.sal_agreement import agreement, jaccard, spearman
from harness.sal_estimators import (
    NormalizedStepsEstimator,
    ProbeBatches,
    ReferenceEstimator,
    SALEstimator,
)
from harness.sal_prefix import NoSplit, split_at, trace

# --- a weight whose loss we choose ----------------------------------------------------------------


class Weight(nn.Module):
    """Outputs its weight for every sample, so loss_fn(output) is a function of the weight alone."""

    def __init__(self, w0: list[float]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(w0))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight.expand(len(x), -1)


def bowl(scale: list[float]):
    """L(w) = ½ Σ_i a_i w_i²: a quadratic bowl centred at zero."""
    a = torch.tensor(scale)
    return lambda out, _: 0.5 * (out**2 * a).sum(-1).mean()


def one_batch_probe() -> ProbeBatches:
    x, y = torch.zeros(1, 1), torch.zeros(1)
    return ProbeBatches(lambda _: [(x, y)], lambda _: [(x, y)], fixed=True)


def test_an_isotropic_bowl_gives_every_estimator_the_exact_edge_of_the_ball():
    # L(w) = ‖w‖², w0 = (3, 4), ε = 0.2: the ball has radius 1 around a point at distance 5
    # from the bottom. Uphill the farthest point gives 6² = 36, downhill the nearest 4² = 16,
    # base 25: SAL = max(36 − 25, 25 − 16) = 11, for the reference and for one normalised step.
    model = Weight([3.0, 4.0])
    for estimator in (ReferenceEstimator(epsilon=0.2), NormalizedStepsEstimator(epsilon=0.2)):
        result = estimator.estimate(model, ["weight"], bowl([2.0, 2.0]), one_batch_probe())
        assert result.base_loss == pytest.approx(25.0)
        assert result.ascent_losses[0] == pytest.approx(36.0, rel=1e-5)
        assert result.descent_losses[0] == pytest.approx(16.0, rel=1e-5)
        assert result.values[0] == pytest.approx(11.0, rel=1e-5)


def test_one_normalised_step_lands_where_the_gradient_points():
    # L(w) = ½(w₁² + 9w₂²) at w0 = (1, 0.3), ε = 0.5: g = (1, 2.7), r = 0.5·‖w0‖.
    # One step evaluates L(w0 ± r·g/‖g‖), which is not the best point of the sphere.
    w0 = np.array([1.0, 0.3])
    a = np.array([1.0, 9.0])
    r = 0.5 * np.linalg.norm(w0)
    g = a * w0
    up = 0.5 * np.sum(a * (w0 + r * g / np.linalg.norm(g)) ** 2)
    down = 0.5 * np.sum(a * (w0 - r * g / np.linalg.norm(g)) ** 2)
    base = 0.5 * np.sum(a * w0**2)
    result = NormalizedStepsEstimator(epsilon=0.5).estimate(
        Weight(w0.tolist()), ["weight"], bowl(a.tolist()), one_batch_probe()
    )
    assert result.ascent_losses[0] == pytest.approx(up, rel=1e-5)
    assert result.descent_losses[0] == pytest.approx(down, rel=1e-5)
    assert result.values[0] == pytest.approx(max(up - base, base - down), rel=1e-5)


def test_more_normalised_steps_climb_to_the_best_point_of_the_sphere():
    # Same bowl. The true extremes over the ball (a convex function: both on the sphere) come
    # from a fine sweep of the circle; each extra step gets closer and never loses ground.
    w0, a = [1.0, 0.3], [1.0, 9.0]
    r = 0.5 * math.hypot(*w0)
    phi = torch.linspace(0, 2 * math.pi, 400_001, dtype=torch.float64)
    circle = torch.tensor(w0, dtype=torch.float64) + r * torch.stack([phi.cos(), phi.sin()], 1)
    on_circle = 0.5 * (circle**2 * torch.tensor(a, dtype=torch.float64)).sum(1)
    best_up, best_down = float(on_circle.max()), float(on_circle.min())
    ups, downs = [], []
    for steps in (1, 2, 3, 5, 40):
        result = NormalizedStepsEstimator(epsilon=0.5, steps=steps).estimate(
            Weight(w0), ["weight"], bowl(a), one_batch_probe()
        )
        ups.append(result.ascent_losses[0])
        downs.append(result.descent_losses[0])
    assert ups == sorted(ups) and downs == sorted(downs, reverse=True)
    assert ups[0] < best_up - 0.05 and downs[0] > best_down + 0.3  # one step is visibly short
    assert ups[-1] == pytest.approx(best_up, rel=1e-3)
    assert downs[-1] == pytest.approx(best_down, rel=1e-3)


def test_normalised_steps_on_a_linear_loss_give_epsilon_times_weight_norm_times_gradient_norm():
    torch.manual_seed(0)
    model = nn.Linear(6, 1, bias=False)
    x = torch.randn(8, 6)
    expected = 0.05 * float(model.weight.detach().norm()) * float(x.mean(0).norm())
    probe = ProbeBatches(lambda _: [(x, None)], lambda _: [(x, None)], fixed=True)
    result = NormalizedStepsEstimator().estimate(
        model, ["weight"], lambda out, _: out.mean(), probe
    )
    assert result.values[0] == pytest.approx(expected, rel=1e-4)


def test_normalised_steps_need_at_least_one_step():
    with pytest.raises(ValueError, match="at least 1"):
        NormalizedStepsEstimator(steps=0)


def test_the_reference_reaches_the_edge_and_records_its_iterations():
    model = Weight([3.0, 4.0])
    result = ReferenceEstimator(epsilon=0.2, iterations=4, record=True).estimate(
        model, ["weight"], bowl([2.0, 2.0]), one_batch_probe()
    )
    steps = result.traces["weight"]
    assert len(steps) == 4
    assert all(s.ascent_distance == pytest.approx(1.0) for s in steps)  # on the sphere
    assert steps[-1].ascent_loss == pytest.approx(36.0, rel=1e-5)


def test_the_convergence_stop_ends_a_search_that_no_longer_improves():
    # On the bowl both copies sit on the sphere after the first pass; the second iteration
    # improves neither, so the search stops there with the same value.
    calls = []
    x, y = torch.zeros(1, 1), torch.zeros(1)

    def eval_batches(i: int):
        calls.append(i)
        return [(x, y)]

    probe = ProbeBatches(lambda _: [(x, y)], eval_batches, fixed=False)
    full = ReferenceEstimator(epsilon=0.2).estimate(
        Weight([3.0, 4.0]), ["weight"], bowl([2.0, 2.0]), probe
    )
    calls.clear()
    stopped = ReferenceEstimator(epsilon=0.2, convergence_stop=True).estimate(
        Weight([3.0, 4.0]), ["weight"], bowl([2.0, 2.0]), probe
    )
    assert calls[:2] == [-1, 0] and len(calls) <= 4  # the base, then 2 or 3 iterations of ten
    # (the second may still "improve" by rounding: the projection lands within an ulp of the first)
    assert stopped.values == pytest.approx(full.values, rel=1e-6)


# --- the exact prefix cache ---------------------------------------------------------------------------


class Block(nn.Module):
    """A residual block: two 3×3 convolutions, and a 1×1 projection on the skip path when the
    shape changes (else the block input itself is added back)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, a projection block, an identity block, pooled head: 7 scored layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()
        )
        self.blocks = nn.Sequential(Block(4, 8, 2), Block(8, 8, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def trained_statistics(model: nn.Module, x: Tensor) -> nn.Module:
    """Batch norm with running statistics of its own (eval mode then differs from train mode)."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.1 * torch.randn_like(x))
    return model


def shuffled_probe(x: Tensor, targets, batch: int, seed: int = 0) -> ProbeBatches:
    """The runner's kind of probe: fixed samples, reshuffled SGD passes, evaluation in order."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    return ProbeBatches.from_samples(
        x,
        targets,
        lambda _: list(torch.randperm(n, generator=g)[: n - n % batch].split(batch)),
        lambda _: list(torch.arange(n).split(batch)),
    )


def assert_close_results(a, b, rel: float = 1e-5) -> None:
    for name in ("values", "ascent_losses", "descent_losses"):
        got, want = np.array(getattr(a, name)), np.array(getattr(b, name))
        scale = np.maximum(np.abs(want), 1e-12)
        assert np.max(np.abs(got - want) / scale) <= rel, name


def test_the_split_of_a_residual_block_caches_what_the_skip_path_adds_back():
    graph = trace(TinyResNet().eval())
    frontier = {
        name: [n.name for n in split_at(graph, name).frontier]
        for name in scored_layers(TinyResNet())
    }
    assert frontier["stem.0.weight"] == ["x"]  # the first layer: only the input is fixed
    # Node names are torch.fx's: relu_1 is the output of block 0 (the input of block 1), relu
    # and relu_2 the inner activations of blocks 0 and 1.
    # The identity block: its first convolution reads the block input, as its skip does; its
    # second reads its inner activation, and the block input still comes in through the skip.
    assert frontier["blocks.1.conv1.weight"] == ["relu_1"]
    assert frontier["blocks.1.conv2.weight"] == ["relu_1", "relu_2"]
    # The projection block: the projection's output does not depend on the convolutions of the
    # main path, so it is cached as such; probing the projection caches the main path's output.
    assert frontier["blocks.0.conv1.weight"] == ["stem_2", "blocks_0_shortcut_1"]
    assert frontier["blocks.0.conv2.weight"] == ["relu", "blocks_0_shortcut_1"]
    assert frontier["blocks.0.shortcut.0.weight"] == ["stem_2", "blocks_0_bn2"]
    assert frontier["head.weight"] == ["mean"]  # the pooled features


@pytest.mark.parametrize("shuffled", [False, True], ids=["same-batches", "reshuffled-samples"])
def test_the_cached_reference_equals_the_plain_reference_on_a_residual_model(shuffled):
    torch.manual_seed(0)
    x, y = torch.rand(24, 3, 8, 8), torch.randint(0, 5, (24,))
    model = trained_statistics(TinyResNet(), x)
    layers = scored_layers(model)

    def probe() -> ProbeBatches:
        if shuffled:
            return shuffled_probe(x, y, batch=8)
        batches = [(x[:12], y[:12]), (x[12:], y[12:])]
        return ProbeBatches(lambda _: batches, lambda _: batches, fixed=True)

    plain = ReferenceEstimator(iterations=3, cache=False).estimate(
        model, layers, nn.functional.cross_entropy, probe()
    )
    cached = ReferenceEstimator(iterations=3).estimate(
        model, layers, nn.functional.cross_entropy, probe()
    )
    assert plain.paths == ["plain"] * 7
    assert cached.paths == ["cached"] * 7, cached.notes
    assert_close_results(cached, plain)
    ns_plain = NormalizedStepsEstimator(steps=2, cache=False).estimate(
        model, layers, nn.functional.cross_entropy, probe()
    )
    ns_cached = NormalizedStepsEstimator(steps=2).estimate(
        model, layers, nn.functional.cross_entropy, probe()
    )
    assert_close_results(ns_cached, ns_plain)


def test_the_cached_reference_equals_the_plain_reference_on_cifar_resnet18():
    from harness_plugins.backbones import CifarResNet18, ResNetParams

    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 10, (8,))
    model = trained_statistics(
        TaskModel(
            CifarResNet18(ResNetParams(width=4), BuildContext(input_shape=(3, 8, 8))),
            nn.Linear(32, 10),
        ),
        x,
    )
    layers = scored_layers(model)
    assert len(layers) == 21
    plain = ReferenceEstimator(iterations=2, cache=False).estimate(
        model, layers, nn.functional.cross_entropy, shuffled_probe(x, y, batch=4)
    )
    cached = ReferenceEstimator(iterations=2).estimate(
        model, layers, nn.functional.cross_entropy, shuffled_probe(x, y, batch=4)
    )
    assert cached.paths == ["cached"] * 21, cached.notes
    assert_close_results(cached, plain)


class Ungraphable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = -h
        return self.b(h)


class WritesIntoItsInput(nn.Module):
    """`relu_` rewrites h in place after the sum has read it: probing `b`, h would be cached,
    and the cached h would be the rewritten one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        out = self.b(x) + h
        return out + torch.relu_(h)


#: Table 3's timm backbones, tiny; which of their scored layers the cache cannot take and why
TIMM_TABLE3 = {
    "resnet50": ({"width": 4}, 0),
    "senet18": ({"width": 4}, 0),
    # a ViT's qkv projection is split into q, k and v by a reshape that mixes samples' tokens
    # with the batch axis, so the value after it is not per-sample: those layers run plain
    "vit": ({"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 4}, 2),
}


@pytest.mark.parametrize("name", TIMM_TABLE3)
def test_table_3s_timm_backbones_take_the_cached_path_and_equal_the_plain_one(name):
    # torch.fx once failed on their wrapper (it branched on the features' rank), so Table 3's
    # runs measured SAL on the plain path, at 1.8 times the cached path's cost
    from harness.pluginmanager import get_components

    params, plain_layers = TIMM_TABLE3[name]
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,))
    backbone = get_components().build(
        "backbone", name, params, BuildContext(input_shape=(3, 16, 16))
    )
    model = trained_statistics(TaskModel(backbone, nn.Linear(backbone.num_features, 10)), x)
    layers = scored_layers(model)
    cached = ReferenceEstimator(iterations=2).estimate(
        model, layers, nn.functional.cross_entropy, shuffled_probe(x, y, batch=4)
    )
    assert cached.paths.count("plain") == plain_layers, cached.notes
    plain = ReferenceEstimator(iterations=2, cache=False).estimate(
        model, layers, nn.functional.cross_entropy, shuffled_probe(x, y, batch=4)
    )
    # The two paths sum in different orders (SENet's gates most), and the search's SGD steps
    # carry the float32 difference on: the losses agree to 1e-4 of themselves, and SAL, their
    # difference, to 1e-4 of the loss (relative to itself it can differ more where it is ~1e-6).
    for losses in ("ascent_losses", "descent_losses"):
        got, want = np.array(getattr(cached, losses)), np.array(getattr(plain, losses))
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=losses)
    np.testing.assert_allclose(cached.values, plain.values, rtol=0, atol=1e-4 * plain.base_loss)


@pytest.mark.parametrize(
    ("model", "reason"),
    [(Ungraphable(), "cannot trace"), (WritesIntoItsInput(), "writes in place")],
    ids=["untraceable", "in-place"],
)
def test_models_the_cache_cannot_handle_fall_back_to_the_plain_path_with_the_reason(model, reason):
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    probe = ProbeBatches(lambda _: [(x, None)], lambda _: [(x, None)], fixed=True)
    loss = lambda out, _: out.pow(2).mean()  # noqa: E731
    layers = ["a.weight", "b.weight"]
    plain = ReferenceEstimator(iterations=2, cache=False).estimate(model, layers, loss, probe)
    result = ReferenceEstimator(iterations=2).estimate(model, layers, loss, probe)
    assert "plain" in result.paths
    assert any(reason in note for note in result.notes), result.notes
    assert result.values == plain.values


class MixesSamples(nn.Module):
    """Scales by a mean over the whole batch: a sample's activations depend on its batch mates."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(h) * h.mean()


def test_a_value_that_mixes_samples_is_not_gathered_per_sample():
    # Reshuffled passes would need h.mean() of each new batch: probing b takes the plain path.
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    model = MixesSamples()
    loss = lambda out, _: out.pow(2).mean()  # noqa: E731
    layers = ["a.weight", "b.weight"]
    plain = ReferenceEstimator(iterations=2, cache=False).estimate(
        model, layers, loss, shuffled_probe(x, None, 4)
    )
    result = ReferenceEstimator(iterations=2).estimate(
        model, layers, loss, shuffled_probe(x, None, 4)
    )
    assert result.paths == ["cached", "plain"]
    assert any("per-sample" in note for note in result.notes), result.notes
    assert_close_results(result, plain)


def test_split_refuses_a_parameter_the_graph_never_reads():
    with pytest.raises(NoSplit, match="reads"):
        split_at(trace(TinyResNet().eval()), "not.a.weight")


def test_an_augmented_probe_takes_the_plain_path_and_says_so():
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 5, (8,))
    probe = ProbeBatches(
        lambda _: [(x + 0.01 * torch.randn_like(x), y)], lambda _: [(x, y)], fixed=False
    )
    result = ReferenceEstimator(iterations=1).estimate(
        TinyResNet(), ["head.weight"], nn.functional.cross_entropy, probe
    )
    assert result.paths == ["plain"]
    assert any("augmented" in note for note in result.notes)


# --- what every estimator promises --------------------------------------------------------------------

ESTIMATORS = {  # each with the exact cache on or off
    "reference": lambda cache: ReferenceEstimator(iterations=2, cache=cache),
    "normalized-steps": lambda cache: NormalizedStepsEstimator(steps=2, cache=cache),
}


@pytest.mark.parametrize("cache", [True, False], ids=["cached", "plain"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_an_estimator_never_modifies_the_model(name, cache):
    estimator: SALEstimator = ESTIMATORS[name](cache)
    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 5, (16,))
    model = trained_statistics(TinyResNet(), x)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = estimator.estimate(
        model, scored_layers(model), nn.functional.cross_entropy, shuffled_probe(x, y, 8)
    )
    assert all(v >= 0 and math.isfinite(v) for v in result.values)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


class TwoHeads(nn.Module):
    """A shared trunk and two heads, with a dict of outputs as multi-task models have."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Linear(8, 3), "b": nn.Linear(8, 1)})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.trunk(x)
        return {name: head(h) for name, head in self.heads.items()}


def two_task_loss(out: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(out["a"], targets["a"]) + nn.functional.mse_loss(
        out["b"].squeeze(1), targets["b"]
    )


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_dict_targets_pass_through_to_the_loss(name):
    torch.manual_seed(0)
    x = torch.randn(20, 6)
    targets = {"a": torch.randint(0, 3, (20,)), "b": torch.randn(20)}
    model = TwoHeads()
    layers = scored_layers(model)
    result = ESTIMATORS[name](True).estimate(
        model, layers, two_task_loss, shuffled_probe(x, targets, batch=10)
    )
    plain = ESTIMATORS[name](False).estimate(
        model, layers, two_task_loss, shuffled_probe(x, targets, batch=10)
    )
    assert result.paths == ["cached"] * 3, result.notes
    assert result.layers == ["trunk.0.weight", "heads.a.weight", "heads.b.weight"]
    assert all(v > 0 for v in result.values)
    assert_close_results(result, plain)


def test_probing_one_head_caches_the_other_heads_output():
    split = split_at(trace(TwoHeads().eval()), "heads.a.weight")
    assert [n.name for n in split.frontier] == ["trunk_1", "heads_b"]


# --- agreement metrics -----------------------------------------------------------------------------------


def test_spearman_uses_average_ranks_for_ties_and_is_undefined_for_a_constant_vector():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): ρ = 4.5 / sqrt(4.5 · 5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5)
    )
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_jaccard_of_two_empty_learnable_sets_is_agreement():
    assert jaccard(np.array([False, False]), np.array([False, False])) == 1.0
    assert jaccard(np.array([True, True, False]), np.array([True, False, True])) == pytest.approx(
        1 / 3
    )


def test_agreement_scores_each_estimator_against_its_own_clean_arm():
    # Clean: two layers far above the rest, every epoch → β between them, #LP 2.
    clean = np.array([[1.0, 1.1, 1.2, 9.0, 10.0]] * 2)
    poisoned = np.array([[1.0, 1.1, 1.2, 1.3, 10.0]] * 2)  # one learnable layer: UD 0.5
    reference = {"clean": clean, "poisoned": poisoned}
    scaled = {arm: 3.0 * v for arm, v in reference.items()}  # a uniform scale changes nothing
    same = agreement(reference, scaled, reference_seconds=100.0, estimate_seconds=5.0)
    assert same.decisions == 1.0 and same.jaccard == 1.0 and same.spearman == pytest.approx(1.0)
    assert same.arms[1].ud_reference == pytest.approx(0.5) and same.max_ud_difference == 0.0
    assert same.cost_ratio == pytest.approx(0.05) and same.passes()
    # An estimator that also calls the poisoned arm's 4th layer learnable: 2 of its 10 cells
    # flip (80% there, 90% over both arms' 20 cells), the poisoned arm's UD rises to 1.
    off = {"clean": clean, "poisoned": np.array([[1.0, 1.1, 1.2, 9.5, 10.0]] * 2)}
    worse = agreement(reference, off, reference_seconds=100.0, estimate_seconds=5.0)
    assert worse.arms[1].decisions == pytest.approx(0.8) and worse.decisions == pytest.approx(0.9)
    assert worse.arms[1].ud_difference == pytest.approx(0.5)
    assert not worse.passes()
    assert not agreement(
        reference, scaled, reference_seconds=100.0, estimate_seconds=20.0
    ).passes()  # too costly
