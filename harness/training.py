"""One arm's training loop: optimiser, schedule, augmentation, epoch and evaluation.

All randomness (shuffling, augmentation, defences) comes from an explicit `torch.Generator`
whose state is checkpointed, so a resumed run continues exactly where the killed one stopped.
Inputs are read a batch at a time (`Split.batches`): uint8 images are converted per batch and a
split on disk streams, with the batch order drawn before any is read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from harness.data import Split, take_targets, targets_to
from harness.defence import Defence, StepContext
from harness.spec import AugmentationSpec, OptimizerSpec, ScheduleSpec, TrainingSpec
from harness.task import Metric, TaskHead
from harness.taskset import TaskSet


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"the spec asks for device {name!r} but no CUDA device is available")
    return device


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager | None:
    """Mixed precision only where it pays (CUDA); bfloat16 where supported, else float16."""
    if not amp or device.type != "cuda":
        return None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_optimizer(model: nn.Module, spec: OptimizerSpec) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            nesterov=spec.nesterov,
        )
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec, epochs: int):
    """Stepped once per epoch, after SAL (the reference's order)."""
    if spec.name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=spec.milestones, gamma=spec.gamma
        )
    if spec.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Per-sample random crop after zero padding (RandomCrop(size, padding)), vectorised."""
    if padding == 0:
        return x
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: Tensor, specs: Sequence[AugmentationSpec], generator: torch.Generator) -> Tensor:
    for spec in specs:
        if x.dim() != 4:
            raise ValueError(
                f"augmentation {spec.name!r} needs image inputs [B, C, H, W], got {tuple(x.shape)}"
            )
        x = (
            random_crop(x, spec.padding, generator)
            if spec.name == "crop"
            else random_flip(x, spec.p, generator)
        )
    return x


def on_device(split: Split, device: torch.device) -> Split:
    """The split with its inputs (as stored: float32 or uint8; a split on disk stays there),
    labels and targets moved to `device`."""
    return split.to(device)


def batch_order(
    n: int, batch_size: int, generator: torch.Generator, *, drop_last: bool = False
) -> list[Tensor]:
    perm = torch.randperm(n, generator=generator)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    return [perm[i : i + batch_size] for i in range(0, stop, batch_size)]


class LossSum:
    """A running sum of batch losses × batch sizes, kept on the device: no host sync per step.

    float64 on CPU and CUDA: each float32 loss is widened exactly, multiplied and added in the
    same order as a Python float sum, so the epoch's mean is the same number, read back once.
    MPS has no float64, so there the sum is taken on the host.
    """

    def __init__(self, device: torch.device) -> None:
        self.on_host = device.type == "mps"
        self.total: Tensor | float = (
            0.0 if self.on_host else torch.zeros((), dtype=torch.float64, device=device)
        )
        self.count = 0

    def add(self, loss: Tensor, n: int) -> None:
        if self.on_host:
            self.total += float(loss.detach()) * n
        else:
            self.total += loss.detach().to(torch.float64) * n
        self.count += n

    def mean(self) -> float:
        return float(self.total) / max(self.count, 1)


def prefer_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, convolutions run faster on NHWC tensors (`channels_last`); the CPU path, and so
    every value this machine computes, is left as it was."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
        return model.to(memory_format=torch.channels_last)
    return model


def train_epoch(
    model: nn.Module,
    train: Split,
    task: TaskHead | TaskSet,
    defence: Defence,
    recipe: TrainingSpec,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
    num_classes: int,
    value_range: tuple[float, float] | None,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over the (protected) training data; returns the running mean training loss."""
    model.train()
    autocast = autocast_for(device, recipe.amp)

    def aug(x: Tensor, g: torch.Generator) -> Tensor:
        return augment(x, recipe.augmentation, g)

    ctx = StepContext(
        epoch=epoch,
        generator=generator,
        loss=task.loss,
        per_sample_loss=task.per_sample_loss,
        value_range=value_range,
        augment=aug,
    )
    losses = LossSum(device)
    all_targets = task.targets(train)
    order = batch_order(len(train), recipe.batch_size, generator)
    for idx, x in zip(order, train.batches(order), strict=True):
        x = x.to(device, non_blocking=True)
        y = targets_to(take_targets(all_targets, idx), device)
        x = defence.transform_images(x, generator)
        x = aug(x, generator)
        x, targets = defence.transform_batch(x, y, num_classes, generator)
        optimizer.zero_grad(set_to_none=True)
        with autocast if autocast is not None else contextlib.nullcontext():
            loss = defence.training_loss(model, x, targets, ctx)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if recipe.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        losses.add(loss, len(idx))
    return losses.mean()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    task: TaskHead | TaskSet,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> tuple[float, float]:
    """(mean loss, task metric) on a split, in eval mode."""
    loss, metric = evaluate_all(model, split, task, batch_size, device, amp)
    return loss, metric.compute()


@torch.no_grad()
def evaluate_all(
    model: nn.Module,
    split: Split,
    task: TaskHead | TaskSet,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> tuple[float, Metric]:
    """(mean loss, the filled metric accumulator): multi-task metrics give every task's value."""
    model.eval()
    metric = task.metric()
    autocast = autocast_for(device, amp)
    losses = LossSum(device)
    all_targets = task.targets(split)
    order = [
        torch.arange(start, min(start + batch_size, len(split)))
        for start in range(0, len(split), batch_size)
    ]
    for index, x in zip(order, split.batches(order), strict=True):
        x = x.to(device)
        y = targets_to(take_targets(all_targets, index), device)
        with autocast if autocast is not None else contextlib.nullcontext():
            out = model(x)
        out = {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()
        losses.add(task.loss(out, y), len(x))
        metric.update(out, y)
    return losses.mean(), metric
