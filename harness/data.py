"""Data splits shared by every arm of a track: in memory as float32 or uint8, or streamed from disk.

A split's inputs are held in one of three forms, and every consumer reads them the same way
(`Split.rows(index)`, a float32 batch; `Split.batches(order)`, an epoch's batches in order):

- **float32** in memory: feature data, and images that are not 8-bit at the source (digits'
  values are k/16). This is what every split was before, and stays the default.
- **uint8** in memory: 8-bit images (CIFAR's pickles, JPEG and PNG files), 4× smaller than float32.
  A batch is converted when it is read, by exactly the operation the readers used to apply to the
  whole array (`x.to(float32) / 255`, correctly rounded), so the values are bit-identical to a
  float32 split of the same images: keeping them as uint8 is lossless.
- **on disk** (`DiskImages`): uint8 images in a `.npy` file written once into the cache, read a
  batch at a time with `pread` (no memory map, so pages read do not stay in the process's memory),
  optionally in worker processes. A data set uses it when a split does not fit the memory budget
  (`StoragePolicy`, from the spec's `execution` section or `harness eval --memory-budget`).

`Split.x` is still the whole split as float32, for poisons and other code that needs all of it at
once: for uint8 and disk storage it is converted on first use and kept until `release()`. The
training loop, evaluation and the SAL probe never touch it; they read batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: 8-bit images: stored value k means k / PIXEL_LEVELS
PIXEL_LEVELS = 255.0


def pixels_to_float(x: Tensor) -> Tensor:
    """uint8 pixels as float32 in [0, 1]: `k / 255`, correctly rounded, as the readers computed it."""
    return x.to(torch.float32).div_(PIXEL_LEVELS)


def float_to_pixels(x: Tensor) -> Tensor:
    """Float images in [0, 1] as uint8: each value rounded to the nearest k / 255.

    Lossless for values that are k / 255 already (`float_to_pixels(pixels_to_float(p)) == p`);
    for anything else (a poison's perturbed images) it moves each value by at most 0.5 / 255.
    """
    return x.detach().mul(PIXEL_LEVELS).round_().clamp_(0, PIXEL_LEVELS).to(torch.uint8)


def inputs_nbytes(shape: Sequence[int], itemsize: int = 1) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize


@dataclass(frozen=True)
class StoragePolicy:
    """Where a data set keeps a split: in memory up to `budget` bytes per split, else on disk.

    `budget` None holds every split in memory (the behaviour before streaming existed). `cache`
    is where streamed splits are written once (default: `<harness cache>/arrays`); `workers` is
    the number of worker processes that read streamed batches ahead of training (0: in process).
    None of this changes a value: a streamed split gives the same batches as one in memory.
    """

    budget: int | None = None
    workers: int = 2
    cache: Path | None = None

    def fits(self, nbytes: int) -> bool:
        return self.budget is None or nbytes <= self.budget

    def cache_dir(self) -> Path:
        if self.cache is not None:
            return Path(self.cache)
        from harness.archive import cache_root

        return cache_root() / "arrays"


def storage_policy(spec: Any) -> StoragePolicy:
    """The storage policy of a spec's execution settings (`execution.memory_budget_mb`, `data_workers`)."""
    execution = spec.execution
    budget = execution.memory_budget_mb
    return StoragePolicy(
        budget=None if budget is None else int(budget * 2**20), workers=execution.data_workers
    )


class DiskImages:
    """uint8 images `[N, *shape]` in a `.npy` file, read by rows without mapping the file.

    Reads go through `os.pread` into a fresh buffer, so the process holds only the batch it asked
    for; the operating system's page cache (not the process) keeps recently read pages. The file
    descriptor is opened lazily per process, so the object can be handed to worker processes.
    """

    def __init__(
        self, path: Path | str, shape: tuple[int, ...], offset: int, workers: int = 0
    ) -> None:
        self.path = Path(path)
        #: worker processes that read batches ahead of training (`Split.batches`)
        self.workers = int(workers)
        self.shape = tuple(int(s) for s in shape)
        self.offset = int(offset)
        self.row_bytes = inputs_nbytes(self.shape[1:])
        self._fd: int | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path | str, workers: int = 0) -> DiskImages:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
            if dtype != np.uint8 or fortran:
                raise ValueError(f"{path}: expected a C-ordered uint8 array, found {dtype}")
            return cls(path, shape, f.tell(), workers)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    @property
    def nbytes(self) -> int:
        return inputs_nbytes(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {
            "path": self.path,
            "shape": self.shape,
            "offset": self.offset,
            "workers": self.workers,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["shape"], state["offset"], state["workers"])

    def _descriptor(self) -> int:
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            return self._fd

    def read(self, index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """The rows at `index`, in that order, as a uint8 tensor; runs of consecutive rows are read at once."""
        rows = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64)
        rows = rows.reshape(-1)
        n = len(self)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} images in {self.path}")
        rows = np.where(rows < 0, rows + n, rows)
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        flat = out.reshape(len(rows), -1) if len(rows) else out
        fd, size = self._descriptor(), self.row_bytes
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            want = (stop - start) * size
            data = os.pread(fd, want, self.offset + int(rows[start]) * size)
            if len(data) != want:
                raise OSError(f"{self.path}: short read ({len(data)} of {want} bytes)")
            flat[start:stop] = np.frombuffer(data, dtype=np.uint8).reshape(stop - start, size)
            start = stop
        return torch.from_numpy(out)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to close with
            self.close()


def write_disk_images(
    path: Path,
    shape: tuple[int, ...],
    fill: Callable[[int, int], np.ndarray],
    *,
    chunk: int = 256,
    workers: int = 0,
) -> DiskImages:
    """Write uint8 images `[N, *shape[1:]]` to a `.npy` file chunk by chunk, atomically.

    `fill(start, stop)` returns rows `start:stop`; only one chunk is in memory at a time. The
    file appears under its name only when complete (written beside it, then renamed), so a kill
    in the middle never leaves a file that looks finished.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, shape[0], chunk):
                stop = min(start + chunk, shape[0])
                rows = np.ascontiguousarray(fill(start, stop), dtype=np.uint8)
                if rows.shape != (stop - start, *shape[1:]):
                    raise ValueError(f"rows {start}:{stop} have shape {rows.shape}")
                f.write(rows.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return DiskImages.open(path, workers)


def store_pixels(
    shape: tuple[int, ...],
    fill: Callable[[int, int], np.ndarray],
    policy: StoragePolicy | None,
    key: str,
) -> Tensor | DiskImages:
    """uint8 images of `shape`, filled by `fill(start, stop)`: in memory if they fit the policy's
    budget, else in `<cache>/<key>.npy` (written once, reused by every later run and arm)."""
    policy = policy or StoragePolicy()
    if policy.fits(inputs_nbytes(shape)):
        out = np.empty(shape, dtype=np.uint8)
        for start in range(0, shape[0], 256):
            stop = min(start + 256, shape[0])
            out[start:stop] = fill(start, stop)
        return torch.from_numpy(out)
    path = policy.cache_dir() / f"{key}.npy"
    if path.exists():
        try:
            images = DiskImages.open(path, policy.workers)
            if (
                images.shape == tuple(shape)
                and path.stat().st_size == images.offset + images.nbytes
            ):
                return images
        except (OSError, ValueError):
            pass  # unreadable or foreign: write it again
    return write_disk_images(path, shape, fill, workers=policy.workers)


def storage_key(*parts: object) -> str:
    """A file name for a streamed split, from everything that determines its content."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


Inputs = Tensor | DiskImages


class Split:
    """Inputs (`[N, *input_shape]`), integer labels `y` (`[N]`) and dense targets.

    `inputs` is a float tensor, a uint8 tensor of 8-bit images (value k means k / 255) or
    `DiskImages`; `x` is the whole split as float32 (see the module's docstring), `rows(index)`
    a float32 batch.

    `y` is always the class (or scene class) of each sample: subsets are stratified on it and
    class-wise poisons key on it. `targets` holds whatever else the tasks learn, one tensor per
    name with N rows (a segmentation mask [N, H, W], a depth map [N, 1, H, W], key-point
    heat maps [N, K, H, W], ...).
    """

    def __init__(
        self,
        x: Inputs,
        y: Tensor,
        indices: Tensor | None = None,
        targets: dict[str, Tensor] | None = None,
    ) -> None:
        self.inputs = x
        self.y = y
        self.indices = indices  # positions in the full split, when this is a subset
        self.targets = dict(targets or {})
        self._float: Tensor | None = None
        if self.inputs.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.inputs.shape[0]} inputs but {self.y.shape[0]} labels")
        for name, value in self.targets.items():
            if value.shape[0] != self.inputs.shape[0]:
                raise ValueError(
                    f"{self.inputs.shape[0]} inputs but {value.shape[0]} rows of target {name!r}"
                )

    # --- what the split holds ------------------------------------------------------------------
    @property
    def storage(self) -> str:
        """'float32' (or another float type), 'uint8' (8-bit images in memory) or 'disk'."""
        if isinstance(self.inputs, DiskImages):
            return "disk"
        return "uint8" if self.inputs.dtype == torch.uint8 else str(self.inputs.dtype).split(".")[1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the inputs as stored (0 in memory for a split on disk)."""
        if isinstance(self.inputs, DiskImages):
            return 0
        return self.inputs.numel() * self.inputs.element_size()

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_float"] = None  # a cache, rebuilt on use
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # --- reading -----------------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        """The whole split as float32 (for uint8 or disk storage: converted once, kept until
        `release()`). Batches are cheaper: `rows(index)`."""
        if isinstance(self.inputs, Tensor) and self.inputs.dtype != torch.uint8:
            return self.inputs
        if self._float is None:
            if isinstance(self.inputs, DiskImages):
                pixels = self.inputs.read(np.arange(len(self)))
            else:
                pixels = self.inputs
            self._float = pixels_to_float(pixels)
        return self._float

    def release(self) -> None:
        """Drop the float32 copy `x` made of uint8 or disk inputs (reads convert per batch again)."""
        self._float = None

    def rows(self, index: Tensor) -> Tensor:
        """The inputs at `index` as float32, on the split's device (that of its labels)."""
        if isinstance(self.inputs, DiskImages):
            return self._pixels(self.inputs.read(index))
        picked = self.inputs[index.to(self.inputs.device)]
        return pixels_to_float(picked) if picked.dtype == torch.uint8 else picked

    def _pixels(self, pixels: Tensor) -> Tensor:
        # uint8 crosses to the device before it is converted: a quarter of the bytes to copy
        return pixels_to_float(pixels.to(self.y.device, non_blocking=True))

    def batches(self, order: Sequence[Tensor], workers: int | None = None) -> Iterator[Tensor]:
        """`rows(idx)` for each `idx` of `order`, in order.

        Disk inputs are read ahead by `workers` processes (default: the policy's, as the data set
        set it); the order is fixed before any is read, so the values never depend on it.
        """
        if not isinstance(self.inputs, DiskImages):
            for idx in order:
                yield self.rows(idx)
            return
        workers = self.inputs.workers if workers is None else workers
        if workers <= 0 or len(order) <= 1:
            for idx in order:
                yield self.rows(idx)
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(
            _DiskBatches(self.inputs, list(order)),
            batch_size=None,
            shuffle=False,
            num_workers=min(workers, len(order)),
            prefetch_factor=2,
        )
        for pixels in loader:
            yield self._pixels(pixels)

    # --- new splits ------------------------------------------------------------------------------------
    def with_inputs(self, x: Inputs) -> Split:
        if tuple(x.shape) != self.shape:
            raise ValueError(
                f"replacement inputs have shape {tuple(x.shape)}, expected {self.shape}"
            )
        return Split(x, self.y, self.indices, self.targets)

    def take(self, index: Tensor) -> Split:
        """The samples at `index`, with every target (disk inputs are read into memory)."""
        base = self.indices if self.indices is not None else torch.arange(len(self))
        if isinstance(self.inputs, DiskImages):
            inputs = self.inputs.read(index)
        else:
            inputs = self.inputs[index].clone()
        return Split(
            inputs,
            self.y[index].clone(),
            base[index].clone(),
            {k: v[index].clone() for k, v in self.targets.items()},
        )

    def to(self, device: torch.device) -> Split:
        """The split with its inputs (unless on disk), labels and targets on `device`."""
        inputs = self.inputs if isinstance(self.inputs, DiskImages) else self.inputs.to(device)
        return Split(
            inputs,
            self.y.to(device),
            self.indices,
            {k: v.to(device) for k, v in self.targets.items()},
        )


class _DiskBatches(torch.utils.data.Dataset):
    """Batch `i` of a fixed order, read from disk (what a DataLoader's workers run)."""

    def __init__(self, images: DiskImages, order: list[Tensor]) -> None:
        self.images = images
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Tensor:
        return self.images.read(self.order[i])


def take_targets(targets: Tensor | dict[str, Tensor], index: Tensor) -> Tensor | dict[str, Tensor]:
    """Rows `index` of a target tensor, or of every tensor of a multi-task target dict."""
    if isinstance(targets, dict):
        return {k: v[index] for k, v in targets.items()}
    return targets[index]


def targets_to(
    targets: Tensor | dict[str, Tensor], device: torch.device
) -> Tensor | dict[str, Tensor]:
    if isinstance(targets, dict):
        return {k: v.to(device, non_blocking=True) for k, v in targets.items()}
    return targets.to(device, non_blocking=True)


@dataclass(frozen=True)
class Subset:
    """The stratified subset a spec asks for (`data.subset`): sizes per split, and the draw's seed.

    A data-set factory receives it as `context.subset`; one that can decode only the samples asked
    for (image folders, Taskonomy) draws them with `stratified_indices(labels, size, seed)` over the
    full split's labels, which gives exactly the subset the harness would take itself.
    """

    train: int | None = None
    test: int | None = None
    seed: int = 0


@dataclass
class DataBundle:
    """What a data-set plugin returns: a train and a test split with their class names.

    The contract every component may rely on:

    - `train.x`, `test.x`: float32 tensors `[N, *input_shape]`; images are `[N, C, H, W]` with
      values in `value_range` (`(0, 1)`, not normalised). Feature data (`[N, features]`) has
      `value_range = None`. A data set whose images are 8-bit at the source gives its splits
      uint8 inputs (`Split(uint8_tensor, y)`, or `store_pixels`, which streams a split that does
      not fit `context.storage` from disk); `x` is then their float32 view, k / 255.
    - `train.y`, `test.y`: int64 class labels `[N]` in `0 .. len(classes) - 1`; subsets are
      stratified on them and class-wise poisons key on them.
    - `train.targets`: further per-sample targets for dense tasks, by name.
    - `classes`: the class names, in label order.
    """

    name: str
    train: Split
    test: Split
    classes: list[str]
    value_range: tuple[float, float] | None = (0.0, 1.0)  # None: features, not pixels
    metadata: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` positions drawn per class in proportion to the class frequencies, sorted.

    Every class keeps at least one sample when `size` allows it, so a small subset never drops a
    class (which would make accuracy and the class-wise poisons meaningless).
    """
    n = len(labels)
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / n * size).astype(int)
    if size >= len(classes):
        quota = np.maximum(quota, 1)
    # hand out what rounding left over to the classes with the largest remainders
    remainder = counts / n * size - np.floor(counts / n * size)
    for i in np.argsort(-remainder):
        if quota.sum() >= size:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    while quota.sum() > size:
        quota[np.argmax(quota)] -= 1
    chosen = []
    for cls, k in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == cls)
        chosen.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen))


def subset(split: Split, size: int | None, seed: int) -> Split:
    if size is None or size >= len(split):
        return split
    return split.take(torch.as_tensor(stratified_indices(split.y.numpy(), size, seed)))
