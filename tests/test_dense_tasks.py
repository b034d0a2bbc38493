"""The multi-task heads: segmentation, depth, key points and scene class.

Losses and metrics are checked on hand-made cases whose answer is known; the heads are built on a
tiny fake multi-task data set (a 4x4 feature map for 16x16 inputs) the way the runner builds
them, through the registry.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor
from torch.nn import functional as F

from harness.api import BuildContext
from harness.backbone import TaskModel
from harness.data import DataBundle, Split
from harness.pluginmanager import get_components
from harness_plugins.dense_tasks import (
    ConfusionMatrixIoU,
    Depth,
    DepthParams,
    KeypointParams,
    Keypoints,
    SceneClassification,
    Segmentation,
)

H = W = 16
CLASSES = 5
K = 3
SCENES = ["kitchen", "office"]


def logits_for(pred: Tensor, num_classes: int) -> Tensor:
    """Logits [B, C, H, W] whose argmax is the class map `pred` [B, H, W]."""
    return F.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def peak_map(shape: tuple[int, int], row: int, col: int) -> Tensor:
    out = torch.zeros(shape)
    out[row, col] = 1.0
    return out


def fake_split(n: int, generator: torch.Generator) -> Split:
    seg = torch.randint(0, CLASSES, (n, H, W), generator=generator)
    seg[:, 0, :] = 255  # a border of unlabelled pixels, as real masks have
    depth = torch.rand(n, 1, H, W, generator=generator) * 10
    depth[:, :, :2] = 0.0  # holes of the depth sensor
    return Split(
        x=torch.rand(n, 3, H, W, generator=generator),
        y=torch.zeros(n, dtype=torch.int64),
        targets={
            "segmentation": seg,
            "depth": depth,
            "keypoints": torch.rand(n, K, H, W, generator=generator),
            "scene": torch.randint(0, len(SCENES), (n,), generator=generator),
        },
    )


def fake_bundle(**metadata) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    meta = {"segmentation_classes": CLASSES, "keypoints": K, "scene_classes": SCENES}
    meta.update(metadata)
    meta = {k: v for k, v in meta.items() if v is not None}
    return DataBundle(
        "fake-multitask", fake_split(6, g), fake_split(4, g), classes=["scene"], metadata=meta
    )


def registered(name: str, **params):
    return get_components().build("task", name, params)


# --------------------------------------------------------------------------- segmentation


def test_a_perfect_segmentation_has_miou_one_and_the_ignore_label_is_never_scored():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 0, 1], [1, 2, 3]]])  # class 3 only "predicted" where ignored
    metric = ConfusionMatrixIoU(num_classes=4)
    metric.update(logits_for(pred, 4), target)
    assert metric.compute() == pytest.approx(1.0)
    assert int(metric.confusion.sum()) == 5


def test_miou_of_a_known_confusion():
    # valid pixels: target 0 0 1 1 2, predicted 0 1 1 1 0
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 0; class 3 appears nowhere and is left out
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    metric = ConfusionMatrixIoU(num_classes=4)
    metric.update(logits_for(pred, 4), target)
    iou = metric.per_class()
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert metric.compute() == pytest.approx(1 / 3)


def test_miou_accumulates_a_confusion_matrix_not_a_mean_of_batch_scores():
    a_target, a_pred = torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]])  # mIoU 1
    b_target, b_pred = torch.tensor([[[1, 1]]]), torch.tensor([[[0, 1]]])  # mIoU (0 + 1/2) / 2
    metric = ConfusionMatrixIoU(num_classes=2)
    metric.update(logits_for(a_pred, 2), a_target)
    metric.update(logits_for(b_pred, 2), b_target)
    # together: class 0 = 2/3, class 1 = 1/2; the mean of the batch scores would be 0.625
    assert metric.compute() == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_segmentation_metric_refuses_class_ids_outside_the_range():
    metric = ConfusionMatrixIoU(num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 7]]]))


def test_segmentation_loss_ignores_label_255_and_never_gives_nan():
    head = Segmentation()
    outputs = torch.zeros(2, 3, 2, 2, requires_grad=True)  # uniform: log(3) on every pixel
    target = torch.tensor([[[0, 1], [2, 255]], [[255, 255], [255, 255]]])
    assert float(head.loss(outputs, target).detach()) == pytest.approx(math.log(3))
    per_sample = head.per_sample_loss(outputs, target)
    assert per_sample.shape == (2,)
    assert per_sample.tolist() == pytest.approx([math.log(3), 0.0])  # all-ignored image: 0

    head.loss(outputs, target).backward()
    assert outputs.grad is not None and torch.isfinite(outputs.grad).all()
    assert outputs.grad[:, :, 1, 1].abs().sum() == 0  # the ignored pixel of image 0 has no say
    all_ignored = torch.full((1, 2, 2), 255)
    assert float(head.loss(torch.zeros(1, 3, 2, 2), all_ignored)) == 0.0


# --------------------------------------------------------------------------- depth


def test_depth_error_and_losses_skip_invalid_pixels():
    target = torch.tensor([[[[1.0, 2.0, 0.0], [-1.0, float("nan"), float("inf")]]]])
    pred = torch.tensor([[[[1.5, 1.0, 7.0], [7.0, 7.0, 7.0]]]], requires_grad=True)
    metric = Depth().metric()
    metric.update(pred.detach(), target)
    assert metric.compute() == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    assert float(Depth().loss(pred, target).detach()) == pytest.approx(0.75)
    l2 = Depth(DepthParams(loss="l2"))
    assert float(l2.loss(pred, target).detach()) == pytest.approx((0.25 + 1.0) / 2)

    l2.loss(pred, target).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad[0, 0, 1].abs().sum() == 0 and pred.grad[0, 0, 0, 2] == 0


def test_depth_per_sample_loss_is_a_mean_over_each_images_valid_pixels():
    target = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]])
    pred = torch.tensor([[[[3.0, 9.0]]], [[[9.0, 9.0]]]])
    assert Depth().per_sample_loss(pred, target).tolist() == pytest.approx([2.0, 0.0])
    assert Depth().higher_is_better is False and Depth().metric_name == "depth_abs_error"


def test_depth_rejects_outputs_of_another_shape():
    with pytest.raises(ValueError, match="depth"):
        Depth().loss(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 8, 8))


# --------------------------------------------------------------------------- key points


def test_keypoint_error_is_the_pixel_distance_between_peaks_of_present_points():
    target = torch.zeros(2, 2, 8, 8)
    target[0, 0] = peak_map((8, 8), 2, 2)
    target[1, 0] = peak_map((8, 8), 2, 2)
    # channel 1 is all zero in both images: the point is absent, whatever the prediction says
    pred = torch.zeros(2, 2, 8, 8)
    pred[0, 0] = peak_map((8, 8), 2, 5)  # 3 pixels off
    pred[1, 0] = peak_map((8, 8), 5, 6)  # 3 down, 4 across: 5 pixels off
    pred[:, 1] = peak_map((8, 8), 7, 7)

    first = Keypoints().metric()
    first.update(pred[:1], target[:1])
    assert first.compute() == pytest.approx(3.0)

    both = Keypoints().metric()
    both.update(pred, target)
    assert both.compute() == pytest.approx(4.0)


def test_keypoint_peaks_at_or_below_one_half_are_absent_points():
    target = 0.5 * peak_map((4, 4), 0, 0)[None, None]
    metric = Keypoints().metric()
    metric.update(peak_map((4, 4), 3, 3)[None, None], target)
    assert math.isnan(metric.compute())  # nothing to score


def test_keypoint_l1_metric_and_mse_loss():
    head = Keypoints(KeypointParams(metric="l1", loss="mse"))
    assert head.metric_name == "keypoint_heatmap_l1" and Keypoints().metric_name == "keypoint_error"
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    pred = torch.full((1, 1, 2, 2), 0.5)
    metric = head.metric()
    metric.update(pred, target)
    assert metric.compute() == pytest.approx(0.5)
    assert float(head.loss(pred, target)) == pytest.approx(0.25)
    assert head.per_sample_loss(pred, target).shape == (1,)


def test_keypoint_bce_head_outputs_logits_and_its_l1_metric_compares_probabilities():
    head = Keypoints(KeypointParams(metric="l1"))  # loss: bce is the default
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0
    logits = torch.zeros(1, 1, 2, 2)  # probability 0.5 everywhere
    metric = head.metric()
    metric.update(logits, target)
    assert metric.compute() == pytest.approx(0.5)
    assert float(head.loss(logits, target)) == pytest.approx(math.log(2))
    assert float(head.build(8, fake_bundle()).project.bias.detach().mean()) == pytest.approx(-4.0)


# --------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize(
    "head",
    [
        Segmentation(),
        Depth(),
        Keypoints(),
        Keypoints(KeypointParams(metric="l1")),
        SceneClassification(),
    ],
    ids=lambda h: f"{type(h).__name__}-{h.metric_name}",
)
def test_a_metric_over_two_batches_equals_the_metric_over_one_batch_of_both(head):
    data = fake_bundle()
    head.build(8, data)
    g = torch.Generator().manual_seed(1)
    targets = head.targets(data.train)
    channels = {"segmentation": CLASSES, "depth": 1, "keypoints": K}.get(head.target)
    if channels is None:
        outputs = torch.randn(len(targets), len(SCENES), generator=g)
    else:
        outputs = torch.randn(len(targets), channels, H, W, generator=g)
        if head.target == "keypoints":
            targets = (targets > 0.9).float()  # some present points, some absent
    if head.target == "depth":
        targets = targets.clone()
        targets[:4, :, 2:] = 0.0  # the batches have different numbers of valid pixels

    split, whole = head.metric(), head.metric()
    split.update(outputs[:4], targets[:4])
    split.update(outputs[4:], targets[4:])
    whole.update(outputs, targets)
    assert split.compute() == pytest.approx(whole.compute())


# --------------------------------------------------------------------------- building


@pytest.mark.parametrize(
    ("name", "channels"), [("segmentation", CLASSES), ("depth", 1), ("keypoints", K)]
)
def test_dense_heads_upsample_a_coarse_feature_map_to_the_input_size(name, channels):
    data = fake_bundle()
    head = registered(name)
    assert head.features == "map" and head.target == name
    head.check_data(data)
    module = head.build(8, data)
    outputs = module(torch.randn(2, 8, 4, 4))
    assert outputs.shape == (2, channels, H, W)
    loss = head.loss(outputs, head.targets(data.train)[:2])
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert head.per_sample_loss(outputs, head.targets(data.train)[:2]).shape == (2,)
    metric = head.metric()
    metric.update(outputs.detach(), head.targets(data.train)[:2])
    assert math.isfinite(metric.compute())


def test_scene_classification_is_a_linear_head_on_pooled_features():
    data = fake_bundle()
    head = registered("scene-classification")
    assert head.features == "pooled" and head.target == "scene"
    module = head.build(8, data)
    outputs = module(torch.randn(2, 8))
    assert outputs.shape == (2, len(SCENES))
    targets = head.targets(data.train)[:2]
    assert head.per_sample_loss(outputs, targets).shape == (2,)
    metric = head.metric()
    metric.update(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
    assert metric.compute() == 0.5


def test_a_dense_head_on_a_registered_backbone_predicts_at_input_resolution():
    data = fake_bundle()
    backbone = get_components().build(
        "backbone",
        "small-cnn",
        {"width": 4, "blocks": 2},
        BuildContext(input_shape=data.input_shape),
    )
    head = registered("segmentation", hidden=8)
    model = TaskModel(backbone, head.build(backbone.num_features, data), features=head.features)
    with torch.no_grad():
        fmap = backbone.forward_features(data.train.x[:2])
        outputs = model(data.train.x[:2])
    assert fmap.shape[-1] < W  # the head really upsamples
    assert outputs.shape == (2, CLASSES, H, W)


def test_losses_are_float32_under_autocast():
    data = fake_bundle()
    head = Depth()
    module = head.build(8, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = module(torch.randn(2, 8, 4, 4))
        loss = head.loss(outputs, head.targets(data.train)[:2])
    assert loss.dtype == torch.float32


# --------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("segmentation", "segmentation_classes"),
        ("keypoints", "keypoints"),
        ("scene-classification", "scene_classes"),
    ],
)
def test_building_without_the_metadata_a_head_needs_says_what_is_missing(name, key):
    data = fake_bundle(**{key: None})
    with pytest.raises(ValueError, match=rf"'{name}'.*{key}"):
        registered(name).build(8, data)


def test_bad_metadata_values_are_refused():
    with pytest.raises(ValueError, match="positive int"):
        Segmentation().build(8, fake_bundle(segmentation_classes="5"))
    with pytest.raises(ValueError, match=r"K=2.*\[N, 2, H, W\]"):
        Keypoints().build(8, fake_bundle(keypoints=2))


def test_dense_heads_refuse_data_that_are_not_images():
    data = fake_bundle()
    flat = DataBundle(
        "tabular",
        Split(torch.rand(4, 10), torch.zeros(4, dtype=torch.int64)),
        Split(torch.rand(2, 10), torch.zeros(2, dtype=torch.int64)),
        ["a"],
        metadata=data.metadata,
    )
    with pytest.raises(ValueError, match="'depth'.*images"):
        Depth().build(8, flat)


def test_check_data_names_a_missing_target():
    data = fake_bundle()
    del data.train.targets["depth"]
    with pytest.raises(ValueError, match="'depth'"):
        Depth().check_data(data)


def test_params_are_validated():
    record = get_components().get("task", "depth").record
    with pytest.raises(ValidationError):
        record.params.model_validate({"loss": "huber"})
    with pytest.raises(ValidationError):
        get_components().get("task", "keypoints").record.params.model_validate({"metrics": "l1"})
