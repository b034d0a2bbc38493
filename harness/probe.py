"""The SAL probe of one arm: what SAL is measured on, and with which randomness.

The probe is a fixed stratified subset of the arm's own training data (same indices every epoch,
drawn with the arm's seed), seen through the arm's defence (image-level transforms, as in
training) and, when `sal.probe_augment` is set, the training augmentation (as the reference's
loader does). Each measurement draws its batch order and augmentation from a generator seeded by
the arm's seed and the epoch, so a resumed arm measures exactly what an uninterrupted one would.
The base loss is the eval-mode loss on the probe (`sal.base_loss: eval`), or the epoch's running
training loss (`train-running-mean`, the reference's choice).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from harness.data import Split, stratified_indices, take_targets
from harness.defence import Defence
from harness.sal_estimators import ProbeBatches, ReferenceEstimator, SALEstimator, SALResult
from harness.spec import AugmentationSpec, SALSpec
from harness.taskset import TaskSet
from harness.training import augment, batch_order


def probe_indices(labels: Tensor, size: int, seed: int) -> Tensor:
    """The probe's positions in the training split: stratified, the same every epoch."""
    return torch.as_tensor(stratified_indices(labels.numpy(), size, seed))


@dataclass
class ProbeResult:
    """SAL of every scored layer, and for multi-task arms each task's SAL over the backbone."""

    sal: SALResult
    task_sal: dict[str, list[float]] = field(default_factory=dict)


class SALProbe:
    def __init__(
        self,
        settings: SALSpec,
        augmentation: list[AugmentationSpec],
        tasks: TaskSet,
        layers: list[str],
        task_layers: list[str],
        train: Split,
        defence: Defence,
        seed: int,
        autocast=None,
        on_layer: Callable[[int, int], None] | None = None,
        estimator: SALEstimator | None = None,
    ) -> None:
        """`estimator` is the spec's (`Assembly.sal_estimator`); None: the reference with the
        spec's settings. `autocast` None measures in float32 (`sal.amp` off)."""
        self.settings = settings
        self.estimator = estimator or ReferenceEstimator(
            settings.epsilon, settings.iterations, settings.inner_lr
        )
        self.augmentation = augmentation
        self.tasks = tasks
        self.layers = layers
        self.task_layers = task_layers
        self.train = train
        self.defence = defence
        self.seed = seed
        self.autocast = autocast
        self.on_layer = on_layer
        self.indices = probe_indices(train.y.cpu(), settings.probe_size, seed)

    def measure(self, model: nn.Module, epoch: int, train_loss: float | None) -> ProbeResult:
        """SAL of the model after `epoch`, and per-task SAL over the backbone for multi-task arms.

        Each task's SAL uses the same probe and the same seeded randomness as the arm's, so the
        tasks' vectors differ only by the loss; their base loss is the eval-mode loss (a running
        training loss exists for the summed loss only).
        """
        sal = self._sal(model, epoch, train_loss, self.tasks.loss, self.layers)
        task_sal = {
            label: self._sal(
                model, epoch, None, self.tasks.task_loss(label), self.task_layers
            ).values
            for label in self.tasks.per_task_labels
        }
        return ProbeResult(sal, task_sal)

    def _sal(
        self, model: nn.Module, epoch: int, train_loss: float | None, loss_fn, layers: list[str]
    ) -> SALResult:
        settings, train = self.settings, self.train
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        x = self.defence.transform_images(train.rows(self.indices), g)
        y = take_targets(self.tasks.targets(train), self.indices)
        n, bs = len(x), settings.probe_batch_size

        if settings.probe_augment:

            def batches(order: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
                return [
                    (augment(x[idx.to(x.device)], self.augmentation, g), take_targets(y, idx))
                    for idx in order
                ]

            probe = ProbeBatches(
                lambda _: batches(batch_order(n, bs, g, drop_last=True)),
                lambda _: batches(batch_order(n, bs, g)),
                fixed=False,
            )
        else:  # the same samples every pass: the estimators may cache the frozen prefix
            in_order = list(torch.arange(n).split(bs))
            probe = ProbeBatches.from_samples(
                x,
                y,
                train_order=lambda _: batch_order(n, bs, g, drop_last=True),
                eval_order=lambda _: in_order,
            )
        total = len(self.layers)
        return self.estimator.estimate(
            model,
            layers,
            loss_fn,
            probe,
            base_loss=train_loss
            if settings.base_loss == "train-running-mean" and train_loss is not None
            else None,
            autocast=self.autocast,
            on_layer=(lambda i: self.on_layer(i, total)) if self.on_layer is not None else None,
        )
