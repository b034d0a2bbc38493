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
    """Inputs `x` ([N, *input_shape], float32) and integer labels `y` ([N])."""

    x: Tensor
    y: Tensor
    indices: Tensor | None = None  # positions in the full split, when this is a subset

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def with_inputs(self, x: Tensor) -> Split:
        if x.shape != self.x.shape:
            raise ValueError(f"replacement inputs have shape {tuple(x.shape)}, expected {tuple(self.x.shape)}")
        return Split(x, self.y, self.indices)


@dataclass
class DataBundle:
    """What a data-set plugin returns: a train and a test split with their class names."""

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
    idx = stratified_indices(split.y.numpy(), size, seed)
    base = split.indices if split.indices is not None else torch.arange(len(split))
    index = torch.as_tensor(idx)
    return Split(split.x[index].clone(), split.y[index].clone(), base[index].clone())
