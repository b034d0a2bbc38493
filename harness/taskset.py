"""The task(s) one model learns: one head, or several heads on a shared backbone.

A spec's `task` is a task set of one head; its `tasks` a set of several trained on the weighted
sum of their losses (outputs and targets are then dicts keyed by task label). Everything
downstream (training loop, defences, SAL probe, entries) sees a `TaskSet` and never asks which
of the two it is: the set itself knows how to build its model, sum its losses, read its targets,
fill its metrics and name itself.

A single task keeps the plain form (a tensor output, `head.*` parameter names, its own loss and
metric untouched), so its numbers are exactly those of the head alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from harness.backbone import Backbone, MultiTaskModel, TaskModel
from harness.data import DataBundle, Split
from harness.task import Metric, TaskHead

TaskLoss = Callable[[Any, Any], Tensor]


class MultiMetric(Metric):
    """One accumulator per task; `per_task` gives each task's metric and loss by label.

    `compute` has no single meaningful value (accuracy and depth error do not average), so it
    returns NaN and the arm records the per-task metrics instead.
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
            self.loss_sums[label] += (
                float(self.heads[label].loss(outputs[label], targets[label])) * n
            )
        self.samples += n

    def losses(self) -> dict[str, float]:
        """Each task's mean loss over the samples seen (the same pass that fills the metrics)."""
        return {label: total / max(self.samples, 1) for label, total in self.loss_sums.items()}

    def compute(self) -> float:
        return math.nan

    def compute_all(self) -> dict[str, float]:
        return {label: metric.compute() for label, metric in self.metrics.items()}


class TaskSet:
    """The heads a model carries, their loss weights, and what entries call the trained task.

    `multi` is True for a spec's `tasks:` (even a list of one), whose model has a head per label,
    dict outputs and SAL recorded per task; False for a spec's `task:`.
    """

    def __init__(
        self, heads: dict[str, TaskHead], weights: dict[str, float], *, multi: bool
    ) -> None:
        if not heads:
            raise ValueError("a model needs at least one task")
        if not multi and len(heads) != 1:
            raise ValueError("a single-task set holds exactly one head")
        self.heads = heads
        self.weights = weights
        self.multi = multi

    @classmethod
    def single(cls, label: str, head: TaskHead) -> TaskSet:
        return cls({label: head}, {label: 1.0}, multi=False)

    # --- identity ------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """What entries call the trained task: the task's name, or 'all' for a multi-task model."""
        return "all" if self.multi else next(iter(self.heads))

    @property
    def per_task_labels(self) -> list[str]:
        """The tasks whose SAL, metric and loss are also recorded one by one (multi-task only)."""
        return list(self.heads) if self.multi else []

    @property
    def only(self) -> TaskHead:
        return next(iter(self.heads.values()))

    @property
    def metric_name(self) -> str:
        return "per-task" if self.multi else self.only.metric_name

    @property
    def higher_is_better(self) -> bool:
        return True if self.multi else self.only.higher_is_better

    @property
    def classification(self) -> bool:
        """Whether the targets are plain class labels (poisons may then use class-error rules)."""
        return not self.multi and self.only.target == "class"

    @property
    def dense(self) -> list[str]:
        """Labels of the heads whose targets are per-pixel maps (crop, flip and mixing break them)."""
        return [
            label for label, h in self.heads.items() if h.target != "class" and h.features == "map"
        ]

    @property
    def non_class(self) -> bool:
        return any(h.target != "class" for h in self.heads.values())

    # --- the model -------------------------------------------------------------------------------
    def build_model(self, backbone: Backbone, data: DataBundle) -> nn.Module:
        """The backbone with this set's head(s) on top."""
        if not self.multi:
            head = self.only
            return TaskModel(backbone, head.build(backbone.num_features, data), head.features)
        return MultiTaskModel(
            backbone,
            {label: h.build(backbone.num_features, data) for label, h in self.heads.items()},
            {label: h.features for label, h in self.heads.items()},
        )

    # --- losses, targets, metrics -------------------------------------------------------------
    def loss(self, outputs: Any, targets: Any) -> Tensor:
        if not self.multi:
            return self.only.loss(outputs, targets)
        return self._weighted_sum(lambda label, head: head.loss(outputs[label], targets[label]))

    def per_sample_loss(self, outputs: Any, targets: Any) -> Tensor:
        if not self.multi:
            return self.only.per_sample_loss(outputs, targets)
        return self._weighted_sum(
            lambda label, head: head.per_sample_loss(outputs[label], targets[label])
        )

    def _weighted_sum(self, term: Callable[[str, TaskHead], Tensor]) -> Tensor:
        total = None
        for label, head in self.heads.items():
            value = self.weights[label] * term(label, head)
            total = value if total is None else total + value
        assert total is not None
        return total

    def task_loss(self, label: str) -> TaskLoss:
        """One task's loss alone, on the multi-task model's dict outputs and targets."""
        head = self.heads[label]
        return lambda outputs, targets: head.loss(outputs[label], targets[label])

    def targets(self, split: Split) -> Any:
        """The targets of every sample: the head's tensor, or a dict by task label."""
        if not self.multi:
            return self.only.targets(split)
        return {label: head.targets(split) for label, head in self.heads.items()}

    def metric(self) -> Metric:
        if not self.multi:
            return self.only.metric()
        return MultiMetric({label: head.metric() for label, head in self.heads.items()}, self.heads)

    def metric_row(self, metric: Metric) -> dict[str, float]:
        """The per-task columns an epoch records beside the arm's metric (none for one task)."""
        if not isinstance(metric, MultiMetric):
            return {}
        row = {f"test_metric.{k}": v for k, v in metric.compute_all().items()}
        return row | {f"test_loss.{k}": v for k, v in metric.losses().items()}

    def subset_for(self, label: str) -> TaskSet:
        """The single task `label` of this set, as a set of its own (a poison crafted on it)."""
        return TaskSet.single(label, self.heads[label])
