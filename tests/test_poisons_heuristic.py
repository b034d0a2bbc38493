"""The surrogate-free poisons (lsp, ops, ar, cuda) and from-files, used the way the runner uses them.

Each method is built from its record and validated params and called with a PoisonContext built
by hand; none of these methods trains a model, so build_model and task_loss are never called.
Data are small: 10 classes × 6 seeded random 32×32 RGB images, and scikit-learn's 8×8 digits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError

from harness.data import DataBundle, Split
from harness.errors import DataError
from harness.pluginmanager import get_components
from harness.poison import PoisonContext
from harness_plugins.datasets import DigitsParams, load_digits_bundle
from harness_plugins.poisons.ar import ar_fill, residual_filters
from harness_plugins.poisons.cuda import class_conv

METHODS = ("lsp", "ops", "ar", "cuda")
FAST_AR = {"candidates": 32}  # the search's default pool is larger; tests need not pay for it


def record(name: str):
    return get_components().get("poison", name).record


def build(name: str, **params: Any):
    return get_components().build("poison", name, params)


def _unused(*args: Any) -> Any:
    raise AssertionError("heuristic poisons must not build models or compute losses")


def context(data: DataBundle, seed: int = 0) -> PoisonContext:
    return PoisonContext(
        seed=seed, device=torch.device("cpu"), data=data, build_model=_unused, task_loss=_unused
    )


def rgb_bundle(
    classes: int = 10, per_class: int = 6, shape=(3, 32, 32), seed: int = 0
) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per_class)
    # quantised like decoded images, so PNG round trips are exact
    x = torch.randint(0, 256, (len(y), *shape), generator=g).float() / 255
    return DataBundle(
        "synthetic", Split(x, y), Split(x[:classes], y[:classes]), [str(i) for i in range(classes)]
    )


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: torch's worker threads only add synchronisation (3× slower on a
    busy 2-core machine), so the module runs on one thread and restores the count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rgb() -> DataBundle:
    return rgb_bundle()


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_digits_bundle(DigitsParams())


def generate(name: str, data: DataBundle, seed: int = 0, **params: Any) -> torch.Tensor:
    return build(name, **params).generate(data, context(data, seed))


def params_for(name: str) -> dict[str, Any]:
    return FAST_AR if name == "ar" else {}


# ----------------------------------------------------------------------------- all methods


def test_records_are_complete() -> None:
    for name in (*METHODS, "from-files"):
        rec = record(name)
        assert rec.problems() == []
        assert (
            rec.paper and rec.deviations and all(isinstance(d, str) and d for d in rec.deviations)
        )
        with pytest.raises(ValidationError):
            rec.params(not_a_param=1, **({"path": "x"} if name == "from-files" else {}))


@pytest.mark.parametrize("name", METHODS)
def test_shape_range_labels_and_determinism(name: str, rgb: DataBundle, digits: DataBundle) -> None:
    for data in (rgb, digits):
        x_before, y_before = data.train.x.clone(), data.train.y.clone()
        out = generate(name, data, seed=0, **params_for(name))
        assert out.shape == data.train.x.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert torch.equal(data.train.x, x_before), "the clean inputs must not be modified in place"
        assert torch.equal(data.train.y, y_before)
        assert not torch.equal(out, data.train.x)
        assert torch.equal(out, generate(name, data, seed=0, **params_for(name)))
        if name != "ops":  # OPS has no randomness (documented)
            assert not torch.equal(out, generate(name, data, seed=1, **params_for(name)))


@pytest.mark.parametrize("name", METHODS)
def test_feature_data_is_refused(name: str) -> None:
    x = torch.rand(20, 5)
    y = torch.arange(2).repeat(10)
    data = DataBundle("features", Split(x, y), Split(x, y), ["a", "b"], value_range=None)
    with pytest.raises(DataError, match=r"expected \[C, H, W\]"):
        generate(name, data, **params_for(name))


# -------------------------------------------------------------------------------------- OPS


def changed_positions(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[N, H, W]: where any channel of a pixel changed."""
    return (out != x).any(dim=1)


def test_ops_sets_one_pixel_per_class_with_distinct_pairs(
    rgb: DataBundle, digits: DataBundle
) -> None:
    for data in (rgb, digits):
        ops = build("ops")
        chosen = ops.choose(data, context(data))
        out = ops.generate(data, context(data))
        assert sorted(chosen) == list(range(data.num_classes))
        pairs = {(row, col, tuple(colour.tolist())) for row, col, colour in chosen.values()}
        assert len(pairs) == data.num_classes
        assert changed_positions(out, data.train.x).flatten(1).sum(dim=1).max() <= 1
        for cls, (row, col, colour) in chosen.items():
            members = data.train.y == cls
            assert torch.equal(out[members, :, row, col], colour.expand(int(members.sum()), -1))
            assert set(colour.tolist()) <= {0.0, 1.0}
            rest = out[members].clone()
            rest[:, :, row, col] = data.train.x[members][:, :, row, col]
            assert torch.equal(rest, data.train.x[members])  # every other pixel identical


def test_ops_reads_images_channel_first() -> None:
    """A pixel that is black in every image of class 0 is that class's perfect shortcut (white).

    The images are 3×8×12 so a transposed or channel-last reading would pick another position.
    """
    data = rgb_bundle(classes=4, per_class=20, shape=(3, 8, 12), seed=3)
    data.train.x[data.train.y == 0, :, 5, 7] = 0.0
    row, col, colour = build("ops").choose(data, context(data))[0]
    assert (row, col) == (5, 7) and colour.tolist() == [1.0, 1.0, 1.0]


def test_ops_scales_to_100_classes() -> None:
    for shape in ((3, 32, 32), (1, 8, 8)):  # 1×8×8 has 128 pairs: nearly all are needed
        data = rgb_bundle(classes=100, per_class=2, shape=shape)
        chosen = build("ops").choose(data, context(data))
        pairs = {(row, col, tuple(colour.tolist())) for row, col, colour in chosen.values()}
        assert len(chosen) == 100 and len(pairs) == 100
        out = build("ops").generate(data, context(data))
        assert changed_positions(out, data.train.x).flatten(1).sum(dim=1).max() <= 1


def test_ops_fails_clearly_without_enough_pairs() -> None:
    data = rgb_bundle(classes=40, per_class=2, shape=(1, 4, 4))  # 16 positions × 2 colours
    with pytest.raises(DataError, match="40 classes"):
        build("ops").generate(data, context(data))


# -------------------------------------------------------------------------------------- LSP


def test_lsp_norm_patches_and_points(rgb: DataBundle, digits: DataBundle) -> None:
    default = math.sqrt((6 / 255) ** 2 * 3072)
    for data, norm, patch, grid in ((rgb, None, 8, 4), (rgb, 2.0, 8, 4), (digits, None, 2, 4)):
        lsp = build("lsp", norm=norm)
        delta = lsp.perturbations(data, context(data))
        c, h, w = data.input_shape
        want = norm if norm is not None else math.sqrt((6 / 255) ** 2 * c * h * w)
        if data is rgb and norm is None:
            assert want == pytest.approx(default) and abs(default - 1.304) < 1e-3
        assert torch.allclose(
            delta.flatten(1).norm(dim=1), torch.full((len(delta),), want), atol=1e-4
        )
        out = lsp.generate(data, context(data))
        assert torch.equal(out, (data.train.x + delta).clamp(0, 1))
        # constant within each patch of the 4×4 grid
        cells = delta.reshape(len(delta), c, grid, patch, grid, patch)
        assert float((cells.amax(dim=(3, 5)) - cells.amin(dim=(3, 5))).abs().max()) < 1e-6
        # every image has its own point, and the points are separable by class
        features = cells[:, :, :, 0, :, 0].flatten(1)
        y = data.train.y
        same = features[y == 0]
        assert not torch.allclose(same[0], same[1])
        centroids = torch.stack([features[y == k].mean(0) for k in range(data.num_classes)])
        assert torch.equal(torch.cdist(features, centroids).argmin(dim=1), y)


def test_lsp_explicit_patch_size_crops_the_last_patch(rgb: DataBundle) -> None:
    delta = build("lsp", patch_size=5, norm=1.0).perturbations(rgb, context(rgb))
    assert delta.shape == rgb.train.x.shape  # 7×7 grid of 5-pixel patches, cropped to 32
    assert torch.allclose(delta.flatten(1).norm(dim=1), torch.ones(len(delta)), atol=1e-4)
    assert torch.equal(delta[:, :, 30, 30], delta[:, :, 31, 31])  # the cropped 2×2 corner patch
    assert not torch.equal(delta[:, :, 29, 29], delta[:, :, 30, 30])


# --------------------------------------------------------------------------------------- AR


def test_ar_filters_are_causal_and_sum_to_one(rgb: DataBundle, digits: DataBundle) -> None:
    for data in (rgb, digits):
        f = build("ar", **FAST_AR).filters(data, context(data))
        c = data.input_shape[0]
        assert f.shape == (data.num_classes, c, 3, 3)
        # layout: [2, 2] is the generated value itself (its tap is 0); the other 8 entries lie
        # above it or to its left, i.e. values the raster scan has already produced
        assert torch.equal(f[..., 2, 2], torch.zeros(data.num_classes, c))
        assert torch.allclose(f.sum(dim=(2, 3)), torch.ones(data.num_classes, c), atol=1e-5)
        assert len({tuple(v.flatten().tolist()) for v in f}) == data.num_classes


def test_ar_fill_only_uses_earlier_values() -> None:
    """Changing a start value after a position (in raster order) never changes that position."""
    g = torch.Generator().manual_seed(0)
    coeffs = torch.rand((1, 1, 3, 3), generator=g)
    coeffs[..., 2, 2] = 0
    coeffs /= coeffs.sum()
    start = torch.randn((1, 1, 9, 9), generator=g)
    base = ar_fill(coeffs, start.clone())
    later = start.clone()
    later[0, 0, 6, 1] += 5.0  # a start value read only by positions after (6, 2)
    changed = ar_fill(coeffs, later) != base
    order = torch.arange(81).view(9, 9)
    assert not bool(changed[0, 0][order < 6 * 9 + 1].any())


def test_ar_norm_noise_and_separability(rgb: DataBundle, digits: DataBundle) -> None:
    for data, norm in ((rgb, None), (rgb, 0.5), (digits, None)):
        ar = build("ar", norm=norm, **FAST_AR)
        ctx = context(data)
        delta = ar.perturbations(data, ctx)
        c, h, w = data.input_shape
        want = norm if norm is not None else math.sqrt(c * h * w / 3072)  # 1.0 on 3×32×32
        assert torch.allclose(
            delta.flatten(1).norm(dim=1), torch.full((len(delta),), want), atol=1e-4
        )
        assert torch.equal(ar.generate(data, ctx), (data.train.x + delta).clamp(0, 1))
        y = data.train.y
        same = delta[y == 0]
        assert not torch.allclose(same[0], same[1])  # fresh noise per image
        # every image is an exact realisation of its class's process: that class's residual
        # filter maps it to ~0 and every other class's filter does not
        f = residual_filters(ar.filters(data, ctx))
        residual = torch.stack(
            [F.conv2d(delta, f[k][None]).abs().flatten(1).sum(1) for k in range(len(f))], dim=1
        )
        own = residual[torch.arange(len(y)), y]
        assert float(own.max()) < 1e-4
        assert torch.equal(residual.argmin(dim=1), y)
    assert build("ar").norm(rgb) == 1.0  # the default is the original's 1.0, not 8/255


def test_ar_linf_variant(rgb: DataBundle) -> None:
    delta = build("ar", norm_type="linf", **FAST_AR).perturbations(rgb, context(rgb))
    assert torch.allclose(
        delta.flatten(1).abs().amax(dim=1), torch.full((len(delta),), 8 / 255), atol=1e-6
    )


# ------------------------------------------------------------------------------------- CUDA


def test_cuda_convolves_with_one_kernel_per_class(rgb: DataBundle) -> None:
    cuda = build("cuda")
    kernels = cuda.kernels(rgb.num_classes, context(rgb))
    assert kernels.shape == (10, 3, 3)
    assert torch.equal((kernels == 1.0).sum(dim=(1, 2)), torch.ones(10, dtype=torch.long))
    others = kernels[kernels != 1.0]
    assert float(others.min()) >= 0 and float(others.max()) <= 0.3
    out = cuda.generate(rgb, context(rgb))
    # reference: torch's convolution, the class's kernel on every channel, divided by the image max
    for i in range(len(rgb.train)):
        k = kernels[rgb.train.y[i]].expand(3, 1, 3, 3)
        ref = F.conv2d(rgb.train.x[i : i + 1], k, padding=1, groups=3)[0]
        assert torch.allclose(out[i], ref / ref.max(), atol=1e-6)
    assert torch.allclose(out.flatten(1).amax(dim=1), torch.ones(len(out)))
    # channels share the kernel: an image with equal channels keeps them equal
    grey = rgb_bundle(classes=2, per_class=2, shape=(1, 32, 32))
    grey = DataBundle(
        "grey",
        Split(grey.train.x.expand(-1, 3, -1, -1).contiguous(), grey.train.y),
        grey.test,
        grey.classes,
    )
    out = build("cuda").generate(grey, context(grey))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_cuda_helper_matches_grouped_conv() -> None:
    x = torch.rand(4, 3, 7, 9)
    k = torch.rand(4, 5, 5)
    ref = torch.stack(
        [F.conv2d(x[i : i + 1], k[i].expand(3, 1, 5, 5), padding=2, groups=3)[0] for i in range(4)]
    )
    assert torch.allclose(class_conv(x, k), ref, atol=1e-5)
    with pytest.raises(ValidationError):
        record("cuda").params(kernel_size=4)


# ------------------------------------------------------------------------------- from-files


def full_and_subset(shape=(3, 32, 32)) -> tuple[DataBundle, DataBundle, torch.Tensor]:
    full = rgb_bundle(classes=4, per_class=5, shape=shape, seed=7)
    idx = torch.tensor([1, 4, 6, 11, 13, 18])
    sub = DataBundle(
        "synthetic",
        Split(full.train.x[idx].clone(), full.train.y[idx].clone(), idx),
        full.test,
        full.classes,
    )
    return full, sub, idx


def write_pngs(folder: Path, images: torch.Tensor, names: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    arr = (images * 255).round().to(torch.uint8).numpy()
    for i, img in enumerate(arr):
        name = names[i] if names else f"{i}.png"
        if img.shape[0] == 1:
            Image.fromarray(img[0], mode="L").save(folder / name)
        else:
            Image.fromarray(img.transpose(1, 2, 0), mode="RGB").save(folder / name)


def perturbed(full: DataBundle, eps: float = 8 / 255, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    delta = (torch.rand(full.train.x.shape, generator=g) * 2 - 1) * eps
    return ((full.train.x + delta).clamp(0, 1) * 255).round() / 255


def from_files(data: DataBundle, **params: Any) -> torch.Tensor:
    return generate("from-files", data, **params)


def test_png_folder_round_trip_in_full_set_order(tmp_path: Path) -> None:
    full, sub, idx = full_and_subset()
    poisoned = perturbed(full)
    write_pngs(tmp_path / "pngs", poisoned)
    assert torch.equal(from_files(full, path=str(tmp_path / "pngs")), poisoned)
    out = from_files(sub, path=str(tmp_path / "pngs"), epsilon=8 / 255)
    assert torch.equal(out, poisoned[idx])  # files picked by Split.indices
    # zero-padded names and greyscale data (PNG converted to one channel)
    grey_full, grey_sub, idx = full_and_subset(shape=(1, 8, 8))
    grey = perturbed(grey_full)
    write_pngs(tmp_path / "grey", grey, [f"{i:05d}.png" for i in range(len(grey))])
    assert torch.equal(from_files(grey_sub, path=str(tmp_path / "grey")), grey[idx])


def test_png_folder_errors_name_the_file(tmp_path: Path) -> None:
    full, sub, _ = full_and_subset()
    with pytest.raises(DataError, match="does not exist"):
        from_files(full, path=str(tmp_path / "nowhere"))
    folder = tmp_path / "pngs"
    write_pngs(folder, perturbed(full))
    (folder / "11.png").unlink()
    (folder / "13.png").unlink()
    with pytest.raises(DataError, match=r"lacks 2 of the 6 .*11\.png, 13\.png"):
        from_files(sub, path=str(folder))
    Image.new("RGB", (16, 16)).save(folder / "11.png")
    write_pngs(folder, perturbed(full)[13:14], ["13.png"])
    with pytest.raises(DataError, match=r"11\.png is 16x16 pixels; expected 32x32"):
        from_files(sub, path=str(folder))
    write_pngs(folder, perturbed(full)[11:12], ["11.png"])
    write_pngs(folder, perturbed(full, eps=20 / 255)[4:5], ["4.png"])
    with pytest.raises(DataError, match=r"4\.png: perturbation L∞ .* exceeds epsilon"):
        from_files(sub, path=str(folder), epsilon=8 / 255)
    write_pngs(folder, perturbed(full)[4:5], ["04.png"])
    with pytest.raises(DataError, match=r"both"):
        from_files(sub, path=str(folder))


def test_tensor_perturbations_sample_and_class_wise(tmp_path: Path) -> None:
    full, sub, idx = full_and_subset()
    g = torch.Generator().manual_seed(1)
    delta = (torch.rand(full.train.x.shape, generator=g) * 2 - 1) * 8 / 255
    torch.save(delta, tmp_path / "full.pt")
    torch.save(delta[idx].clone(), tmp_path / "sub.pt")
    want = (sub.train.x + delta[idx]).clamp(0, 1)
    assert torch.equal(from_files(sub, path=str(tmp_path / "full.pt"), epsilon=8 / 255), want)
    assert torch.equal(from_files(sub, path=str(tmp_path / "sub.pt")), want)
    np.save(tmp_path / "full.npy", delta.numpy())
    assert torch.equal(from_files(sub, path=str(tmp_path / "full.npy")), want)
    classwise = (torch.rand((4, 3, 32, 32), generator=g) * 2 - 1) * 8 / 255
    torch.save(classwise, tmp_path / "class.pt")
    out = from_files(sub, path=str(tmp_path / "class.pt"))
    assert torch.equal(out, (sub.train.x + classwise[sub.train.y]).clamp(0, 1))


def test_tensor_images_need_an_explicit_mode_unless_unambiguous(tmp_path: Path) -> None:
    full, sub, idx = full_and_subset()
    images = perturbed(full)
    torch.save(images, tmp_path / "images.pt")
    with pytest.raises(DataError, match="tensor_mode"):
        from_files(sub, path=str(tmp_path / "images.pt"))
    assert torch.equal(
        from_files(sub, path=str(tmp_path / "images.pt"), tensor_mode="images"), images[idx]
    )
    torch.save((images * 255).round().to(torch.uint8), tmp_path / "images-u8.pt")
    assert torch.equal(
        from_files(sub, path=str(tmp_path / "images-u8.pt"), epsilon=8 / 255), images[idx]
    )
    # with as many images as classes, "auto" cannot tell sample-wise from class-wise
    both = rgb_bundle(classes=6, per_class=1)
    torch.save(torch.full((6, 3, 32, 32), -0.01), tmp_path / "six.pt")
    with pytest.raises(DataError, match="both the number of training images and of classes"):
        from_files(both, path=str(tmp_path / "six.pt"))
    assert from_files(both, path=str(tmp_path / "six.pt"), tensor_mode="class-wise").shape == (
        6,
        3,
        32,
        32,
    )


def test_tensor_errors_name_the_file(tmp_path: Path) -> None:
    full, sub, _ = full_and_subset()
    bad = tmp_path / "bad.pt"
    torch.save(torch.zeros(7, 3, 32, 32) - 0.01, bad)
    with pytest.raises(
        DataError,
        match=r"bad\.pt holds a tensor of shape \[7, 3, 32, 32\]; expected \[6, 3, 32, 32\]",
    ):
        from_files(sub, path=str(bad))
    torch.save(torch.zeros(20, 32, 32, 3) - 0.01, bad)
    with pytest.raises(DataError, match="channel-last"):
        from_files(sub, path=str(bad))
    nan = torch.zeros(20, 3, 32, 32) - 0.01
    nan[13, 0, 0, 0] = float("nan")
    torch.save(nan, bad)
    with pytest.raises(
        DataError, match=r"bad\.pt holds 1 NaN or infinite values \(first in row 13\)"
    ):
        from_files(sub, path=str(bad))
    torch.save(torch.full((20, 3, 32, 32), -10 / 255), bad)
    with pytest.raises(DataError, match=r"bad\.pt \(row 1\): perturbation L∞ .* exceeds epsilon"):
        from_files(sub, path=str(bad), epsilon=8 / 255)
    torch.save(torch.full((20, 3, 32, 32), -3.0), bad)
    with pytest.raises(DataError, match=r"expected \[-1, 1\]"):
        from_files(sub, path=str(bad))
    torch.save({"perturbation": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match=r"holds a dict with keys \['perturbation'\]"):
        from_files(sub, path=str(bad))
    torch.save({"obj": Path("/")}, bad)  # an arbitrary pickled object: refused, never unpickled
    with pytest.raises(DataError, match=r"weights_only"):
        from_files(sub, path=str(bad))
    with pytest.raises(DataError, match="kind 'tensor' expects a file"):
        from_files(sub, path=str(tmp_path), kind="tensor")


def test_ar_sequential_search_accepts_processes_as_the_authors_did(rgb: DataBundle) -> None:
    """The authors' rule: in sampling order, a process joins when every accepted process's
    residual filter responds to its field with at least 10 (on 3×32×32); seeded, repeatable."""
    from harness_plugins.poisons.ar import (
        AUTHORS_THRESHOLD,
        residual_filters,
        responses,
        search_sequential,
        stable_processes,
    )

    first = search_sequential(4, 3, 32, None, torch.Generator().manual_seed(0))
    again = search_sequential(4, 3, 32, None, torch.Generator().manual_seed(0))
    assert first.shape == (4, 3, 3, 3) and torch.equal(first, again)
    assert torch.allclose(first.sum(dim=(2, 3)), torch.ones(4, 3), atol=1e-5)
    # replaying the stream: each accepted process passed the threshold against the earlier ones
    stream = stable_processes(3, 32, torch.Generator().manual_seed(0))
    accepted: list[torch.Tensor] = []
    for process, field in stream:
        if accepted:
            r = responses(residual_filters(torch.stack(accepted)), field[None])
            if float(r.min()) < AUTHORS_THRESHOLD:
                continue
        accepted.append(process)
        if len(accepted) == 4:
            break
    assert torch.equal(torch.stack(accepted), first)
    poisoned = build("ar", search="sequential").generate(rgb, context(rgb))
    assert poisoned.shape == rgb.train.x.shape
