"""Task heads for multi-task data: semantic segmentation, depth, key points and scene class.

The dense heads sit on the backbone's feature map ([B, C, h, w], usually coarser than the input)
and upsample their output to the input's H x W, so that loss and metric compare with targets at
input resolution, as the data sets store them. They are deliberately light (one 3x3 conv block
and a 1x1 projection): the harness asks how much a *shared backbone* learns from each task, so a
deep decoder would only add head layers that soak up the learning SAL is meant to see in the
backbone.

The target conventions every multi-task data set of this repository follows:

- ``targets["segmentation"]``: int64 [N, H, W] class ids, ``255`` = ignore;
  ``metadata["segmentation_classes"]`` (int) classes.
- ``targets["depth"]``: float32 [N, 1, H, W]; values <= 0 or non-finite are invalid.
- ``targets["keypoints"]``: float32 heat maps [N, K, H, W] in [0, 1]; an all-zero channel is an
  absent point; ``metadata["keypoints"]`` (int) = K.
- ``targets["scene"]``: int64 [N]; ``metadata["scene_classes"]`` (list of str) names.

Losses cast the outputs to float32 (as the classification head does), so they stay exact under
autocast; metrics accumulate sums and counts (a confusion matrix for mIoU) over batches rather
than averaging per-batch scores.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from harness.api import (
    BuildContext,
    DataBundle,
    Metric,
    NoParams,
    Params,
    TaskHead,
    TaskHeadRecord,
    hookimpl,
)
from harness_plugins.tasks import Classification

#: the label of segmentation pixels that neither loss nor metric sees
IGNORE_INDEX = 255
#: a key-point channel counts as present when its target heat map peaks above this
KEYPOINT_PRESENT = 0.5


# --------------------------------------------------------------------------- shared pieces


class DenseHeadParams(Params):
    hidden: int = Field(
        default=64,
        gt=0,
        le=1024,
        description="channels of the head's 3x3 conv block (keep it light: SAL "
        "is about what the shared backbone learns)",
    )


class DenseHead(nn.Module):
    """3x3 conv + BN + ReLU + 1x1 conv, then bilinear upsampling to the input size.

    The output size is fixed when the head is built because the head only ever sees the feature
    map, not the input; every data set of the harness has one input size per split.
    """

    def __init__(
        self, in_channels: int, hidden: int, out_channels: int, size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Conv2d(hidden, out_channels, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4:
            raise ValueError(
                f"a dense head needs the backbone's feature map [B, C, h, w], got shape "
                f"{tuple(features.shape)} (was the model built with features='map'?)"
            )
        out = self.project(self.block(features))
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out


def _image_size(head: str, data: DataBundle) -> tuple[int, int]:
    """The H x W a dense head must upsample to; dense targets only exist for images."""
    if not data.is_image:
        raise ValueError(
            f"task head {head!r} predicts a map at input resolution, but data set {data.name!r} "
            f"has inputs of shape {data.input_shape}, not images [C, H, W]"
        )
    return int(data.input_shape[1]), int(data.input_shape[2])


def _metadata_int(head: str, data: DataBundle, key: str, what: str) -> int:
    """A positive integer from the data set's metadata, or a ValueError that says what is missing."""
    value = data.metadata.get(key)
    if value is None:
        raise ValueError(
            f"task head {head!r} needs data.metadata[{key!r}] ({what}), which data set "
            f"{data.name!r} does not provide (its metadata: {sorted(data.metadata) or 'none'})"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"task head {head!r} needs data.metadata[{key!r}] ({what}) to be a positive int, "
            f"data set {data.name!r} gives {value!r}"
        )
    return value


def _check_map(head: str, outputs: Tensor, targets: Tensor, same_shape: bool = False) -> None:
    """Catch heads that were not upsampled (or targets at another resolution) with a readable error.

    Without it a mismatch either broadcasts silently (depth [B, 1, H, W] against [B, H, W]) or
    fails deep inside torch with a message that names no task.
    """
    if same_shape:
        ok = outputs.shape == targets.shape
    else:
        ok = (
            outputs.dim() == 4
            and targets.dim() == 3
            and outputs.shape[0] == targets.shape[0]
            and outputs.shape[-2:] == targets.shape[-2:]
        )
    if not ok:
        expected = "the same shape" if same_shape else "[B, classes, H, W] for targets [B, H, W]"
        raise ValueError(
            f"{head}: outputs {tuple(outputs.shape)} do not match targets {tuple(targets.shape)} "
            f"(expected {expected})"
        )


def _masked_mean(values: Tensor, mask: Tensor, dims: tuple[int, ...] | None = None) -> Tensor:
    """Mean of `values` where `mask` holds; 0 (still attached to the graph) where nothing is valid.

    An all-ignored batch or sample must not produce NaN: one NaN loss poisons the weights for
    good, and SAL's probe would report it as sharpness.
    """
    mask = mask.to(values.dtype)
    if dims is None:
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    return (values * mask).sum(dim=dims) / mask.sum(dim=dims).clamp(min=1.0)


# --------------------------------------------------------------------------- segmentation


class ConfusionMatrixIoU(Metric):
    """Mean intersection over union from a confusion matrix summed over batches.

    Classes that appear neither in the targets nor in the predictions are left out of the mean
    (their IoU is 0/0); a class predicted but never present counts with IoU 0.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        #: rows: target class, columns: predicted class
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        _check_map("segmentation", outputs, targets)
        pred = outputs.argmax(dim=1)
        targets = targets.long()
        valid = targets != self.ignore_index
        t, p = targets[valid], pred[valid]
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_classes):
            raise ValueError(
                f"segmentation targets hold class ids outside [0, {self.num_classes}) other than "
                f"the ignore label {self.ignore_index}: [{int(t.min())}, {int(t.max())}]"
            )
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes).cpu()

    def per_class(self) -> Tensor:
        """IoU of each class (NaN for classes seen neither in targets nor predictions)."""
        c = self.confusion.to(torch.float64)
        tp = c.diag()
        union = c.sum(dim=0) + c.sum(dim=1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def compute(self) -> float:
        iou = self.per_class()
        seen = ~iou.isnan()
        return float(iou[seen].mean()) if seen.any() else float("nan")


class Segmentation(TaskHead):
    """Per-pixel cross-entropy (ignoring label 255) and mIoU on the backbone's feature map."""

    metric_name = "miou"
    higher_is_better = True
    features = "map"
    target = "segmentation"

    def __init__(
        self, params: DenseHeadParams | None = None, context: BuildContext | None = None
    ) -> None:
        super().__init__(params or DenseHeadParams(), context)
        self.num_classes: int | None = None

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        size = _image_size("segmentation", data)
        self.num_classes = _metadata_int(
            "segmentation", data, "segmentation_classes", "the number of segmentation classes"
        )
        return DenseHead(num_features, self.params.hidden, self.num_classes, size)

    def _pixel_loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        outputs = outputs.float()
        targets = targets.long()
        _check_map("segmentation", outputs, targets)
        loss = F.cross_entropy(outputs, targets, ignore_index=IGNORE_INDEX, reduction="none")
        return loss, targets != IGNORE_INDEX

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean over every labelled pixel of the batch (not a mean of per-image means)."""
        return _masked_mean(*self._pixel_loss(outputs, targets))

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return _masked_mean(*self._pixel_loss(outputs, targets), dims=(1, 2))

    def metric(self) -> Metric:
        if self.num_classes is None:
            raise RuntimeError(
                "the segmentation head's metric needs the number of classes: build() it first"
            )
        return ConfusionMatrixIoU(self.num_classes)


# --------------------------------------------------------------------------- depth


def depth_valid(targets: Tensor) -> Tensor:
    """Pixels with a depth: sensors and renderers mark holes with 0, negatives, NaN or inf."""
    return torch.isfinite(targets) & (targets > 0)


class DepthParams(DenseHeadParams):
    loss: Literal["l1", "l2"] = Field(default="l1", description="training loss over valid pixels")


class DepthAbsError(Metric):
    """Mean absolute depth error over every valid pixel seen, in the data set's depth units."""

    def __init__(self) -> None:
        self.error = 0.0
        self.count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        _check_map("depth", outputs, targets, same_shape=True)
        valid = depth_valid(targets)
        diff = (outputs.float() - targets.float())[valid]
        self.error += float(diff.abs().double().sum())
        self.count += int(valid.sum())

    def compute(self) -> float:
        return self.error / self.count if self.count else float("nan")


class Depth(TaskHead):
    """Monocular depth regression: L1 (or L2) over valid pixels; metric the mean absolute error.

    The prediction is in the units of the data set's depth targets (metres for NYUv2-like data;
    whatever the data set documents otherwise), and so is `depth_abs_error`. The output is left
    unconstrained (no softplus): invalid pixels are masked, so a negative prediction only costs
    its error.
    """

    metric_name = "depth_abs_error"
    higher_is_better = False
    features = "map"
    target = "depth"

    def __init__(
        self, params: DepthParams | None = None, context: BuildContext | None = None
    ) -> None:
        super().__init__(params or DepthParams(), context)

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        head = DenseHead(num_features, self.params.hidden, 1, _image_size("depth", data))
        stored = data.train.targets.get(self.target)
        if stored is not None:
            valid = depth_valid(stored)
            if bool(valid.any()):
                # start at the mean training depth: depth is in data units (metres, say), far from
                # the zero an untrained head outputs, and an L1 loss closes that gap only slowly
                with torch.no_grad():
                    head.project.bias.fill_(float(stored[valid].double().mean()))
        return head

    def _pixel_loss(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        outputs = outputs.float()
        targets = targets.float()
        _check_map("depth", outputs, targets, same_shape=True)
        valid = depth_valid(targets)
        # zero the invalid targets first: NaN * 0 is still NaN, and would reach the gradient
        diff = outputs - torch.where(valid, targets, torch.zeros_like(targets))
        return (diff.abs() if self.params.loss == "l1" else diff.square()), valid

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean over every valid pixel of the batch."""
        return _masked_mean(*self._pixel_loss(outputs, targets))

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return _masked_mean(*self._pixel_loss(outputs, targets), dims=(1, 2, 3))

    def metric(self) -> Metric:
        return DepthAbsError()


# --------------------------------------------------------------------------- key points


class KeypointParams(DenseHeadParams):
    loss: Literal["bce", "mse"] = Field(
        default="bce",
        description="bce: the head outputs logits and each heat-map pixel is a binary cross-entropy "
        "against the target in [0, 1] (mostly-zero maps give MSE almost no gradient); "
        "mse: the head outputs the heat map itself",
    )
    metric: Literal["peak-distance", "l1"] = Field(
        default="peak-distance",
        description="peak-distance: pixel distance between predicted and true heat-map peaks, over "
        "present points; l1: mean absolute heat-map error (Taskonomy-style response maps)",
    )


def heatmap_peaks(maps: Tensor) -> Tensor:
    """(row, column) of each channel's maximum, [B, K, 2] as float; ties go to the first pixel."""
    width = maps.shape[-1]
    flat = maps.flatten(start_dim=2).argmax(dim=2)
    return torch.stack([flat // width, flat % width], dim=-1).to(torch.float64)


class PeakDistance(Metric):
    """Mean Euclidean pixel distance between predicted and target peaks of present key points."""

    def __init__(self, present: float = KEYPOINT_PRESENT) -> None:
        self.present = present
        self.distance = 0.0
        self.count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        _check_map("keypoints", outputs, targets, same_shape=True)
        present = targets.flatten(start_dim=2).amax(dim=2) > self.present  # [B, K]
        dist = (heatmap_peaks(outputs.float()) - heatmap_peaks(targets.float())).norm(dim=-1)
        self.distance += float(dist[present].sum())
        self.count += int(present.sum())

    def compute(self) -> float:
        return self.distance / self.count if self.count else float("nan")


class HeatmapL1(Metric):
    """Mean absolute heat-map error over every pixel and channel seen."""

    def __init__(self, logits: bool = False) -> None:
        self.logits = logits  # outputs are logits (BCE-trained head): compare their sigmoid
        self.error = 0.0
        self.count = 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        _check_map("keypoints", outputs, targets, same_shape=True)
        maps = torch.sigmoid(outputs.float()) if self.logits else outputs.float()
        self.error += float((maps - targets.float()).abs().double().sum())
        self.count += int(targets.numel())

    def compute(self) -> float:
        return self.error / self.count if self.count else float("nan")


class Keypoints(TaskHead):
    """Heat-map regression (per-pixel BCE on logits, or MSE), one channel per key point; metric
    the peak distance in pixels.

    With `metric: l1` the metric is the mean absolute heat-map error instead, for data such as
    Taskonomy's keypoints2d whose "heat map" is a dense response image without one peak per point;
    its metric name is then `keypoint_heatmap_l1`, so that a leaderboard never ranks pixel
    distances and heat-map errors side by side.
    """

    higher_is_better = False
    features = "map"
    target = "keypoints"

    def __init__(
        self, params: KeypointParams | None = None, context: BuildContext | None = None
    ) -> None:
        super().__init__(params or KeypointParams(), context)
        self.metric_name = (
            "keypoint_error" if self.params.metric == "peak-distance" else "keypoint_heatmap_l1"
        )

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        size = _image_size("keypoints", data)
        k = _metadata_int(
            "keypoints", data, "keypoints", "the number of key-point heat-map channels K"
        )
        stored = data.train.targets.get(self.target)
        if stored is not None and (stored.dim() != 4 or stored.shape[1] != k):
            raise ValueError(
                f"task head 'keypoints': data.metadata['keypoints'] says K={k}, but data set "
                f"{data.name!r} stores key points of shape {tuple(stored.shape)} (expected [N, {k}, H, W])"
            )
        head = DenseHead(num_features, self.params.hidden, k, size)
        if self.params.loss == "bce":
            with (
                torch.no_grad()
            ):  # start near empty maps, as heat maps mostly are (sigmoid(-4) ≈ 0.018)
                head.project.bias.fill_(-4.0)
        return head

    def _pixel_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        outputs = outputs.float()
        _check_map("keypoints", outputs, targets, same_shape=True)
        if self.params.loss == "bce":
            return F.binary_cross_entropy_with_logits(outputs, targets.float(), reduction="none")
        return F.mse_loss(outputs, targets.float(), reduction="none")

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self._pixel_loss(outputs, targets).mean()

    def per_sample_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self._pixel_loss(outputs, targets).flatten(start_dim=1).mean(dim=1)

    def metric(self) -> Metric:
        if self.params.metric == "peak-distance":
            return PeakDistance()  # the arg-max is the same for logits and probabilities
        return HeatmapL1(logits=self.params.loss == "bce")


# --------------------------------------------------------------------------- scene class


class SceneClassification(Classification):
    """The scene class of a multi-task image, on pooled features; as `classification`, on `scene`.

    A separate head (rather than `classification` on `y`) because a multi-task data set may key
    `y` on something else, and because its classes come from `metadata["scene_classes"]`.
    """

    features = "pooled"
    target = "scene"

    def build(self, num_features: int, data: DataBundle) -> nn.Module:
        names = data.metadata.get("scene_classes")
        if not isinstance(names, (list, tuple)) or not names:
            raise ValueError(
                "task head 'scene-classification' needs data.metadata['scene_classes'] (a non-empty "
                f"list of scene names), which data set {data.name!r} does not provide "
                f"(got {names!r})"
            )
        return nn.Linear(num_features, len(names))


@hookimpl
def harness_register_task_heads() -> list[TaskHeadRecord]:
    return [
        TaskHeadRecord(
            name="segmentation",
            factory=Segmentation,
            params=DenseHeadParams,
            description="conv head on the feature map, upsampled; pixel cross-entropy (255 ignored), "
            "mIoU (higher is better)",
        ),
        TaskHeadRecord(
            name="depth",
            factory=Depth,
            params=DepthParams,
            description="conv head on the feature map, upsampled; L1/L2 over valid pixels, mean "
            "absolute depth error in the data set's units (lower is better)",
        ),
        TaskHeadRecord(
            name="keypoints",
            factory=Keypoints,
            params=KeypointParams,
            description="conv head to K heat maps, upsampled; per-pixel BCE (or MSE), peak distance in pixels or "
            "heat-map L1 (lower is better)",
        ),
        TaskHeadRecord(
            name="scene-classification",
            factory=SceneClassification,
            params=NoParams,
            description="linear head on pooled features for metadata['scene_classes']; "
            "cross-entropy, accuracy (higher is better)",
        ),
    ]
