"""Multi-task data sets: a procedurally generated one that needs no files, and Taskonomy from disk.

Dense and multi-task heads need images that carry several labels at once. Every data set here
fills `Split.targets` with the same conventions, so any head can read any of them:

* ``targets["segmentation"]``: int64 [N, H, W] class ids at input resolution, 255 = ignore;
  ``metadata["segmentation_classes"]`` (int) and ``metadata["segmentation_class_names"]``.
* ``targets["depth"]``: float32 [N, 1, H, W], invalid pixels 0 (valid depth > 0);
  ``metadata["depth_units"]``.
* ``targets["keypoints"]``: float32 heat maps [N, K, H, W] in [0, 1], one Gaussian bump per key
  point, an all-zero channel for an absent point; ``metadata["keypoints"]`` = K.
* ``targets["scene"]``: int64 [N]; ``metadata["scene_classes"]``.

`y` is always the sample's class, because subsets are stratified on it and class-wise poisons
key on it: the shape kind for shapes-multitask, the scene for Taskonomy. Inputs are float32
[N, 3, H, W] in [0, 1]. Nothing here downloads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator
from torch import Tensor

from harness.api import (
    BuildContext,
    DataBundle,
    DataError,
    DatasetRecord,
    Params,
    Split,
    Subset,
    hookimpl,
    run_in_threads,
    stratified_indices,
)

# Pillow < 9.1 has no Resampling enum; the module-level constants exist in every version.
_BILINEAR = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR
_NEAREST = Image.Resampling.NEAREST if hasattr(Image, "Resampling") else Image.NEAREST

IGNORE_INDEX = 255


# --------------------------------------------------------------------------------------------
# shapes-multitask

SHAPES = ("disc", "square", "triangle", "cross", "ring")
SCENES = ("horizontal-stripes", "vertical-stripes", "checkerboard", "blobs")
KEYPOINT_NAMES = ("top", "bottom", "left", "right", "centroid")


class ShapesMultitaskParams(Params):
    train: int = Field(default=2000, ge=1, description="number of training images")
    test: int = Field(default=500, ge=1, description="number of test images")
    size: int = Field(default=32, ge=16, le=64, description="image side in pixels")
    seed: int = Field(default=0, ge=0, description="seed of the generator (train and test differ)")
    sigma: float = Field(
        default=1.5, gt=0, le=16, description="key-point heat-map Gaussian sigma, in pixels"
    )


@dataclass
class _Rendered:
    x: np.ndarray  # float32 [N, 3, S, S]
    y: np.ndarray  # int64 [N] shape class
    scene: np.ndarray  # int64 [N]
    segmentation: np.ndarray  # int64 [N, S, S]
    depth: np.ndarray  # float32 [N, 1, S, S]
    keypoints: np.ndarray  # float32 [N, K, S, S]
    points: np.ndarray  # float64 [N, K, 2] (row, column) in pixels


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Labels with (almost) equal counts in random order, so chance level is exactly 1/k."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _contrasting(
    rng: np.random.Generator, avoid: Sequence[np.ndarray], distance: float
) -> np.ndarray:
    """Random RGB colours at least `distance` away from every colour of `avoid` (row by row).

    A shape the colour of its background would have no visible pixels, and a background whose
    two texture colours coincide would have no texture: both make a label unlearnable by chance.
    """
    n = avoid[0].shape[0]
    colour = rng.uniform(0.0, 1.0, (n, 3))
    for _ in range(64):
        close = np.zeros(n, dtype=bool)
        for other in avoid:
            close |= np.linalg.norm(colour - other, axis=1) < distance
        if not close.any():
            break
        colour[close] = rng.uniform(0.0, 1.0, (int(close.sum()), 3))
    return colour


def _texture(
    rng: np.random.Generator, scene: np.ndarray, freq: np.ndarray, size: int
) -> np.ndarray:
    """A pattern in [-1, 1] per image ([N, S, S]) whose family is the scene class.

    Frequency, phase and a small tilt are drawn per image so the scene is a texture family to
    recognise, not one template to match.
    """
    n = len(scene)
    coords = (np.arange(size) + 0.5) / size
    v = coords[None, :, None]  # rows, top to bottom
    u = coords[None, None, :]  # columns, left to right
    out = np.empty((n, size, size))
    tilt = rng.uniform(-0.25, 0.25, n)[:, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, (n, 2))[:, :, None, None]
    f = freq[:, None, None]
    for s in range(len(SCENES)):
        idx = np.flatnonzero(scene == s)
        if not len(idx):
            continue
        t, ph, fi = tilt[idx], phase[idx], f[idx]
        if s == 0:  # horizontal stripes: vary along the rows
            out[idx] = np.sin(2 * np.pi * fi * (v * np.cos(t) + u * np.sin(t)) + ph[:, 0])
        elif s == 1:  # vertical stripes: vary along the columns
            out[idx] = np.sin(2 * np.pi * fi * (u * np.cos(t) - v * np.sin(t)) + ph[:, 0])
        elif s == 2:  # checkerboard: product of the two, sharpened
            fc = 0.6 * fi
            a = np.sin(2 * np.pi * fc * (u * np.cos(t) - v * np.sin(t)) + ph[:, 0])
            b = np.sin(2 * np.pi * fc * (v * np.cos(t) + u * np.sin(t)) + ph[:, 1])
            out[idx] = np.tanh(4.0 * a * b)
        else:  # smooth blobs: a few signed Gaussians
            k = 4
            cy = rng.uniform(0.0, 1.0, (len(idx), k))[:, :, None, None]
            cx = rng.uniform(0.0, 1.0, (len(idx), k))[:, :, None, None]
            # farther blobs look smaller, as farther stripes look denser
            width = (rng.uniform(0.4, 0.7, (len(idx), k)) / fi[:, :, 0])[:, :, None, None]
            sign = rng.choice([-1.0, 1.0], (len(idx), k))[:, :, None, None]
            blobs = sign * np.exp(
                -((v[:, None] - cy) ** 2 + (u[:, None] - cx) ** 2) / (2 * width**2)
            )
            out[idx] = np.tanh(2.0 * blobs.sum(axis=1))
    return out


def _shape_masks(
    y: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, theta: np.ndarray, size: int
) -> np.ndarray:
    """Boolean masks [N, S, S] of each image's shape, drawn on pixel centres."""
    px = np.arange(size) + 0.5
    dx = px[None, None, :] - cx[:, None, None]
    dy = px[None, :, None] - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    a = c * dx + s * dy
    b = -s * dx + c * dy
    rr = r[:, None, None]
    dist2 = a**2 + b**2
    mask = np.zeros((len(y), size, size), dtype=bool)
    for k, name in enumerate(SHAPES):
        idx = y == k
        if not idx.any():
            continue
        ai, bi, ri, d2 = a[idx], b[idx], rr[idx], dist2[idx]
        if name == "disc":
            m = d2 <= ri**2
        elif name == "square":
            m = np.maximum(np.abs(ai), np.abs(bi)) <= 0.8 * ri
        elif name == "triangle":  # equilateral, circumradius 1.1 r: inradius is half of it
            m = np.ones_like(ai, dtype=bool)
            for j in range(3):
                phi = np.pi / 2 + j * 2 * np.pi / 3
                m &= ai * np.cos(phi) + bi * np.sin(phi) <= 0.55 * ri
        elif name == "cross":
            arm = 0.3 * ri
            m = ((np.abs(ai) <= arm) & (np.abs(bi) <= ri)) | (
                (np.abs(bi) <= arm) & (np.abs(ai) <= ri)
            )
        else:  # ring
            m = (d2 <= ri**2) & (d2 >= (0.55 * ri) ** 2)
        mask[idx] = m
    return mask


def _median_true(line: np.ndarray) -> np.ndarray:
    """Per row of a boolean [N, S] array, the index of its middle True entry (always a True one)."""
    cum = np.cumsum(line, axis=1)
    target = (cum[:, -1] + 1) // 2
    return np.argmax(cum >= target[:, None], axis=1)


def _key_points(mask: np.ndarray) -> np.ndarray:
    """(row, column) of the top-, bottom-, left-, right-most shape pixels and the centroid: [N, 5, 2].

    Among the pixels of the extreme row (column) the middle one is taken, so the point is
    well defined and always lies on the shape.
    """
    n, size, _ = mask.shape
    rows = np.arange(n)
    row_any = mask.any(axis=2)
    col_any = mask.any(axis=1)
    top = np.argmax(row_any, axis=1)
    bottom = size - 1 - np.argmax(row_any[:, ::-1], axis=1)
    left = np.argmax(col_any, axis=1)
    right = size - 1 - np.argmax(col_any[:, ::-1], axis=1)
    points = np.empty((n, 5, 2))
    points[:, 0] = np.stack([top, _median_true(mask[rows, top, :])], axis=1)
    points[:, 1] = np.stack([bottom, _median_true(mask[rows, bottom, :])], axis=1)
    points[:, 2] = np.stack([_median_true(mask[rows, :, left]), left], axis=1)
    points[:, 3] = np.stack([_median_true(mask[rows, :, right]), right], axis=1)
    count = mask.sum(axis=(1, 2))
    grid = np.arange(size)
    points[:, 4, 0] = (mask.sum(axis=2) * grid).sum(axis=1) / count
    points[:, 4, 1] = (mask.sum(axis=1) * grid).sum(axis=1) / count
    return points


def gaussian_heatmaps(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Heat maps [N, K, S, S] with a Gaussian of peak 1 at each (row, column) point; NaN: all zero.

    Separable (one row profile times one column profile), so 2,500 x 5 maps cost milliseconds.
    """
    grid = np.arange(size, dtype=np.float32)
    pts = np.nan_to_num(points.astype(np.float32), nan=np.float32(-1e4))
    row = np.exp(-((grid - pts[..., 0:1]) ** 2) / np.float32(2 * sigma**2))  # [N, K, S]
    col = np.exp(-((grid - pts[..., 1:2]) ** 2) / np.float32(2 * sigma**2))
    return (row[..., :, None] * col[..., None, :]).astype(np.float32)


def render_shapes(n: int, size: int, rng: np.random.Generator, sigma: float) -> _Rendered:
    """Draw `n` images with every target; all randomness comes from `rng`."""
    y = _balanced(rng, n, len(SHAPES))
    scene = _balanced(rng, n, len(SCENES))

    # Background depth: a plane tilted in a direction set by the scene (floor, wall to the
    # right, wall to the left, ceiling), with a random slope and distance. The texture's
    # frequency grows with the distance, as under perspective, so depth can be read off the
    # image instead of being pure noise around the scene's mean.
    base = rng.uniform(4.0, 7.0, n)
    direction = np.array([np.pi / 2, 0.0, np.pi, -np.pi / 2])[scene] + rng.uniform(-0.4, 0.4, n)
    slope = rng.uniform(0.5, 1.5, n)
    gx, gy = -slope * np.cos(direction), -slope * np.sin(direction)
    coords = (np.arange(size) + 0.5) / size
    plane = (
        base[:, None, None]
        + gx[:, None, None] * (coords[None, None, :] - 0.5)
        + gy[:, None, None] * (coords[None, :, None] - 0.5)
    )
    freq = 3.2 * base / 5.5 * rng.uniform(0.9, 1.1, n)
    pattern = _texture(rng, scene, freq, size)
    c0 = rng.uniform(0.0, 1.0, (n, 3))
    c1 = _contrasting(rng, [c0], 0.45)
    weight = (pattern + 1.0)[:, None] / 2.0  # [N, 1, S, S]
    image = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * weight

    # Foreground shape, kept inside the frame (a square's corner reaches 1.13 r).
    r = rng.uniform(0.2, 0.3, n) * size
    margin = 1.15 * r + 0.5
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    mask = _shape_masks(y, cx, cy, r, theta, size)
    colour = _contrasting(rng, [c0, c1, (c0 + c1) / 2], 0.35)
    # a light vertical shading, so a shape is not one flat colour
    tilt = rng.uniform(-0.15, 0.15, n)[:, None, None]
    shade = (
        1.0 + tilt * (np.arange(size)[None, :, None] + 0.5 - cy[:, None, None]) / r[:, None, None]
    )
    fg = np.clip(colour[:, :, None, None] * shade[:, None], 0.0, 1.0)
    image = np.where(mask[:, None], fg, image)
    image += rng.normal(0.0, 0.03, image.shape)
    x = np.clip(image, 0.0, 1.0).astype(np.float32)

    near = plane[
        np.arange(n), np.clip(cy.astype(int), 0, size - 1), np.clip(cx.astype(int), 0, size - 1)
    ]
    # a larger shape is nearer (as under perspective), so its depth can be read from its size
    shape_depth = near - (1.0 + 10.0 * (r / size - 0.2) + rng.uniform(-0.1, 0.1, n))
    depth = np.where(mask, shape_depth[:, None, None], plane).astype(np.float32)[:, None]

    segmentation = np.where(mask, 1 + y[:, None, None], 0).astype(np.int64)
    points = _key_points(mask)
    return _Rendered(
        x=x,
        y=y,
        scene=scene,
        segmentation=segmentation,
        depth=depth,
        keypoints=gaussian_heatmaps(points, size, sigma),
        points=points,
    )


def _rendered_split(rendered: _Rendered) -> Split:
    return Split(
        torch.from_numpy(rendered.x),
        torch.from_numpy(rendered.y),
        None,
        {
            "segmentation": torch.from_numpy(rendered.segmentation),
            "depth": torch.from_numpy(rendered.depth),
            "keypoints": torch.from_numpy(rendered.keypoints),
            "scene": torch.from_numpy(rendered.scene),
        },
    )


def load_shapes_multitask(
    params: ShapesMultitaskParams, context: BuildContext | None = None
) -> DataBundle:
    """A multi-task image set that every task can learn on a CPU in seconds, with no files.

    Train and test come from separate seeded streams, so the test set does not change when the
    number of training images does.
    """
    train = render_shapes(
        params.train, params.size, np.random.default_rng([params.seed, 0]), params.sigma
    )
    test = render_shapes(
        params.test, params.size, np.random.default_rng([params.seed, 1]), params.sigma
    )
    return DataBundle(
        name="shapes-multitask",
        train=_rendered_split(train),
        test=_rendered_split(test),
        classes=list(SHAPES),
        value_range=(0.0, 1.0),
        metadata={
            "source": "procedurally generated (harness_plugins.multitask_data)",
            **params.model_dump(),
            "segmentation_classes": 1 + len(SHAPES),
            "segmentation_class_names": ["background", *SHAPES],
            "depth_units": "synthetic units",
            "keypoints": len(KEYPOINT_NAMES),
            "keypoint_names": list(KEYPOINT_NAMES),
            "keypoint_sigma": params.sigma,
            "scene_classes": list(SCENES),
        },
    )


# --------------------------------------------------------------------------------------------
# taskonomy

Domain = Literal["segmentation", "depth", "keypoints", "scene"]
ALL_DOMAINS: tuple[Domain, ...] = ("segmentation", "depth", "keypoints", "scene")

# target name -> (folder under root, the domain tag in file names, extension)
_DOMAIN_FILES: dict[str, tuple[str, str, str]] = {
    "segmentation": ("segment_semantic", "segmentsemantic", ".png"),
    "depth": ("depth_euclidean", "depth_euclidean", ".png"),
    "keypoints": ("keypoints2d", "keypoints2d", ".png"),
    "scene": ("class_scene", "class_scene", ".npy"),
}
_RGB_NAME = re.compile(r"^point_(\d+)_view_(\d+)_domain_rgb\.png$")
DEPTH_SCALE = 512.0  # Taskonomy stores depth as metres x 512
DEPTH_INVALID = 65535

TASKONOMY_LAYOUT = (
    "expected layout: <root>/rgb/<building>/point_<p>_view_<v>_domain_rgb.png with, per "
    "requested domain, <root>/segment_semantic/<building>/point_<p>_view_<v>_domain_segmentsemantic.png, "
    "<root>/depth_euclidean/<building>/point_<p>_view_<v>_domain_depth_euclidean.png, "
    "<root>/keypoints2d/<building>/point_<p>_view_<v>_domain_keypoints2d.png, and always "
    "<root>/class_scene/<building>/point_<p>_view_<v>_domain_class_scene.npy (the scene is y)"
)


class TaskonomyParams(Params):
    root: str = Field(
        description="folder holding rgb/, segment_semantic/, depth_euclidean/, keypoints2d/, class_scene/"
    )
    domains: list[Domain] = Field(
        default_factory=lambda: list(ALL_DOMAINS),
        description="targets to load; class_scene is read in any case, since the scene is y",
    )
    size: int = Field(
        default=64, ge=8, le=1024, description="side every image and map is resized to"
    )
    test_buildings: list[str] | None = Field(
        default=None,
        description="buildings held out for test; None: the last 20% of the sorted names (at least one)",
    )
    segmentation_classes: int = Field(
        default=18, ge=1, le=255, description="class ids at or above this become 255 (ignored)"
    )
    max_per_building: int | None = Field(
        default=None,
        gt=0,
        description="keep only the first N views (sorted by point, view) of each building",
    )

    @field_validator("domains")
    @classmethod
    def _unique_domains(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"domains {value} name a domain twice")
        return value

    @field_validator("test_buildings")
    @classmethod
    def _some_test_buildings(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("test_buildings is empty; leave it out for the default split")
        return value


@dataclass(frozen=True)
class _View:
    building: str
    stem: str  # point_<p>_view_<v>
    rgb: Path

    def label(self, root: Path, domain: str) -> Path:
        folder, tag, ext = _DOMAIN_FILES[domain]
        return root / folder / self.building / f"{self.stem}_domain_{tag}{ext}"


def _list_views(root: Path, max_per_building: int | None) -> dict[str, list[_View]]:
    """The RGB views of every building, sorted numerically by point then view."""
    if not root.is_dir():
        raise DataError(f"taskonomy root {root} does not exist; {TASKONOMY_LAYOUT}")
    rgb = root / "rgb"
    if not rgb.is_dir():
        raise DataError(f"taskonomy RGB folder {rgb} does not exist; {TASKONOMY_LAYOUT}")
    views: dict[str, list[_View]] = {}
    for entry in sorted(os.scandir(rgb), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        found = []
        for name in os.listdir(entry.path):
            match = _RGB_NAME.match(name)
            if match:
                found.append(((int(match[1]), int(match[2])), name))
        found.sort()
        if max_per_building is not None:
            found = found[:max_per_building]
        if found:
            views[entry.name] = [
                _View(entry.name, name[: -len("_domain_rgb.png")], Path(entry.path, name))
                for _, name in found
            ]
    if not views:
        raise DataError(
            f"taskonomy RGB folder {rgb} holds no point_<p>_view_<v>_domain_rgb.png files; {TASKONOMY_LAYOUT}"
        )
    return views


def _check_labels(root: Path, views: dict[str, list[_View]], domains: Sequence[str]) -> None:
    """Fail before decoding anything when a view lacks one of its label files.

    One directory listing per building and domain, not one stat per file, keeps this cheap on
    the full release.
    """
    for domain in domains:
        folder = root / _DOMAIN_FILES[domain][0]
        if not folder.is_dir():
            raise DataError(
                f"taskonomy {domain} folder {folder} does not exist; {TASKONOMY_LAYOUT}"
            )
        for building, items in views.items():
            present = set(os.listdir(folder / building)) if (folder / building).is_dir() else set()
            for view in items:
                path = view.label(root, domain)
                if path.name not in present:
                    raise DataError(
                        f"taskonomy {domain} label {path} is missing (for {view.rgb}); {TASKONOMY_LAYOUT}"
                    )


def _read_scene(path: Path) -> int:
    try:
        scores = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read scene scores {path} ({type(exc).__name__}: {exc})") from exc
    scores = np.asarray(scores).reshape(-1)
    if scores.size == 0 or not np.issubdtype(scores.dtype, np.number):
        raise DataError(
            f"scene scores {path} hold no numbers (shape {scores.shape}, dtype {scores.dtype})"
        )
    return int(np.argmax(scores))


def _open(path: Path, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:
        raise DataError(f"cannot read {what} {path} ({type(exc).__name__}: {exc})") from exc
    return img


def _resize(img: Image.Image, size: int, resample: int) -> Image.Image:
    # Pillow's resampling filters widen with the scale factor, so shrinking is antialiased.
    return img if img.size == (size, size) else img.resize((size, size), resample)


def _is_16bit(img: Image.Image) -> bool:
    return img.mode.startswith("I;16") or img.mode == "I"


def read_rgb(path: Path, size: int) -> np.ndarray:
    """uint8 [3, size, size]."""
    img = _open(path, "RGB image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(_resize(img, size, _BILINEAR)).transpose(2, 0, 1)


def read_segmentation(path: Path, size: int, classes: int) -> np.ndarray:
    """int64 [size, size] class ids, 255 where the id is not one of the `classes` first ones."""
    img = _open(path, "segmentation")
    if img.mode in ("RGB", "RGBA", "LA"):
        channels = np.asarray(img)
        if img.mode != "LA" and not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise DataError(
                f"segmentation {path} is a colour image ({img.mode}); expected 8-bit class ids in one channel"
            )
        img = img.getchannel(0)
    labels = np.asarray(_resize(img, size, _NEAREST)).astype(np.int64)
    labels[(labels >= classes) | (labels < 0)] = IGNORE_INDEX
    return labels


def read_depth(path: Path, size: int) -> np.ndarray:
    """float32 [size, size] in metres; the invalid code 65535 (and 0) become 0."""
    img = _open(path, "depth map")
    if not _is_16bit(img):
        raise DataError(
            f"depth map {path} has PIL mode {img.mode!r}; expected a 16-bit single-channel PNG"
        )
    raw = np.asarray(_resize(img, size, _NEAREST)).astype(np.float32)
    return np.where(raw >= DEPTH_INVALID, np.float32(0.0), raw / np.float32(DEPTH_SCALE))


def read_keypoints(path: Path, size: int) -> np.ndarray:
    """float32 [size, size] in [0, 1]: the 16-bit response divided by 65535 (8-bit by 255)."""
    img = _open(path, "key-point map")
    if _is_16bit(img):
        scale = 65535.0
    elif img.mode == "L":
        scale = 255.0
    else:
        raise DataError(
            f"key-point map {path} has PIL mode {img.mode!r}; expected a single-channel PNG"
        )
    values = np.asarray(img).astype(np.float32) / np.float32(scale)
    resized = np.asarray(_resize(Image.fromarray(values), size, _BILINEAR))
    return np.clip(resized, 0.0, 1.0)


def _decode_views(
    root: Path, views: Sequence[_View], y: np.ndarray, params: TaskonomyParams
) -> tuple[Tensor, dict[str, Tensor]]:
    n, size = len(views), params.size
    x = np.empty((n, 3, size, size), dtype=np.uint8)
    seg = np.empty((n, size, size), dtype=np.int64) if "segmentation" in params.domains else None
    depth = np.empty((n, 1, size, size), dtype=np.float32) if "depth" in params.domains else None
    keys = np.empty((n, 1, size, size), dtype=np.float32) if "keypoints" in params.domains else None

    def decode(i: int) -> None:
        view = views[i]
        x[i] = read_rgb(view.rgb, size)
        if seg is not None:
            seg[i] = read_segmentation(
                view.label(root, "segmentation"), size, params.segmentation_classes
            )
        if depth is not None:
            depth[i, 0] = read_depth(view.label(root, "depth"), size)
        if keys is not None:
            keys[i, 0] = read_keypoints(view.label(root, "keypoints"), size)

    run_in_threads(n, decode, chunk_size=64)
    targets: dict[str, Tensor] = {}
    if seg is not None:
        targets["segmentation"] = torch.from_numpy(seg)
    if depth is not None:
        targets["depth"] = torch.from_numpy(depth)
    if keys is not None:
        targets["keypoints"] = torch.from_numpy(keys)
    if "scene" in params.domains:
        targets["scene"] = torch.as_tensor(y, dtype=torch.int64).clone()
    return torch.from_numpy(x).to(torch.float32).div_(255.0), targets


def _load_taskonomy_split(
    root: Path,
    views: list[_View],
    y: np.ndarray,
    size: int | None,
    seed: int,
    params: TaskonomyParams,
) -> Split:
    # Same rule as harness.data.subset, so a pre-decode subset equals the one the core would draw.
    if size is None or size >= len(views):
        x, targets = _decode_views(root, views, y, params)
        return Split(x, torch.as_tensor(y, dtype=torch.int64), None, targets)
    chosen = stratified_indices(y, size, seed)
    x, targets = _decode_views(root, [views[i] for i in chosen], y[chosen], params)
    return Split(
        x,
        torch.as_tensor(y[chosen], dtype=torch.int64),
        torch.as_tensor(chosen, dtype=torch.int64),
        targets,
    )


def _split_buildings(
    buildings: list[str], test_buildings: list[str] | None, rgb: Path
) -> tuple[list[str], list[str]]:
    """Hold whole buildings out, so test views never share a room with training views."""
    if test_buildings is None:
        if len(buildings) < 2:
            raise DataError(
                f"taskonomy RGB folder {rgb} holds one building ({buildings[0]}); a train/test split "
                "by building needs at least two"
            )
        k = max(1, int(len(buildings) * 0.2))
        test = buildings[-k:]
    else:
        unknown = [b for b in test_buildings if b not in buildings]
        if unknown:
            raise DataError(
                f"test_buildings {unknown} have no RGB views under {rgb}; buildings found: {', '.join(buildings)}"
            )
        test = [b for b in buildings if b in test_buildings]
    train = [b for b in buildings if b not in test]
    if not train:
        raise DataError(
            f"every building under {rgb} is a test building; leave at least one for training"
        )
    return train, test


def load_taskonomy(params: TaskonomyParams, context: BuildContext | None = None) -> DataBundle:
    """Taskonomy (e.g. the "tiny" split) from a local folder, split by building.

    All scene score files are read first (they are tiny and y is needed to stratify the
    subset), then only the views the core's `subset` request chooses are decoded, exactly as
    image-folder does. Scene labels are remapped to 0..S-1 over those present in the folder.
    """
    root = Path(params.root).expanduser()
    sub = (context.subset if context is not None else None) or Subset()
    train_size, test_size, seed = sub.train, sub.test, sub.seed
    views = _list_views(root, params.max_per_building)
    _check_labels(root, views, list(dict.fromkeys([*params.domains, "scene"])))
    train_buildings, test_buildings = _split_buildings(
        list(views), params.test_buildings, root / "rgb"
    )
    train_views = [v for b in train_buildings for v in views[b]]
    test_views = [v for b in test_buildings for v in views[b]]

    every = train_views + test_views
    raw = np.empty(len(every), dtype=np.int64)

    def read(i: int) -> None:
        raw[i] = _read_scene(every[i].label(root, "scene"))

    run_in_threads(len(every), read, chunk_size=64)
    present = np.unique(raw)
    y = np.searchsorted(present, raw).astype(np.int64)
    scene_names = [f"scene-{int(c)}" for c in present]

    train = _load_taskonomy_split(
        root, train_views, y[: len(train_views)], train_size, seed, params
    )
    test = _load_taskonomy_split(root, test_views, y[len(train_views) :], test_size, seed, params)
    metadata: dict[str, Any] = {
        "root": str(root),
        "domains": list(params.domains),
        "size": params.size,
        "train_buildings": train_buildings,
        "test_buildings": test_buildings,
        "train_files": len(train_views),
        "test_files": len(test_views),
        "scene_classes": scene_names,
        "scene_original_indices": [int(c) for c in present],
    }
    if "segmentation" in params.domains:
        metadata["segmentation_classes"] = params.segmentation_classes
        metadata["segmentation_class_names"] = [
            f"class-{i}" for i in range(params.segmentation_classes)
        ]
    if "depth" in params.domains:
        metadata["depth_units"] = "metres"
    if "keypoints" in params.domains:
        metadata["keypoints"] = 1
        metadata["keypoint_names"] = ["keypoints2d"]
    return DataBundle(
        name="taskonomy",
        train=train,
        test=test,
        classes=scene_names,
        value_range=(0.0, 1.0),
        metadata=metadata,
    )


# --------------------------------------------------------------------------------------------


@hookimpl
def harness_register_datasets() -> list[DatasetRecord]:
    return [
        DatasetRecord(
            name="shapes-multitask",
            factory=load_shapes_multitask,
            params=ShapesMultitaskParams,
            description="generated shapes on textured scenes: class, scene, segmentation, depth and key points; no files",
        ),
        DatasetRecord(
            name="taskonomy",
            factory=load_taskonomy,
            params=TaskonomyParams,
            description="Taskonomy views from a local folder (RGB, semantic segmentation, depth, 2D key points, scene), split by building",
        ),
    ]
