"""Every first-party backbone builds on 8×8 and 32×32 inputs and trains a step, or refuses clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.api import BuildContext
from harness.backbone import TaskModel, scored_layers
from harness.pluginmanager import get_components

SHAPES = {"8x8 gray": (1, 8, 8), "32x32 rgb": (3, 32, 32)}


def build(name: str, shape: tuple[int, ...], **params) -> TaskModel:
    backbone = get_components().build("backbone", name, params, BuildContext(input_shape=shape))
    return TaskModel(backbone, nn.Linear(backbone.num_features, 10))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(
    ("name", "params"),
    [("small-cnn", {}), ("linear", {}), ("resnet18", {"width": 8}), ("small-unet", {"width": 4})],
)
def test_backbone_trains_a_step(name, params, shape):
    torch.manual_seed(0)
    model = build(name, shape, **params)
    x, y = torch.rand(4, *shape), torch.randint(0, 10, (4,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert scored_layers(model)


def test_resnet18_scores_the_papers_21_layers():
    assert len(scored_layers(build("resnet18", (3, 32, 32)))) == 21


def test_lenet5_refuses_inputs_too_small_for_its_second_convolution():
    with pytest.raises(ValueError, match="at least 12×12"):
        build("lenet5", (1, 8, 8))
    assert len(scored_layers(build("lenet5", (3, 32, 32)))) == 5


def test_image_backbones_refuse_feature_vectors():
    with pytest.raises(ValueError, match="image inputs"):
        build("small-cnn", (12,))


@pytest.mark.parametrize(
    ("name", "params"),
    [("small-cnn", {}), ("resnet18", {"width": 8}), ("small-unet", {"width": 4})],
)
def test_convolutional_backbones_give_a_map_whose_pool_is_their_output(name, params):
    backbone = build(name, (3, 32, 32), **params).backbone
    x = torch.rand(2, 3, 32, 32)
    backbone.eval()
    fmap = backbone.forward_features(x)
    assert fmap.dim() == 4 and fmap.shape[1] == backbone.num_features
    assert torch.allclose(backbone.pool(fmap), backbone(x), atol=1e-6)


def test_small_unet_keeps_the_full_resolution_for_dense_heads():
    backbone = build("small-unet", (3, 32, 32), width=4, levels=2).backbone
    assert backbone.forward_features(torch.rand(1, 3, 32, 32)).shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        build("small-unet", (3, 12, 12), width=4, levels=3)


def test_backbones_without_a_map_say_so():
    for name, shape in (("linear", (12,)), ("lenet5", (3, 32, 32))):
        backbone = build(name, shape).backbone
        assert backbone.has_feature_map is False
        with pytest.raises(NotImplementedError, match="gives no feature map"):
            backbone.forward_features(torch.rand(1, *shape))


def test_resnet18_imagenet_stem_takes_224_pixels_with_the_same_21_layers():
    torch.manual_seed(0)
    model = build("resnet18", (3, 224, 224), width=8, stem="imagenet")
    assert model(torch.rand(2, 3, 224, 224)).shape == (2, 10)
    assert len(scored_layers(model)) == 21
    assert model.backbone.stem[0].kernel_size == (7, 7)


def test_resnet18_cifar_stem_is_left_out_of_the_resolved_params():
    """Specs written before `stem` existed keep their hash and track."""
    from harness.specfile import validate_params

    params = get_components().get("backbone", "resnet18").record.params
    assert validate_params(params, {}) == {"width": 64}
    assert validate_params(params, {"stem": "imagenet"}) == {"width": 64, "stem": "imagenet"}
