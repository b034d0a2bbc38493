"""The classification task head: a Linear layer, cross-entropy, accuracy."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from harness.api import DataBundle, Metric, NoParams, TaskHead, TaskHeadRecord, hookimpl


class Accuracy(Metric):
    """Counts correct predictions on the device (no host sync per batch), read once."""

    def __init__(self) -> None:
        self.correct: Tensor | int = 0
        self.total = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        if targets.dim() == 2:  # soft targets: compare with their most likely class
            targets = targets.argmax(dim=1)
        self.correct = self.correct + (outputs.argmax(dim=1) == targets).sum()
        self.total += targets.numel()

    def compute(self) -> float:
        return int(self.correct) / self.total if self.total else float("nan")


class Classification(TaskHead):
    """Cross-entropy on hard labels, or on soft label distributions ([B, classes]) from MixUp/CutMix."""

    metric_name = "accuracy"
    higher_is_better = True

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        return nn.Linear(num_features, data.num_classes)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), targets)

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.float(), targets, reduction="none")

    def metric(self) -> Metric:
        return Accuracy()


@hookimpl
def harness_register_task_heads() -> list[TaskHeadRecord]:
    return [
        TaskHeadRecord(
            name="classification",
            factory=Classification,
            params=NoParams,
            description="linear head, cross-entropy (hard or soft labels), accuracy (higher is better)",
        )
    ]
