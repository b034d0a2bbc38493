"""The GPU-grade engine changes no value: each speed-up against the plain form it replaces."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_spec, write_spec
from torchvision.transforms import v2

from harness.cli import main
from harness.training import LossSum
from harness_plugins.defences.squeezing import JPEG, BitDepthReduction, Grayscale
from harness_plugins.defences.ueraser import trivial_augment_per_image


@pytest.mark.parametrize("shape", [(300, 3, 16, 16), (50, 1, 8, 8)])
def test_batched_trivial_augment_gives_the_per_image_loop_images_and_rng_state(shape):
    augment = v2.TrivialAugmentWide()
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    torch.manual_seed(7)
    loop = torch.stack([augment(image) for image in images])
    after_loop = torch.rand(())
    torch.manual_seed(7)
    batched = trivial_augment_per_image(augment, images)
    assert torch.equal(loop, batched)
    assert torch.rand(()) == after_loop  # the same draws, so every later draw is the same too


def test_the_loss_sum_on_the_device_is_the_python_float_sum():
    losses = torch.rand(500, dtype=torch.float32) * 3
    sizes = torch.randint(1, 128, (500,)).tolist()
    on_device = LossSum(torch.device("cpu"))
    total, count = 0.0, 0
    for loss, n in zip(losses, sizes, strict=True):
        on_device.add(loss, n)
        total += float(loss) * n
        count += n
    assert on_device.mean() == total / count


def test_only_exact_per_image_defences_are_applied_once_per_arm():
    assert JPEG.per_image and Grayscale.per_image and BitDepthReduction.per_image
    from harness_plugins.defences.squeezing import GaussianBlur
    from harness_plugins.defences.ueraser import UEraser

    assert not GaussianBlur.per_image and not UEraser.per_image


def test_a_run_with_images_applied_once_equals_one_applying_them_per_batch(tmp_path, monkeypatch):
    defences = [{"name": "none"}, {"name": "jpeg"}, {"name": "bdr"}, {"name": "grayscale"}]
    spec = tiny_spec("once", defences=defences, poisons=tiny_spec()["poisons"][:1])
    spec["training"]["augmentation"] = ["crop", "flip"]
    path = write_spec(tmp_path / "once.yaml", spec)
    assert main(["eval", str(path), "--output", str(tmp_path / "a"), "--quiet"]) == 0
    for cls in (JPEG, Grayscale, BitDepthReduction):
        monkeypatch.setattr(cls, "per_image", False)
    assert main(["eval", str(path), "--output", str(tmp_path / "b"), "--quiet"]) == 0
    with h5py.File(tmp_path / "a/once/run.h5") as a, h5py.File(tmp_path / "b/once/run.h5") as b:
        arms = sorted(a["arms"])
        assert any("jpeg" in arm for arm in arms)
        for arm in arms:
            for name in ("sal", "sal_ascent_loss", "sal_descent_loss"):
                assert np.array_equal(a[f"arms/{arm}/{name}"][()], b[f"arms/{arm}/{name}"][()])
            for metric in ("train_loss", "test_loss", "test_metric"):
                path_ = f"arms/{arm}/metrics/{metric}"
                assert np.array_equal(a[path_][()], b[path_][()]), (arm, metric)
