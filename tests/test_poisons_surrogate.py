"""The surrogate-based poisons (EM, REM, TAP, HYPO, DeepConfuse) at tiny budgets.

Each test reads as a usage example: a DataBundle and a PoisonContext built by hand (as the
runner does), a method's Params with a tiny surrogate, and `generate`. The budgets are chosen
so that the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from harness.api import BuildContext, sign_pgd
from harness.backbone import TaskModel
from harness.data import DataBundle, Split, subset
from harness.pluginmanager import get_components
from harness.poison import GenerationCheckpoint, Poison, PoisonContext
from harness_plugins.datasets import DigitsParams, load_digits_bundle
from harness_plugins.poisons import dc, em, hypo, rem, tap
from harness_plugins.poisons._surrogate import Augment, SurrogateParams
from harness_plugins.tasks import Classification

TINY = {"backbone": "small-cnn", "backbone_params": {"width": 4, "blocks": 2}, "batch_size": 64}
# TAP's check needs a surrogate that has learnt something (eval-mode accuracy ≈ 0.85 on digits)
TRAINED = {
    "backbone": "small-cnn",
    "backbone_params": {"width": 8, "blocks": 2},
    "batch_size": 32,
    "lr": 0.05,
}

# name -> (poison class, its params at a budget the tests can afford)
CASES: dict[str, tuple[type[Poison], Any]] = {
    "em-sample": (em.ErrorMinimizingNoise, em.EMParams(max_rounds=2, steps=5, surrogate=TINY)),
    "em-class": (
        em.ErrorMinimizingNoise,
        em.EMParams(mode="class-wise", max_rounds=3, class_subset=0.5, surrogate=TINY),
    ),
    "rem": (
        rem.RobustErrorMinimizingNoise,
        rem.REMParams(train_steps=4, steps=2, attack_steps=2, eot_samples=2, surrogate=TINY),
    ),
    "tap": (
        tap.TargetedAdversarialPoison,
        tap.TAPParams(epochs=20, steps=20, restarts=2, surrogate=TRAINED),
    ),
    "hypo": (
        hypo.HypocriticalPerturbation,
        hypo.HypoParams(epochs=20, steps=10, surrogate=TRAINED),
    ),
    "dc": (
        dc.DeepConfuse,
        dc.DCParams(rounds=1, classifier_epochs=1, generator_width=4, classifier=TINY),
    ),
}
EPSILON = {name: params.epsilon for name, (_, params) in CASES.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors on a shared 2-core machine: OpenMP's thread hand-off costs more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_context(data: DataBundle, seed: int = 0) -> PoisonContext:
    """A PoisonContext as `PoisonedInputs` builds one: backbones from the registry with
    the classification head on top, the task's loss, and a progress callback (recorded here)."""
    components = get_components()
    task = Classification()

    def build_model(name: str, params: dict[str, Any]) -> TaskModel:
        backbone = components.build(
            "backbone", name, params, BuildContext(input_shape=data.input_shape)
        )
        return TaskModel(backbone, task.build(backbone.num_features, data))

    reports: list[tuple[str, float]] = []
    ctx = PoisonContext(
        seed=seed,
        device=torch.device("cpu"),
        data=data,
        build_model=build_model,
        task_loss=task.loss,
        progress=lambda message, fraction: reports.append((message, fraction)),
    )
    ctx.reports = reports  # type: ignore[attr-defined]
    return ctx


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    data = load_digits_bundle(DigitsParams())
    data.train = subset(data.train, 200, seed=0)
    return data


@pytest.fixture(scope="module")
def generated(digits) -> Callable[[str, int], tuple[Poison, torch.Tensor, PoisonContext]]:
    """(poison, output, context) per (method, seed), generated once for the whole module."""
    cache: dict[tuple[str, int], tuple[Poison, torch.Tensor, PoisonContext]] = {}

    def get(name: str, seed: int = 0) -> tuple[Poison, torch.Tensor, PoisonContext]:
        if (name, seed) not in cache:
            cls, params = CASES[name]
            poison = cls(params)
            ctx = make_context(digits, seed)
            cache[(name, seed)] = (poison, poison.generate(digits, ctx), ctx)
        return cache[(name, seed)]

    return get


# --- every method ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_output_is_bounded_in_range_and_shaped_like_the_inputs(name, digits, generated):
    clean_x, clean_y = digits.train.x.clone(), digits.train.y.clone()
    _, out, _ = generated(name)
    assert (
        out.shape == digits.train.x.shape
        and out.dtype == torch.float32
        and out.device.type == "cpu"
    )
    assert (out - digits.train.x).abs().max() <= EPSILON[name] + 1e-6
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out != digits.train.x).any(), "the poison changed nothing"
    assert torch.equal(digits.train.x, clean_x) and torch.equal(
        digits.train.y, clean_y
    )  # inputs untouched


@pytest.mark.parametrize("name", list(CASES))
def test_same_seed_same_bits_other_seed_other_poison(name, digits, generated):
    _, first, _ = generated(name, 0)
    cls, params = CASES[name]
    again = cls(params).generate(digits, make_context(digits, 0))
    assert torch.equal(first, again)
    _, other, _ = generated(name, 1)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", list(CASES))
def test_progress_is_reported_as_fractions_ending_at_one(name, generated):
    _, _, ctx = generated(name)
    fractions = [f for _, f in ctx.reports]
    assert len(fractions) >= 2
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_generation_leaves_the_global_rng_alone(digits):
    state = torch.get_rng_state()
    cls, params = CASES["hypo"]
    cls(params).generate(digits, make_context(digits))
    assert torch.equal(torch.get_rng_state(), state)


# --- method-specific behaviour -------------------------------------------------------------------


def test_classwise_em_shares_one_perturbation_per_class(digits, generated):
    poison, out, _ = generated("em-class")
    noise = poison.class_noise
    assert noise is not None and noise.shape == (digits.num_classes, *digits.input_shape)
    assert 0 < noise.abs().max() <= EPSILON["em-class"] + 1e-6
    delta = out - digits.train.x
    inside = (out > 0) & (out < 1)  # where x + δ was not clipped, δ is the class's pattern exactly
    for c in range(digits.num_classes):
        members = digits.train.y == c
        d, m = delta[members], inside[members]
        assert m.float().mean() > 0.3
        assert ((d - noise[c]).abs() * m).max() <= 1e-6
    # and without looking at class_noise: wherever two images of a class are unclipped, they agree
    for c in range(digits.num_classes):
        members = digits.train.y == c
        d, m = delta[members], inside[members]
        high = torch.where(m, d, torch.full_like(d, -math.inf)).amax(0)
        low = torch.where(m, d, torch.full_like(d, math.inf)).amin(0)
        seen = m.sum(0) >= 2
        assert (high - low)[seen].max() <= 2e-6


def test_samplewise_em_stops_once_the_surrogate_error_is_low_enough(digits):
    params = em.EMParams(max_rounds=5, steps=2, stop_error=1.0, surrogate=TINY)
    poison = em.ErrorMinimizingNoise(params)
    poison.generate(digits, make_context(digits))
    assert poison.rounds_run == 1 and poison.final_error <= 1.0


def test_em_defaults_resolve_per_mode():
    assert em.EMParams().resolved_steps() == 20 and em.EMParams().resolved_stop_error() == 0.01
    classwise = em.EMParams(mode="class-wise")
    assert classwise.resolved_steps() == 1 and classwise.resolved_stop_error() == 0.1


def test_em_minimises_the_task_loss_it_is_given(digits):
    """EM takes the loss to minimise from ctx.task_loss (a later issue adds multi-task heads)."""
    calls = []
    ctx = make_context(digits)
    base = ctx.task_loss

    def counted(outputs, targets):
        calls.append(1)
        return base(outputs, targets)

    ctx.task_loss = counted
    em.ErrorMinimizingNoise(
        em.EMParams(max_rounds=1, steps=1, train_steps=1, surrogate=TINY)
    ).generate(digits, ctx)
    assert len(calls) >= 1 + 4  # one training batch, one PGD step per batch of 64


def test_tap_targeted_pushes_its_surrogate_towards_the_next_class(digits, generated):
    poison, out, _ = generated("tap")
    model = poison.model
    target = (digits.train.y + 1) % digits.num_classes
    with torch.no_grad():
        clean_logits, poisoned_logits = model(digits.train.x), model(out)
    assert F.cross_entropy(poisoned_logits, target) < F.cross_entropy(clean_logits, target) - 0.05
    assert (poisoned_logits.argmax(1) == target).sum() > (clean_logits.argmax(1) == target).sum()
    assert len(poison.restart_losses) == CASES["tap"][1].restarts


def test_tap_untargeted_variant_raises_the_true_label_loss(digits):
    params = tap.TAPParams(targeted=False, epochs=20, steps=10, restarts=1, surrogate=TRAINED)
    poison = tap.TargetedAdversarialPoison(params)
    out = poison.generate(digits, make_context(digits))
    with torch.no_grad():
        assert F.cross_entropy(poison.model(out), digits.train.y) > F.cross_entropy(
            poison.model(digits.train.x), digits.train.y
        )


def test_hypo_makes_its_crafting_model_more_confident(digits, generated):
    poison, out, _ = generated("hypo")
    with torch.no_grad():
        clean = F.cross_entropy(poison.model(digits.train.x), digits.train.y)
        poisoned = F.cross_entropy(poison.model(out), digits.train.y)
    assert poisoned < clean


def test_rem_keeps_its_adversarial_inner_step_and_eot(digits, generated):
    """Dropping the inner maximisation or the expectation over augmentations changes the noise
    (public re-implementations that silently drop either produce plain EM)."""
    _, reference, _ = generated("rem")
    base = CASES["rem"][1].model_dump()
    for change in ({"attack_steps": 0}, {"eot_samples": 1}):
        variant = rem.REMParams.model_validate({**base, **change})
        out = rem.RobustErrorMinimizingNoise(variant).generate(digits, make_context(digits))
        assert not torch.equal(out, reference), change


# --- 32×32 RGB --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rgb() -> DataBundle:
    g = torch.Generator().manual_seed(5)
    x = torch.rand((12, 3, 32, 32), generator=g)
    y = torch.arange(12) % 3
    return DataBundle(
        name="rgb",
        train=Split(x, y),
        test=Split(x[:3].clone(), y[:3].clone()),
        classes=["a", "b", "c"],
    )


RGB_CASES: dict[str, tuple[type[Poison], Any]] = {
    "em": (
        em.ErrorMinimizingNoise,
        em.EMParams(
            max_rounds=1,
            steps=2,
            train_steps=1,
            surrogate={"backbone_params": {"width": 2}, "batch_size": 8},
        ),
    ),
    "em-class": (
        em.ErrorMinimizingNoise,
        em.EMParams(
            mode="class-wise", max_rounds=1, train_steps=1, class_subset=0.5, surrogate=TINY
        ),
    ),
    "rem": (
        rem.RobustErrorMinimizingNoise,
        rem.REMParams(train_steps=1, steps=1, attack_steps=1, eot_samples=1, surrogate=TINY),
    ),
    "tap": (
        tap.TargetedAdversarialPoison,
        tap.TAPParams(epochs=1, steps=2, restarts=1, surrogate=TINY),
    ),
    "hypo": (hypo.HypocriticalPerturbation, hypo.HypoParams(epochs=1, steps=2, surrogate=TINY)),
    "dc": (
        dc.DeepConfuse,
        dc.DCParams(rounds=1, classifier_epochs=1, generator_width=2, classifier=TINY),
    ),
}


@pytest.mark.parametrize("name", list(RGB_CASES))
def test_rgb_32x32_smoke(name, rgb):
    cls, params = RGB_CASES[name]
    out = cls(params).generate(rgb, make_context(rgb))
    assert out.shape == rgb.train.x.shape
    assert (out - rgb.train.x).abs().max() <= params.epsilon + 1e-6
    assert out.min() >= 0.0 and out.max() <= 1.0 and (out != rgb.train.x).any()


@pytest.mark.parametrize("size", [8, 28, 32])
def test_unet_keeps_the_image_size(size):
    c = 3 if size == 32 else 1
    net = dc.UNet(c, 4, dc.default_depth(size, size)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, c, size, size))
    assert out.shape == (2, c, size, size) and out.abs().max() < 1
    assert dc.default_depth(32, 32) == 4 and dc.default_depth(8, 8) == 2


# --- shared helpers ---------------------------------------------------------------------------------


def test_augmentation_is_per_sample_and_differentiable():
    x = torch.rand(16, 3, 8, 8)
    delta = torch.zeros_like(x, requires_grad=True)
    out = Augment(padding=2, flip=True)(x + delta, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0
    # different samples got different crops/flips: the same image repeated is not mapped identically
    same = Augment(padding=2, flip=True)(
        x[:1].repeat(16, 1, 1, 1), torch.Generator().manual_seed(0)
    )
    assert len({tuple(s.flatten().tolist()) for s in same}) > 1


def test_sign_pgd_moves_pixels_at_the_range_boundary():
    """A clamp has zero gradient at 0 and 1; PGD must still move black background pixels."""
    x = torch.zeros(4, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    delta = sign_pgd(
        model,
        x,
        y,
        torch.zeros_like(x),
        loss_fn=F.cross_entropy,
        epsilon=0.1,
        step_size=0.05,
        steps=3,
        value_range=(0.0, 1.0),
        descend=True,
    )
    assert (delta > 0).any() and delta.min() >= 0 and delta.max() <= 0.1 + 1e-7


# --- records ---------------------------------------------------------------------------------------


MODULES = {"em": em, "rem": rem, "tap": tap, "hypo": hypo, "dc": dc}


@pytest.mark.parametrize("name", list(MODULES))
def test_records_cite_the_paper_and_list_their_deviations(name):
    (record,) = MODULES[name].harness_register_poisons()
    assert record.name == name and not record.problems()
    assert record.paper and record.description
    assert record.deviations and all(
        isinstance(d, str) and d.endswith(".") for d in record.deviations
    )
    with pytest.raises(ValueError):
        record.params.model_validate({"no_such_field": 1})


def test_defaults_are_the_original_papers():
    e = em.EMParams()
    assert (e.epsilon, e.step_size, e.train_steps, e.class_subset) == (8 / 255, 0.8 / 255, 10, 0.2)
    assert (e.surrogate.backbone, e.surrogate.batch_size, e.surrogate.grad_clip) == (
        "resnet18",
        512,
        5.0,
    )
    assert (e.surrogate.lr, e.surrogate.momentum, e.surrogate.weight_decay) == (0.1, 0.9, 5e-4)
    r = rem.REMParams()
    assert (r.epsilon, r.step_size, r.steps, r.random_start) == (8 / 255, 1.6 / 255, 10, True)
    assert (r.attack_epsilon, r.attack_step_size, r.attack_steps, r.eot_samples) == (
        4 / 255,
        0.8 / 255,
        10,
        5,
    )
    assert (r.train_steps, r.lr_decay, r.lr_decay_every, r.surrogate.batch_size) == (
        5000,
        0.1,
        2000,
        128,
    )
    t = tap.TAPParams()
    assert (t.targeted, t.epsilon, t.steps, t.step_size, t.restarts, t.epochs) == (
        True,
        8 / 255,
        250,
        None,
        8,
        40,
    )
    h = hypo.HypoParams()
    assert (h.epsilon, h.step_size, h.steps) == (8 / 255, 0.8 / 255, 100)
    d = dc.DCParams()
    assert (d.epsilon, d.generator_lr, d.classifier.lr, d.classifier.batch_size) == (
        0.032,
        1e-4,
        0.01,
        256,
    )


def test_overriding_one_surrogate_field_keeps_the_methods_other_defaults():
    r = rem.REMParams.model_validate({"surrogate": {"backbone": "small-cnn"}})
    assert r.surrogate.batch_size == 128 and r.surrogate.grad_clip is None
    assert isinstance(r.surrogate, SurrogateParams)
    d = dc.DCParams.model_validate({"classifier": {"lr": 0.02}})
    assert d.classifier.backbone == "small-cnn" and d.classifier.momentum == 0.0


class StoppingCheckpoint(GenerationCheckpoint):
    """Takes every state offered (through `torch.save`, as on disk) and stops the generation,
    as a Ctrl-C would, right after save number `stop_after`."""

    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after
        self.saves = 0
        self.saved: bytes | None = None

    def load(self) -> dict[str, Any] | None:
        return None if self.saved is None else torch.load(io.BytesIO(self.saved), weights_only=True)

    def due(self) -> bool:
        return True

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.saved = buffer.getvalue()
        self.saves += 1
        if self.saves == self.stop_after:
            raise KeyboardInterrupt


# REM's tiny case offers a state after each of its 4 surrogate steps and 4 final-noise batches
@pytest.mark.parametrize("stop_after", [1, 3, 4, 6])
def test_rem_cut_short_resumes_where_it_stopped_and_gives_the_same_poison(
    digits, generated, stop_after
):
    _, reference, _ = generated("rem")
    cls, params = CASES["rem"]
    checkpoint = StoppingCheckpoint(stop_after)
    ctx = make_context(digits)
    ctx.checkpoint = checkpoint
    with pytest.raises(KeyboardInterrupt):
        cls(params).generate(digits, ctx)
    checkpoint.stop_after, checkpoint.saves = None, 0
    ctx = make_context(digits)  # a new attempt: a new process would build everything again
    ctx.checkpoint = checkpoint
    resumed = cls(params).generate(digits, ctx)
    assert torch.equal(resumed, reference)
    assert checkpoint.saves == 8 - stop_after  # it went on from the save, not from the start
