"""The first-party defences: what each does to a batch, and that each hook kind trains for real.

Defences are built the way the harness builds them, from the registry record and its validated
parameters, and applied to small batches in [0, 1]: 8×8 one-channel digits-like images and
32×32 RGB ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from harness.defence import Defence, StepContext
from harness.entries import read_entries
from harness.pluginmanager import get_components

IMAGE_LEVEL = ["jpeg", "grayscale", "bdr", "blur"]
ALL = {"none", *IMAGE_LEVEL, "cutout", "mixup", "cutmix", "adversarial-training", "ueraser"}


def defence(name: str, **params) -> Defence:
    record = get_components().get("defence", name).record
    return record.factory(record.params(**params))


def smooth_images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> Tensor:
    """Natural-looking (low-frequency) images in [0, 1] on the 8-bit grid, as real data is."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, max(size // 4, 2), max(size // 4, 2), generator=g)
    x = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round() / 255


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_unit_range(x: Tensor) -> bool:
    return bool(x.min() >= 0) and bool(x.max() <= 1)


def total_variation(x: Tensor) -> float:
    return float(
        (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum()
    )


def context(generator: torch.Generator, epoch: int = 1) -> StepContext:
    return StepContext(
        epoch=epoch,
        generator=generator,
        loss=F.cross_entropy,
        per_sample_loss=lambda out, t: F.cross_entropy(out, t, reduction="none"),
        value_range=(0.0, 1.0),
        augment=lambda x, g: x,
    )


def linear_model(x: Tensor, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), classes))


# --- registry -----------------------------------------------------------------------------------


def test_every_defence_is_registered_with_its_paper_and_original_defaults():
    registry = get_components().registries["defence"]
    assert {r.name for r in registry} >= ALL
    for r in registry:
        if r.name != "none":
            assert r.record.paper, r.name
    assert defence("jpeg").params.quality == 10
    assert defence("bdr").params.bits == 2
    assert (defence("blur").params.kernel_size, defence("blur").params.sigma) == (3, 0.1)
    at = defence("adversarial-training").params
    assert (at.epsilon, at.step_size, at.steps, at.random_start) == (8 / 255, 2 / 255, 10, True)
    assert defence("mixup").params.alpha == defence("cutmix").params.alpha == 1.0
    assert defence("ueraser").k == 5
    assert [defence("ueraser", variant=v).max_epochs for v in ("lite", "standard", "max")] == [
        0,
        50,
        300,
    ]


def test_harness_plugins_lists_each_defence_with_its_paper_and_deviations(capsys):
    from harness.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    listing = out[out.index("defences:") :]
    for name in ALL:
        assert f"  {name} " in listing
    assert "follows: Qin, Gao" in listing and "differs: TrivialAugment is torchvision's" in listing


# --- image level ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_LEVEL)
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_image_defences_keep_shape_dtype_and_range(name, channels, size):
    x = smooth_images(6, channels, size)
    y = defence(name).transform_images(x, gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert in_unit_range(y)


def test_jpeg_changes_pixels_and_quality_10_is_lossier_than_90():
    x = smooth_images(8)
    low = defence("jpeg").transform_images(x, gen())
    high = defence("jpeg", quality=90).transform_images(x, gen())
    assert not torch.equal(low, x)
    assert float((low - x).abs().mean()) > 2 * float((high - x).abs().mean())
    gray = smooth_images(4, channels=1, size=8)
    assert not torch.equal(defence("jpeg").transform_images(gray, gen()), gray)


def test_grayscale_makes_channels_equal_and_leaves_gray_images_alone():
    y = defence("grayscale").transform_images(smooth_images(4), gen())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    gray = smooth_images(4, channels=1, size=8)
    assert torch.equal(defence("grayscale").transform_images(gray, gen()), gray)


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_bit_depth_reduction_leaves_at_most_two_to_the_bits_levels(bits):
    y = defence("bdr", bits=bits).transform_images(torch.rand(8, 3, 32, 32, generator=gen()), gen())
    levels = torch.unique(y)
    assert len(levels) <= 2**bits
    assert torch.allclose(
        levels * 255, (levels * 255).round()
    )  # PIL posterize levels: multiples of 2^(8-bits)


def test_blur_smooths_and_its_original_default_is_almost_the_identity():
    x = torch.rand(4, 3, 32, 32, generator=gen())
    blurred = defence("blur", sigma=1.0).transform_images(x, gen())
    assert total_variation(blurred) < 0.8 * total_variation(x)
    assert torch.allclose(defence("blur").transform_images(x, gen()), x, atol=1e-6)  # σ 0.1


def test_image_defences_refuse_feature_vectors():
    with pytest.raises(ValueError, match="needs image batches"):
        defence("jpeg").transform_images(torch.rand(4, 12), gen())


# --- batch level ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size,length", [(32, 16), (8, 4)])
def test_cutout_zeroes_one_square_per_image_scaled_to_the_image(size, length):
    x = torch.ones(64, 3, size, size)
    y = torch.arange(64) % 10
    out, targets = defence("cutout").transform_batch(x, y, 10, gen())
    assert torch.equal(targets, y)
    full = 0
    for image in out:
        zero = image[0] == 0
        assert torch.equal(zero, (image == 0).all(dim=0))  # the same square in every channel
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        # one axis-aligned rectangle, at most length × length, clipped to at least half at a border
        assert int(zero.sum()) == len(rows) * len(cols)
        assert len(rows) == int(rows[-1] - rows[0]) + 1 and len(cols) == int(cols[-1] - cols[0]) + 1
        assert length // 2 <= len(rows) <= length and length // 2 <= len(cols) <= length
        full += len(rows) == len(cols) == length
    assert full > 0


def test_mixup_mixes_pairs_of_images_and_their_labels_into_soft_targets_summing_to_one():
    x, y = smooth_images(16), torch.arange(16) % 10
    mixed, soft = defence("mixup").transform_batch(x, y, 10, gen())
    assert mixed.shape == x.shape and soft.shape == (16, 10)
    assert torch.allclose(soft.sum(dim=1), torch.ones(16))
    partner = torch.arange(16).roll(1)  # each sample mixes with its predecessor in the batch
    for i in range(16):
        assert set(soft[i].nonzero().flatten().tolist()) <= {int(y[i]), int(y[partner[i]])}
        if y[i] != y[partner[i]]:
            lam = soft[i, y[i]]
            assert 0 < lam < 1
            assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[partner[i]], atol=1e-6)


def test_cutmix_label_weights_are_the_pixel_shares_of_the_two_images():
    b = 8
    x = (
        (torch.arange(b, dtype=torch.float32) / b)[:, None, None, None]
        .expand(b, 3, 32, 32)
        .contiguous()
    )
    y = torch.arange(b)
    mixed, soft = defence("cutmix").transform_batch(x, y, 10, gen(1))
    assert torch.allclose(soft.sum(dim=1), torch.ones(b))
    for i in range(b):
        own = float((mixed[i] == x[i]).float().mean())
        assert soft[i, i] == pytest.approx(own, abs=1e-6)
        assert soft[i, (i - 1) % b] == pytest.approx(1 - own, abs=1e-6)


def test_mixup_works_on_feature_vectors_and_cutmix_refuses_them():
    x, y = torch.rand(6, 12, generator=gen()), torch.arange(6)
    mixed, soft = defence("mixup").transform_batch(x, y, 10, gen())
    assert mixed.shape == x.shape and torch.allclose(soft.sum(dim=1), torch.ones(6))
    with pytest.raises(ValueError, match="needs image batches"):
        defence("cutmix").transform_batch(x, y, 10, gen())


# --- step level -----------------------------------------------------------------------------------


def test_adversarial_examples_stay_within_epsilon_and_range_and_raise_the_loss():
    x, y = smooth_images(16, 1, 8), torch.arange(16) % 10
    model = linear_model(x)
    at = defence("adversarial-training")
    x_adv = at.perturb(model, x, y, context(gen()))
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert in_unit_range(x_adv)
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.05
    loss = at.training_loss(model, x, y, context(gen()))
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y))  # trains on those examples
    assert all(p.grad is None for p in model.parameters())  # the attack left no parameter gradients


def test_adversarial_attack_runs_in_eval_mode_and_restores_training_mode():
    x, y = smooth_images(8, 1, 8), torch.arange(8)
    seen: list[bool] = []
    model = linear_model(x)
    model.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    model.train()
    defence("adversarial-training", steps=3).training_loss(model, x, y, context(gen()))
    assert seen == [False, False, False, True] and model.training


def test_ueraser_loss_is_the_per_sample_max_over_its_k_copies():
    x, y = smooth_images(6, 3, 32), torch.arange(6)
    model = linear_model(x)
    ueraser = defence("ueraser", k=4)
    loss = ueraser.training_loss(model, x, y, context(gen(3), epoch=1))
    copies = ueraser.augmented_copies(x, 4, gen(3))  # the same seed: the same copies
    assert copies.shape == (24, 3, 32, 32) and in_unit_range(copies)
    assert not torch.equal(copies[0], copies[6])  # copies 0 and 1 of image 0 differ
    per_copy = F.cross_entropy(model(copies), y.repeat(4), reduction="none").view(4, 6)
    assert torch.allclose(loss, per_copy.max(dim=0).values.mean())
    assert loss > per_copy.mean()


def test_ueraser_can_draw_one_trivial_augment_operation_per_copy_batch():
    x = smooth_images(4, 1, 8)
    ueraser = defence("ueraser", per_image_trivial_augment=False)
    copies = ueraser.augmented_copies(x, 3, gen())
    assert copies.shape == (12, 1, 8, 8) and in_unit_range(copies)
    assert torch.equal(copies, ueraser.augmented_copies(x, 3, gen()))


def test_ueraser_trains_ordinarily_on_one_copy_after_max_epochs():
    x, y = smooth_images(6, 1, 8), torch.arange(6)
    model = linear_model(x)
    ueraser = defence("ueraser", variant="standard", max_epochs=2)
    assert ueraser.max_loss_on(2) and not ueraser.max_loss_on(3)
    loss = ueraser.training_loss(model, x, y, context(gen(4), epoch=3))
    assert torch.allclose(loss, F.cross_entropy(model(ueraser.augmented_copies(x, 1, gen(4))), y))
    assert not defence("ueraser", variant="lite").max_loss_on(1)


# --- determinism --------------------------------------------------------------------------------


def _apply(name: str, seed: int, model: nn.Module) -> Tensor:
    x, y = smooth_images(8, 1, 8), torch.arange(8)
    d, g = defence(name), gen(seed)
    if name in ("cutout", "mixup", "cutmix"):
        return torch.cat([t.flatten().float() for t in d.transform_batch(x, y, 10, g)])
    if name == "ueraser":
        return d.augmented_copies(x, 3, g)
    return d.perturb(model, x, y, context(g))


@pytest.mark.parametrize("name", ["cutout", "mixup", "cutmix", "adversarial-training", "ueraser"])
def test_random_defences_depend_only_on_the_generator(name):
    """A resumed run restores the generator, so the defence must draw from nothing else."""
    model = linear_model(torch.zeros(1, 1, 8, 8))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _apply(name, 7, model)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global RNG is left alone
    torch.manual_seed(999)  # and does not matter
    assert torch.equal(_apply(name, 7, model), first)
    assert not torch.equal(_apply(name, 8, model), first)


def _train(name: str, params: dict, epochs: range, state: dict | None) -> dict:
    """Train a tiny CNN with `train_epoch` for `epochs`, starting from a checkpoint-like `state`."""
    from harness.data import Split
    from harness.spec import TrainingSpec
    from harness.training import make_optimizer, train_epoch
    from harness_plugins.tasks import Classification

    train = Split(smooth_images(48, 1, 8, seed=5), torch.arange(48) % 10)
    recipe = TrainingSpec(epochs=2, batch_size=16, augmentation=["crop", "flip"])
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(256, 10),
    )
    optimizer = make_optimizer(model, recipe.optimizer)
    generator = gen(11)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    d = defence(name, **params)  # a fresh instance, as after a restart
    for epoch in epochs:
        train_epoch(
            model,
            train,
            Classification(),
            d,
            recipe,
            optimizer,
            generator,
            torch.device("cpu"),
            epoch,
            10,
            (0.0, 1.0),
        )
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
    }


@pytest.mark.parametrize(
    "name,params",
    [
        ("cutout", {}),
        ("mixup", {}),
        ("adversarial-training", {"steps": 2}),
        ("ueraser", {"k": 2}),
    ],
)
def test_training_resumed_from_a_checkpoint_is_bit_identical(name, params):
    """What the runner checkpoints (model, optimiser, generator) is all a defence's state."""
    straight = _train(name, params, range(1, 3), None)
    resumed = _train(name, params, range(2, 3), _train(name, params, range(1, 2), None))
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert torch.equal(resumed["generator"], straight["generator"])


# --- inside the harness --------------------------------------------------------------------------


def test_image_batch_and_step_defences_run_inside_a_real_training_loop(tmp_path):
    """jpeg (image level), mixup (batch level) and adversarial training (step level), end to end."""
    from conftest import write_spec

    from harness.cli import main

    spec = write_spec(
        tmp_path / "defended.yaml",
        {
            "name": "defended",
            "data": {"name": "digits", "subset": {"train": 200, "test": 100}},
            "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 1}},
            "training": {"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}},
            "sal": {"iterations": 2, "probe_size": 64, "probe_batch_size": 32},
            "poisons": [{"name": "random-noise", "label": "noise", "params": {"epsilon": 0.1}}],
            "defences": [
                "none",
                "jpeg",
                "mixup",
                {"name": "adversarial-training", "params": {"steps": 2}},
            ],
        },
    )
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    entries = {e.arm_id: e for e in read_entries(tmp_path / "runs" / "defended")}
    defences = ("jpeg", "mixup", "adversarial-training")
    assert set(entries) == {
        f"{p}__{d}__s0" for p in ("clean", "noise") for d in ("none", *defences)
    }
    for d in defences:
        for p in ("clean", "noise"):
            r = entries[f"{p}__{d}__s0"].results
            assert entries[f"{p}__{d}__s0"].defence.name == d
            assert r.ud is not None and r.ud_undefended is not None
            assert r.ud_change == pytest.approx(r.ud - r.ud_undefended)
            assert 0 <= r.test_metric.final <= 1
            # the defence changed training: same seed and data, a different training loss
            assert r.final_train_loss != entries[f"{p}__none__s0"].results.final_train_loss
        clean = entries[f"clean__{d}__s0"].results
        assert clean.ud_undefended == pytest.approx(
            1.0
        )  # the undefended clean arm is the reference
        assert clean.beta == entries["clean__none__s0"].results.beta  # β still from the clean arm
