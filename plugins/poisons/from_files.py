"""Published poisons, read from disk instead of regenerated.

Authors publish their poisons in two shapes, and this plugin reads both so they can be scored as
they were released:

- a folder of PNG files named `<index>.png`, the perturbed training images in the order of the
  FULL training set (labels come from the clean set). When the harness runs on a subset, the
  files at the subset's positions (Split.indices) are read. Names may be zero-padded
  (`00042.png`); two names for one index are an error.
- one tensor saved with `torch.save` (read with `torch.load(weights_only=True)`, which never
  unpickles arbitrary objects) or a `.npy` array (read without pickle). It holds either
  perturbations δ, sample-wise [N, C, H, W] or class-wise [classes, C, H, W], or perturbed
  images [N, C, H, W]. N is the subset's length (rows in the subset's order) or, when the data
  is a subset, the full training-set length (rows picked by Split.indices).

Whether a tensor holds perturbations or images is the user's to say (`tensor_mode`); "auto"
decides only where the data leave no doubt:
- a uint8 tensor holds images (0..255);
- a floating tensor with a negative entry holds perturbations, sample-wise or class-wise by its
  number of rows (an error if that number fits both);
- a floating tensor with no negative entry is ambiguous (images in [0, 1] or a nonnegative
  perturbation) and is an error asking for tensor_mode.

Perturbations are added to the clean images and clipped to [0, 1]; images are used as they are.
With `epsilon`, the L∞ size of the perturbation (for images: the difference to the clean image)
is checked; quantised inputs (PNG, uint8) get half a grey level of tolerance. Every problem is a
DataError naming the file, what is wrong and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import Tensor

from harness.api import (
    DataBundle,
    DataError,
    Params,
    Poison,
    PoisonContext,
    PoisonRecord,
    hookimpl,
    run_in_threads,
)

PNG_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)
#: PIL modes whose values are not 8-bit levels: dividing them by 255 would be wrong
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
FLOAT_TOLERANCE = 1e-6
QUANTISED_TOLERANCE = 0.5 / 255 + 1e-6
SHOW_MISSING = 5


class FromFilesParams(Params):
    path: str = Field(
        description="folder of <index>.png files, or a tensor file (torch.save or .npy)"
    )
    kind: Literal["auto", "png-folder", "tensor"] = Field(
        default="auto", description="auto: a folder is a png-folder, a file a tensor"
    )
    tensor_mode: Literal["auto", "sample-wise", "class-wise", "images"] = Field(
        default="auto",
        description="what a tensor holds: sample-wise or class-wise perturbations, or perturbed "
        "images; auto decides only when unambiguous (see the plugin's documentation)",
    )
    epsilon: float | None = Field(
        default=None, gt=0, description="if set, fail when the perturbation's L∞ size exceeds it"
    )


def _index_files(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for entry in os.scandir(folder):
        match = PNG_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        index = int(match.group(1))
        if index in found:
            raise DataError(
                f"{folder}: both {found[index].name} and {entry.name} name training image {index}; "
                "expected one <index>.png file per image"
            )
        found[index] = Path(entry.path)
    return found


def _read_pngs(
    paths: Sequence[Path], channels: int, height: int, width: int, ctx: PoisonContext
) -> Tensor:
    """Decode PNGs into float32 [N, C, H, W] in [0, 1], checking each file's size and depth."""
    mode = "RGB" if channels == 3 else "L"
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)

    def decode(i: int) -> None:
        path = paths[i]
        try:
            with Image.open(path) as img:
                if img.size != (width, height):
                    raise DataError(
                        f"{path} is {img.size[0]}x{img.size[1]} pixels; expected "
                        f"{width}x{height}, the size of the training images"
                    )
                if img.mode in WIDE_MODES:
                    raise DataError(
                        f"{path} has PIL mode {img.mode} (more than 8 bits per value); "
                        "expected an 8-bit PNG (L, RGB, RGBA or palette)"
                    )
                if img.mode != mode:
                    img = img.convert(mode)
                pixels = np.asarray(img)
        except DataError:
            raise
        except Exception as exc:  # any decoder failure is a problem with that one file
            raise DataError(
                f"cannot read {path} as an image ({type(exc).__name__}: {exc})"
            ) from exc
        out[i] = pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]

    run_in_threads(
        len(paths),
        decode,
        chunk_size=256,  # in order: the first bad file raises
        on_chunk=lambda done, total: ctx.progress("reading PNG files", done / total),
    )
    return torch.from_numpy(out).to(torch.float32).div_(255.0)


def _load_tensor(path: Path) -> Tensor:
    try:
        if path.suffix.lower() == ".npy":
            obj = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        how = (
            "numpy.load(allow_pickle=False)"
            if path.suffix.lower() == ".npy"
            else (
                "torch.load(weights_only=True), which reads tensors but never unpickles arbitrary objects"
            )
        )
        raise DataError(f"cannot load {path} with {how} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Tensor):
        what = type(obj).__name__
        if isinstance(obj, dict):
            what += f" with keys {sorted(map(str, obj))[:10]}"
        raise DataError(
            f"{path} holds a {what}; expected a single tensor (save the tensor itself, e.g. "
            "torch.save(d['perturbation'], path))"
        )
    return obj


class FromFiles(Poison):
    """Reads a published poison (PNG folder or tensor) for the current training data."""

    cacheable = False  # reading is cheap, and a cached copy would hide a change of the files

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        if not data.is_image or tuple(data.value_range or ()) != (0.0, 1.0):
            raise DataError(
                f"from-files reads image poisons; data set {data.name!r} has inputs of shape "
                f"{data.input_shape} and value range {data.value_range} (expected [C, H, W] in [0, 1])"
            )
        path = Path(self.params.path).expanduser()
        if not path.exists():
            raise DataError(
                f"poison path {path} does not exist; expected a folder of <index>.png files or a "
                "tensor file saved with torch.save"
            )
        kind = self.params.kind
        if kind == "auto":
            kind = "png-folder" if path.is_dir() else "tensor"
        if kind == "png-folder" and not path.is_dir():
            raise DataError(
                f"{path} is a file; kind 'png-folder' expects a folder of <index>.png files"
            )
        if kind == "tensor" and path.is_dir():
            raise DataError(
                f"{path} is a folder; kind 'tensor' expects a file saved with torch.save"
            )
        if kind == "png-folder":
            return self._from_pngs(path, data, ctx)
        return self._from_tensor(path, data, ctx)

    # ---------------------------------------------------------------------------------- PNGs

    def _from_pngs(self, folder: Path, data: DataBundle, ctx: PoisonContext) -> Tensor:
        c, h, w = data.input_shape
        if c not in (1, 3):
            raise DataError(
                f"{folder}: PNG poisons need 1- or 3-channel data, these images have {c}"
            )
        indices = data.train.indices
        needed = indices.tolist() if indices is not None else list(range(len(data.train)))
        files = _index_files(folder)
        if not files:
            raise DataError(
                f"{folder} holds no <index>.png files (the perturbed training images, named by position)"
            )
        missing = [i for i in needed if i not in files]
        if missing:
            shown = ", ".join(f"{i}.png" for i in missing[:SHOW_MISSING])
            more = f" and {len(missing) - SHOW_MISSING} more" if len(missing) > SHOW_MISSING else ""
            raise DataError(
                f"{folder} lacks {len(missing)} of the {len(needed)} training images needed: "
                f"{shown}{more} (files are named by position in the full training set)"
            )
        paths = [files[i] for i in needed]
        images = _read_pngs(paths, c, h, w, ctx)
        self._check_epsilon(images - data.train.x, QUANTISED_TOLERANCE, lambda i: str(paths[i]))
        return images

    # -------------------------------------------------------------------------------- tensors

    def _from_tensor(self, path: Path, data: DataBundle, ctx: PoisonContext) -> Tensor:
        ctx.progress("loading tensor", 0.0)
        t = _load_tensor(path)
        c, h, w = data.input_shape
        n = len(data.train)
        k = data.num_classes
        indices = data.train.indices
        accepted = [
            f"[{n}, {c}, {h}, {w}] (one row per training image{' of this subset' if indices is not None else ''})"
        ]
        if indices is not None:
            accepted.append(
                f"[full training-set length (> {int(indices.max())}), {c}, {h}, {w}] (rows picked by position)"
            )
        accepted.append(f"[{k}, {c}, {h}, {w}] (class-wise perturbations)")
        expected = "expected " + " or ".join(accepted)
        shape = tuple(t.shape)
        if t.ndim != 4 or shape[1:] != (c, h, w):
            hint = ""
            if t.ndim == 4 and shape[1:] == (h, w, c):
                hint = "; it looks channel-last [N, H, W, C]: save it as t.permute(0, 3, 1, 2)"
            raise DataError(f"{path} holds a tensor of shape {list(shape)}; {expected}{hint}")
        rows = shape[0]
        sample_ok = rows == n or (indices is not None and rows > int(indices.max()))
        class_ok = rows == k
        if not (sample_ok or class_ok):
            raise DataError(f"{path} holds a tensor of shape {list(shape)}; {expected}")
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise DataError(
                f"{path} holds a {t.dtype} tensor; expected floating point values or uint8 images"
            )
        if t.is_floating_point():
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                first = int(torch.nonzero(bad.flatten(1).any(dim=1))[0])
                raise DataError(
                    f"{path} holds {int(bad.sum())} NaN or infinite values (first in row {first}); "
                    "expected finite values"
                )
        mode = self._tensor_mode(path, t, sample_ok, class_ok, rows)
        if mode == "images" and not sample_ok:
            raise DataError(
                f"{path}: images need one row per training image; shape {list(shape)}, {expected}"
            )
        if mode == "sample-wise" and not sample_ok:
            raise DataError(
                f"{path}: a sample-wise perturbation needs one row per training image; shape {list(shape)}, {expected}"
            )
        if mode == "class-wise" and not class_ok:
            raise DataError(
                f"{path}: a class-wise perturbation needs {k} rows, one per class; shape {list(shape)}"
            )

        if mode == "class-wise":
            chosen = t[data.train.y]
        elif rows == n:
            chosen = t
        else:
            chosen = t[indices]

        def where(i: int) -> str:
            """Names the row of the file that training image i came from."""
            if mode == "class-wise":
                return f"{path} (row {int(data.train.y[i])}, its class)"
            return f"{path} (row {i if rows == n else int(indices[i])})"

        if mode == "images":
            if t.dtype == torch.uint8:
                images = chosen.to(torch.float32) / 255.0
                tolerance = QUANTISED_TOLERANCE
            else:
                images = chosen.to(torch.float32)
                lo, hi = float(images.min()), float(images.max())
                if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
                    hint = (
                        " (0..255 pixels? divide by 255 or save as uint8)"
                        if hi <= 255 and lo >= 0
                        else ""
                    )
                    raise DataError(
                        f"{path}: image values lie in [{lo:.4g}, {hi:.4g}]; expected [0, 1]{hint}"
                    )
                images = images.clamp(0.0, 1.0)
                tolerance = FLOAT_TOLERANCE
            self._check_epsilon(images - data.train.x, tolerance, where)
            ctx.progress("done", 1.0)
            return images.contiguous()

        if t.dtype == torch.uint8:
            raise DataError(
                f"{path} holds uint8 values, which cannot be a perturbation (no negative values); "
                "expected a floating point tensor, or set tensor_mode to 'images'"
            )
        delta = chosen.to(torch.float32)
        lo, hi = float(delta.min()), float(delta.max())
        if lo < -1 - FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
            raise DataError(
                f"{path}: perturbation values lie in [{lo:.4g}, {hi:.4g}]; expected [-1, 1] for "
                "images in [0, 1] (if these are images, set tensor_mode to 'images')"
            )
        self._check_epsilon(delta, FLOAT_TOLERANCE, where)
        ctx.progress("done", 1.0)
        return (data.train.x + delta).clamp(0.0, 1.0)

    def _tensor_mode(
        self, path: Path, t: Tensor, sample_ok: bool, class_ok: bool, rows: int
    ) -> str:
        mode = self.params.tensor_mode
        if mode != "auto":
            return mode
        if t.dtype == torch.uint8:
            return "images"
        if bool((t < 0).any()):
            if sample_ok and class_ok:
                raise DataError(
                    f"{path} has {rows} rows, which is both the number of training images and "
                    "of classes; set tensor_mode to 'sample-wise' or 'class-wise'"
                )
            return "sample-wise" if sample_ok else "class-wise"
        raise DataError(
            f"{path} holds no negative values, so it may be perturbed images in [0, 1] or a "
            "nonnegative perturbation; set tensor_mode to 'images', 'sample-wise' or 'class-wise'"
        )

    def _check_epsilon(self, delta: Tensor, tolerance: float, where: Callable[[int], str]) -> None:
        """Fails on the first image whose L∞ difference exceeds epsilon (plus the tolerance)."""
        eps = self.params.epsilon
        if eps is None:
            return
        size = delta.flatten(1).abs().amax(dim=1)
        over = torch.nonzero(size > eps + tolerance).flatten()
        if len(over):
            i = int(over[0])
            raise DataError(
                f"{where(i)}: perturbation L∞ {float(size[i]):.5g} ({float(size[i]) * 255:.2f}/255) "
                f"exceeds epsilon {eps:.5g} ({eps * 255:.2f}/255); {len(over)} of {len(size)} "
                "images exceed it (the clean images must be the ones the poison was made from)"
            )


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="from-files",
            factory=FromFiles,
            params=FromFilesParams,
            description="a published poison read from a PNG folder or a saved tensor, not regenerated",
            paper="interoperability with published poisons (PNG folders <index>.png, torch.save tensors)",
            deviations=(
                "Nothing is generated: the result is whatever the files hold, checked for shape, "
                "size, finiteness, range and (with epsilon) L∞ size.",
                "A tensor with no negative values is not guessed to be images or perturbations: "
                "tensor_mode must say which.",
                "PNG files are converted to the data's channel count with PIL (RGB or L) and "
                "divided by 255; 16-bit PNGs are refused.",
            ),
        )
    ]
