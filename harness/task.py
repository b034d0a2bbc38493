"""Task heads: each owns its loss and its metric, and says which direction of the metric is better.

A head reads one target of the data: `target = "class"` is the split's integer labels `y`;
any other name is a per-sample tensor in `Split.targets` (a segmentation mask, a depth map, key
points) that the data set provides. A head on pooled features sets `features = "pooled"`, a dense
head `features = "map"` and is built on the backbone's feature map.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from harness.backbone import FeatureKind
from harness.data import DataBundle, Split

if TYPE_CHECKING:
    from harness.context import BuildContext


class Metric(ABC):
    """Accumulates over batches, because means of per-batch scores are wrong for most metrics."""

    @abstractmethod
    def update(self, outputs: Tensor, targets: Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> float: ...


class TaskHead(ABC):
    """A task: the head module it puts on a backbone, its loss, its metric and the metric's direction.

    Built as `factory(params, context)`; subclasses used as the factory get `self.params`. The
    loss must accept soft targets (a distribution per sample) where mixing defences make sense,
    and the metric is an accumulator: never average per-batch scores.
    """

    metric_name: str = "metric"
    higher_is_better: bool = True
    features: ClassVar[FeatureKind] = "pooled"
    #: which target of the data the head learns: "class" (Split.y) or a key of Split.targets
    target: str = "class"

    def __init__(self, params: Any = None, context: BuildContext | None = None) -> None:
        self.params = params
        self.context = context

    @abstractmethod
    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        """The head module that maps backbone features (pooled, or the map's channels) to outputs."""

    @abstractmethod
    def loss(self, outputs: Tensor, targets: Any) -> Tensor:
        """Mean loss of a batch. Targets may be soft (a distribution per sample) for mixing defences."""

    @abstractmethod
    def metric(self) -> Metric:
        """A fresh accumulator of the task's metric."""

    def per_sample_loss(self, outputs: Tensor, targets: Any) -> Tensor:
        """Loss of each sample ([B]); defences such as UEraser take a max over copies of it."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample loss")

    def targets(self, split: Split) -> Tensor:
        """This head's targets for every sample of a split."""
        if self.target == "class":
            return split.y
        return split.targets[self.target]

    def check_data(self, data: DataBundle) -> None:
        """Raise ValueError when the data set lacks what this head learns from."""
        if self.target != "class" and self.target not in data.train.targets:
            have = ", ".join(sorted(data.train.targets)) or "none"
            raise ValueError(
                f"the task needs the target {self.target!r}, which data set {data.name!r} "
                f"does not provide (its dense targets: {have})"
            )
