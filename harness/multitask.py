"""Several task heads trained as one: the weighted sum of their losses on a shared backbone.

`MultiTask` is itself a `TaskHead`, so the training loop, defences and SAL treat a multi-task
model like any other: outputs and targets are dicts keyed by task label. `task_loss(label)`
gives one task's loss alone, which is what per-task SAL (paper §3.4, Figure 4) probes the
shared backbone with.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from harness.data import DataBundle, Split
from harness.task import Metric, TaskHead


class MultiMetric(Metric):
    """One accumulator per task; `compute_all` gives each task's metric by label.

    `compute` has no single meaningful value (accuracy and depth error do not average), so it
    returns NaN and the runner records the per-task metrics instead.
    """

    def __init__(self, metrics: dict[str, Metric], heads: dict[str, TaskHead]) -> None:
        self.metrics = metrics
        self.heads = heads
        self.loss_sums = dict.fromkeys(metrics, 0.0)  # each task's loss, summed over samples
        self.samples = 0

    def update(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> None:
        n = len(next(iter(outputs.values())))
        for label, metric in self.metrics.items():
            metric.update(outputs[label], targets[label])
            self.loss_sums[label] += float(self.heads[label].loss(outputs[label], targets[label])) * n
        self.samples += n

    def losses(self) -> dict[str, float]:
        """Each task's mean loss over the samples seen (the same pass that fills the metrics)."""
        return {label: total / max(self.samples, 1) for label, total in self.loss_sums.items()}

    def compute(self) -> float:
        return math.nan

    def compute_all(self) -> dict[str, float]:
        return {label: metric.compute() for label, metric in self.metrics.items()}


class MultiTask(TaskHead):
    metric_name = "per-task"

    def __init__(self, heads: dict[str, TaskHead], weights: dict[str, float]) -> None:
        if not heads:
            raise ValueError("a multi-task model needs at least one task")
        self.heads = heads
        self.weights = weights

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        raise TypeError("a multi-task model is built by the runner (harness.backbone.MultiTaskModel)")

    def loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        total = None
        for label, head in self.heads.items():
            term = self.weights[label] * head.loss(outputs[label], targets[label])
            total = term if total is None else total + term
        assert total is not None
        return total

    def per_sample_loss(self, outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        total = None
        for label, head in self.heads.items():
            term = self.weights[label] * head.per_sample_loss(outputs[label], targets[label])
            total = term if total is None else total + term
        assert total is not None
        return total

    def task_loss(self, label: str) -> Callable[[dict[str, Tensor], dict[str, Tensor]], Tensor]:
        """One task's loss alone, on the multi-task model's dict outputs and targets."""
        head = self.heads[label]
        return lambda outputs, targets: head.loss(outputs[label], targets[label])

    def metric(self) -> MultiMetric:
        return MultiMetric({label: head.metric() for label, head in self.heads.items()}, self.heads)

    def targets(self, split: Split) -> dict[str, Tensor]:  # type: ignore[override]
        return {label: head.targets(split) for label, head in self.heads.items()}

    def check_data(self, data: DataBundle) -> None:
        for head in self.heads.values():
            head.check_data(data)
