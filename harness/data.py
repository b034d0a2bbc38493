"""In-memory data splits shared by every arm of a track.

Data sets at the scale the harness runs on a CPU (and CIFAR at full scale on a GPU) fit in
memory as float tensors, which keeps poisoning, probing and augmentation vectorised and makes
every arm see byte-identical inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Split:
    """Inputs `x` ([N, *input_shape], float32), integer labels `y` ([N]) and dense targets.

    `y` is always the class (or scene class) of each sample: subsets are stratified on it and
    class-wise poisons key on it. `targets` holds whatever else the tasks learn, one tensor per
    name with N rows (a segmentation mask [N, H, W], a depth map [N, 1, H, W], key-point
    heat maps [N, K, H, W], ...).
    """

    x: Tensor
    y: Tensor
    indices: Tensor | None = None  # positions in the full split, when this is a subset
    targets: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} inputs but {self.y.shape[0]} labels")
        for name, value in self.targets.items():
            if value.shape[0] != self.x.shape[0]:
                raise ValueError(
                    f"{self.x.shape[0]} inputs but {value.shape[0]} rows of target {name!r}"
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def with_inputs(self, x: Tensor) -> Split:
        if x.shape != self.x.shape:
            raise ValueError(
                f"replacement inputs have shape {tuple(x.shape)}, expected {tuple(self.x.shape)}"
            )
        return Split(x, self.y, self.indices, self.targets)

    def take(self, index: Tensor) -> Split:
        """The samples at `index`, with every target."""
        base = self.indices if self.indices is not None else torch.arange(len(self))
        return Split(
            self.x[index].clone(),
            self.y[index].clone(),
            base[index].clone(),
            {k: v[index].clone() for k, v in self.targets.items()},
        )


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
      `value_range = None`.
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
        return tuple(self.train.x.shape[1:])

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
