"""First-party data sets: scikit-learn toy sets, CIFAR-10/100 from disk, and any ImageFolder tree.

Nothing here downloads: the machines the harness runs on have no network, so every data set that
is not bundled with a library is read from a local path and a missing one fails with a message
that says exactly which path was expected. Subsetting is the core's job (it must be identical
for every data set); `cifar10`, `cifar100` and `image-folder` accept the core's subset request
(`context.subset`, drawn with the core's own `stratified_indices`) so that a 500-image run
neither converts nor decodes 60,000 images first.

Images that are 8-bit at the source (CIFAR's pickles, image files) are kept as uint8, 4× smaller
than float32 and converted per batch with the same division as before, so the values are
unchanged. A split larger than `context.storage`'s memory budget is written once into the cache
as a uint8 array and streamed from disk (`store_pixels`); image folders decode straight into
that file, a chunk at a time, so the whole split is never in memory.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field, model_validator
from torch import Tensor

from harness.api import (
    BuildContext,
    DataBundle,
    DataError,
    DatasetRecord,
    DiskImages,
    Params,
    Split,
    StoragePolicy,
    Subset,
    hookimpl,
    run_in_threads,
    storage_key,
    store_pixels,
    stratified_indices,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Pillow < 9.1 has no Resampling enum; the module-level constant exists in every version.
_BILINEAR = Image.Resampling.BILINEAR if hasattr(Image, "Resampling") else Image.BILINEAR


def _to_split(x: np.ndarray, y: np.ndarray, indices: np.ndarray | None = None) -> Split:
    return Split(
        torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32)),
        torch.as_tensor(np.asarray(y, dtype=np.int64)),
        None if indices is None else torch.as_tensor(np.asarray(indices, dtype=np.int64)),
    )


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test positions of a fixed stratified split.

    Sorting keeps each split in the source's order, so the split is a pure membership decision
    and two runs with the same seed see the same samples in the same order.
    """
    from sklearn.model_selection import train_test_split

    try:
        train, test = train_test_split(
            np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed
        )
    except ValueError as exc:  # e.g. a test fraction too small to hold one sample per class
        raise DataError(
            f"cannot make a stratified split with test_fraction={test_fraction}: {exc}"
        ) from exc
    return np.sort(train), np.sort(test)


# --------------------------------------------------------------------------------------------
# digits


class DigitsParams(Params):
    test_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="share of samples held out for test"
    )
    split_seed: int = Field(default=0, ge=0, description="seed of the stratified train/test split")


def load_digits_bundle(params: DigitsParams, context: BuildContext | None = None) -> DataBundle:
    """scikit-learn's bundled 8x8 digits: a real image task that trains in seconds on a CPU.

    It ships no train/test split, so one is fixed here by `split_seed`; pixel counts 0..16 are
    scaled to [0, 1] so pixel-space poisons use the same budgets as on CIFAR.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    train, test = _stratified_split(y, params.test_fraction, params.split_seed)
    return DataBundle(
        name="digits",
        train=_to_split(x[train], y[train]),
        test=_to_split(x[test], y[test]),
        classes=[str(i) for i in range(10)],
        value_range=(0.0, 1.0),
        metadata={
            "source": "sklearn.datasets.load_digits",
            "test_fraction": params.test_fraction,
            "split_seed": params.split_seed,
        },
    )


# --------------------------------------------------------------------------------------------
# make-classification


class MakeClassificationParams(Params):
    """The paper's synthetic task, built with sklearn.datasets.make_classification.

    The paper states 5,000 samples, 12 features and 10 classes but not `n_informative`.
    scikit-learn's default of 2 informative features cannot make 10 classes (it needs
    n_classes * n_clusters_per_class <= 2**n_informative), so 6 is used; every other generator
    argument keeps scikit-learn's default. `random_state` seeds the generator and the split.
    """

    n_samples: int = Field(default=5000, gt=1)
    n_features: int = Field(default=12, gt=0)
    n_informative: int = Field(default=6, gt=0)
    n_redundant: int = Field(default=2, ge=0)
    n_repeated: int = Field(default=0, ge=0)
    n_classes: int = Field(default=10, ge=2)
    n_clusters_per_class: int = Field(default=2, gt=0)
    flip_y: float = Field(default=0.01, ge=0, le=1)
    class_sep: float = Field(default=1.0, gt=0)
    random_state: int = Field(default=0, ge=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _feasible(self) -> MakeClassificationParams:
        # Checked here so a spec fails at validation time, not minutes into a run.
        clusters = self.n_classes * self.n_clusters_per_class
        if clusters > 2**self.n_informative:
            raise ValueError(
                f"n_classes * n_clusters_per_class = {self.n_classes} * {self.n_clusters_per_class}"
                f" = {clusters} exceeds 2**n_informative = {2**self.n_informative}: "
                "make_classification puts each cluster on its own hypercube vertex, so raise "
                "n_informative or lower n_clusters_per_class"
            )
        used = self.n_informative + self.n_redundant + self.n_repeated
        if used > self.n_features:
            raise ValueError(
                f"n_informative + n_redundant + n_repeated = {used} exceeds n_features = "
                f"{self.n_features}"
            )
        return self


def load_make_classification(
    params: MakeClassificationParams, context: BuildContext | None = None
) -> DataBundle:
    """Feature vectors, not images: value_range is None so pixel clamping never applies."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=params.n_samples,
        n_features=params.n_features,
        n_informative=params.n_informative,
        n_redundant=params.n_redundant,
        n_repeated=params.n_repeated,
        n_classes=params.n_classes,
        n_clusters_per_class=params.n_clusters_per_class,
        flip_y=params.flip_y,
        class_sep=params.class_sep,
        random_state=params.random_state,
    )
    train, test = _stratified_split(y, params.test_fraction, params.random_state)
    return DataBundle(
        name="make-classification",
        train=_to_split(x[train], y[train]),
        test=_to_split(x[test], y[test]),
        classes=[str(i) for i in range(params.n_classes)],
        value_range=None,
        metadata={"source": "sklearn.datasets.make_classification", **params.model_dump()},
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 in torchvision's on-disk (python pickle) layout


class CifarParams(Params):
    root: str = Field(
        description="folder holding cifar-10-batches-py / cifar-100-python, or that folder itself"
    )


_CIFAR = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
        "labels_key": "labels",
        "torchvision": "CIFAR10",
        "archive": "cifar-10-python.tar.gz",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
        "labels_key": "fine_labels",
        "torchvision": "CIFAR100",
        "archive": "cifar-100-python.tar.gz",
    },
}


def _cifar_folder(root: Path, spec: Mapping[str, Any]) -> Path:
    """Accept both the torchvision `root` and the extracted folder itself, as users pass either."""
    folder = spec["folder"]
    if root.name == folder:
        return root
    if (root / folder).is_dir():
        return root / folder
    if root.is_dir() and all((root / f).is_file() for f in (*spec["train"], spec["meta"])):
        return root  # the extracted folder under another name
    return root / folder


def _missing_cifar(path: Path, spec: Mapping[str, Any]) -> DataError:
    files = ", ".join([*spec["train"], *spec["test"], spec["meta"]])
    return DataError(
        f"{spec['title']} not found: expected {path}. No download is attempted (no network). "
        f"Extract the python version ({spec['archive']}) so that the layout is the one "
        f"torchvision.datasets.{spec['torchvision']}(root, download=False) reads: "
        f"<root>/{spec['folder']}/ holding {files}; then set root to <root> or to that folder."
    )


def _unpickle(path: Path) -> dict:
    # Same trust model as torchvision: these pickles are the official release, read from a path
    # the user chose. latin1 turns the Python 2 byte strings into str keys.
    try:
        with path.open("rb") as handle:
            content = pickle.load(handle, encoding="latin1")
    except Exception as exc:  # any failure to unpickle means the file is not a CIFAR batch
        raise DataError(
            f"{path} is not a readable CIFAR pickle ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(content, dict):
        raise DataError(f"{path} does not hold a dict, as a CIFAR pickle does")
    return content


def _cifar_batches(
    folder: Path, names: Sequence[str], labels_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        batch = _unpickle(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch[labels_key], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"{path} has no {exc.args[0]!r} entry") from exc
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
            raise DataError(
                f"{path} holds data of shape {data.shape} and labels of shape {labels.shape}; "
                "expected [N, 3072] and [N]"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{path} has labels outside 0..{num_classes - 1}")
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys)


def _chosen(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray | None:
    """The core's stratified subset of a split (None: all of it), drawn as harness.data.subset does."""
    if size is None or size >= len(labels):
        return None
    return stratified_indices(labels, size, seed)


def _files_identity(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """What a cached copy of decoded files depends on: each file's path, size and mtime."""
    out = []
    for path in paths:
        stat = path.stat()
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return out


def _pixel_split(
    pixels: np.ndarray,
    labels: np.ndarray,
    size: int | None,
    seed: int,
    policy: StoragePolicy | None,
    identity: object,
) -> Split:
    """uint8 images with the core's subset taken before anything is converted or stored."""
    chosen = _chosen(labels, size, seed)
    rows = pixels if chosen is None else pixels[chosen]
    if (policy or StoragePolicy()).fits(rows.nbytes):
        stored: Tensor | DiskImages = torch.from_numpy(np.ascontiguousarray(rows))
    else:
        stored = store_pixels(
            tuple(rows.shape),
            lambda start, stop: rows[start:stop],
            policy,
            storage_key(identity, None if chosen is None else chosen.tolist()),
        )
    if chosen is None:
        return Split(stored, torch.as_tensor(labels))
    return Split(
        stored, torch.as_tensor(labels[chosen]), torch.as_tensor(chosen, dtype=torch.int64)
    )


def _load_cifar(key: str, params: CifarParams, context: BuildContext | None) -> DataBundle:
    spec = _CIFAR[key]
    root = Path(params.root).expanduser()
    folder = _cifar_folder(root, spec)
    if not folder.is_dir():
        raise _missing_cifar(folder, spec)
    for name in (*spec["train"], *spec["test"], spec["meta"]):
        if not (folder / name).is_file():
            raise _missing_cifar(folder / name, spec)
    meta_path = folder / spec["meta"]
    meta = _unpickle(meta_path)
    if spec["names_key"] not in meta:
        raise DataError(f"{meta_path} has no {spec['names_key']!r} entry")
    classes = [str(c) for c in meta[spec["names_key"]]]
    sub = (context.subset if context is not None else None) or Subset()
    policy = context.storage if context is not None else None
    splits = []
    for part, size in (("train", sub.train), ("test", sub.test)):
        names = spec[part]
        x, y = _cifar_batches(folder, names, spec["labels_key"], len(classes))
        identity = (key, part, _files_identity([folder / name for name in names]))
        splits.append(_pixel_split(x, y, size, sub.seed, policy, identity))
    return DataBundle(
        name=key,
        train=splits[0],
        test=splits[1],
        classes=classes,
        value_range=(0.0, 1.0),
        metadata={"root": str(folder)},
    )


def load_cifar10(params: CifarParams, context: BuildContext | None = None) -> DataBundle:
    """CIFAR-10 read directly, since torchvision's loader verifies md5 sums of the full release."""
    return _load_cifar("cifar10", params, context)


def load_cifar100(params: CifarParams, context: BuildContext | None = None) -> DataBundle:
    """CIFAR-100 (fine labels) read directly, for the same reason as `load_cifar10`."""
    return _load_cifar("cifar100", params, context)


# --------------------------------------------------------------------------------------------
# image-folder


class ImageFolderParams(Params):
    root: str = Field(description="folder holding the train and test folders")
    train_dir: str = Field(default="train", description="train split, relative to root")
    test_dir: str = Field(default="test", description="test split, relative to root")
    image_size: int | None = Field(
        default=None, gt=0, description="resize every image to this square size; None: keep sizes"
    )
    channels: Literal[1, 3] = Field(default=3, description="1: greyscale (PIL 'L'), 3: RGB")


def list_image_folder(root: Path, split_dir: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths, labels and class names of one split, in torchvision.datasets.ImageFolder order.

    Matching ImageFolder's order (sorted class folders, then `sorted(os.walk(...))` within each)
    keeps Split.indices meaningful against any other tool reading the same tree. Hidden folders
    (".ipynb_checkpoints" and the like) are not classes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"image-folder root {root} does not exist")
    split = root / split_dir
    if not split.is_dir():
        raise DataError(
            f"image-folder split folder {split} does not exist (set train_dir/test_dir)"
        )
    classes = sorted(
        entry.name
        for entry in os.scandir(split)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataError(f"image-folder split folder {split} has no class subfolders")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = [
            Path(dirpath, fname)
            for dirpath, _, fnames in sorted(os.walk(split / name, followlinks=True))
            for fname in sorted(fnames)
            if fname.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not found:
            raise DataError(
                f"class folder {split / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, np.asarray(labels, dtype=np.int64), classes


def _first_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc


def decode_images(
    paths: Sequence[Path],
    image_size: int | None,
    channels: Literal[1, 3],
    *,
    workers: int = 4,
    reference: Path | None = None,
) -> Tensor:
    """Decode images into one uint8 [N, C, H, W] tensor, the 8-bit values as stored.

    Decoding goes straight into a preallocated uint8 array, so no per-image tensors are built,
    from a few threads: Pillow releases the GIL while decoding, which pays off for larger images
    (for 32x32 JPEGs the per-file Python overhead dominates; 60,000 take about 10 s on 2 cores).
    Without `image_size` the first image (or `reference`, for a chunk of a longer list) fixes the
    size and any other size is an error, because silently resizing would change what a poison's
    pixel budget means.
    """
    if not paths:
        raise DataError("no images to decode")
    mode = "RGB" if channels == 3 else "L"
    first = reference if reference is not None else paths[0]
    if image_size is None:
        width, height = _first_size(first)
    else:
        width = height = image_size
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)

    def decode(i: int) -> None:
        path = paths[i]
        try:
            with Image.open(path) as img:
                if image_size is None and img.size != (width, height):
                    raise DataError(
                        f"image {path} is {img.size[0]}x{img.size[1]} but {first} is "
                        f"{width}x{height}; set image_size to resize all images to one size"
                    )
                if img.mode != mode:  # convert() copies even when the mode matches
                    img = img.convert(mode)
                if image_size is not None and img.size != (width, height):
                    img = img.resize((width, height), _BILINEAR)
                pixels = np.asarray(img)
        except DataError:
            raise
        except Exception as exc:  # any decoder failure is a problem with that one file
            raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc
        out[i] = pixels.transpose(2, 0, 1) if channels == 3 else pixels[None]

    # chunks small enough that every thread gets one (the first bad file still raises first)
    chunk = max(16, min(256, -(-len(paths) // max(workers, 1))))
    run_in_threads(len(paths), decode, chunk_size=chunk, workers=workers)
    return torch.from_numpy(out)


def _load_split(
    paths: list[Path],
    labels: np.ndarray,
    size: int | None,
    seed: int,
    params: ImageFolderParams,
    policy: StoragePolicy | None,
) -> Split:
    """One split's chosen files as uint8: decoded into memory, or (over the memory budget) into
    a uint8 file in the cache, a chunk at a time, reused by later runs while the files are
    unchanged."""
    # Same rule as harness.data.subset, so a pre-decode subset equals the one the core would draw.
    chosen = _chosen(labels, size, seed)
    picked = paths if chosen is None else [paths[i] for i in chosen]
    if params.image_size is None:
        width, height = _first_size(picked[0])
    else:
        width = height = params.image_size
    shape = (len(picked), params.channels, height, width)
    policy = policy or StoragePolicy()
    if policy.fits(int(np.prod(shape))):
        x: Tensor | DiskImages = decode_images(picked, params.image_size, params.channels)
    else:
        identity = ("image-folder", _files_identity(picked), params.image_size, params.channels)
        x = store_pixels(
            shape,
            lambda start, stop: decode_images(
                picked[start:stop], params.image_size, params.channels, reference=picked[0]
            ).numpy(),
            policy,
            storage_key(identity),
        )
    if chosen is None:
        return Split(x, torch.as_tensor(labels))
    return Split(x, torch.as_tensor(labels[chosen]), torch.as_tensor(chosen, dtype=torch.int64))


def load_image_folder(params: ImageFolderParams, context: BuildContext | None = None) -> DataBundle:
    """Any ImageFolder tree (e.g. the JPEG CIFAR-10 in ../shared/data) as a DataBundle.

    `context.subset` lets the core ask for its stratified subset before decoding; Split.indices
    then records the chosen positions, exactly as harness.data.subset would have.
    """
    root = Path(params.root).expanduser()
    sub = (context.subset if context is not None else None) or Subset()
    train_size, test_size, seed = sub.train, sub.test, sub.seed
    train_paths, train_labels, classes = list_image_folder(root, params.train_dir)
    test_paths, test_labels, test_classes = list_image_folder(root, params.test_dir)
    if test_classes != classes:
        raise DataError(
            f"class folders differ between {root / params.train_dir} ({', '.join(classes)}) and "
            f"{root / params.test_dir} ({', '.join(test_classes)})"
        )
    policy = context.storage if context is not None else None
    train = _load_split(train_paths, train_labels, train_size, seed, params, policy)
    test = _load_split(test_paths, test_labels, test_size, seed, params, policy)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"test images ({root / params.test_dir}) are {tuple(test.shape[2:])} but train "
            f"images are {tuple(train.shape[2:])}; set image_size to resize both"
        )
    return DataBundle(
        name="image-folder",
        train=train,
        test=test,
        classes=classes,
        value_range=(0.0, 1.0),
        metadata={
            "root": str(root),
            "train_files": len(train_paths),
            "test_files": len(test_paths),
        },
    )


# --------------------------------------------------------------------------------------------


@hookimpl
def harness_register_datasets() -> list[DatasetRecord]:
    return [
        DatasetRecord(
            name="digits",
            factory=load_digits_bundle,
            params=DigitsParams,
            description="scikit-learn 8x8 handwritten digits (1,797 images, 10 classes), fixed stratified split",
        ),
        DatasetRecord(
            name="make-classification",
            factory=load_make_classification,
            params=MakeClassificationParams,
            description="the paper's synthetic 10-class task: 5,000 samples of 12 features (sklearn)",
        ),
        DatasetRecord(
            name="cifar10",
            factory=load_cifar10,
            params=CifarParams,
            description="CIFAR-10 from a local torchvision-layout folder (cifar-10-batches-py); no download",
        ),
        DatasetRecord(
            name="cifar100",
            factory=load_cifar100,
            params=CifarParams,
            description="CIFAR-100 fine labels from a local torchvision-layout folder (cifar-100-python); no download",
        ),
        DatasetRecord(
            name="image-folder",
            factory=load_image_folder,
            params=ImageFolderParams,
            description="any train/<class>/*.jpg|png tree (torchvision ImageFolder layout), 8-bit images in [0, 1]",
        ),
    ]
