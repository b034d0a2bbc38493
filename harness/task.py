"""Task heads: each owns its loss and its metric, and says which direction of the metric is better."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn

from harness.data import DataBundle


class Metric(ABC):
    """Accumulates over batches, because means of per-batch scores are wrong for most metrics."""

    @abstractmethod
    def update(self, outputs: Tensor, targets: Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...


class TaskHead(ABC):
    metric_name: str = "metric"
    higher_is_better: bool = True

    @abstractmethod
    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        """The head module that maps backbone features to this task's outputs."""

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Any) -> Tensor:
        """Mean loss of a batch. Targets may be soft (a distribution per sample) for mixing defences."""

    @abstractmethod
    def metric(self) -> Metric:
        """A fresh accumulator of the task's metric."""

    def per_sample_loss(self, outputs: Tensor, targets: Any) -> Tensor:
        """Loss of each sample ([B]); defences such as UEraser take a max over copies of it."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample loss")
