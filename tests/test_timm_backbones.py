"""The timm backbones: `timm:<model>` for any timm model, and the paper's resnet50, senet18 and vit.

Every one is built the way a spec builds it (through the registry: `Components.build`), kept
tiny where a parameter allows, and trained one SGD step; what cannot work is refused with a
message naming the backbone and the input shape.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from harness.api import BuildContext
from harness.backbone import Backbone, TaskModel, scored_layers
from harness.pluginmanager import get_components

SHAPES = {"32x32 rgb": (3, 32, 32), "8x8 rgb": (3, 8, 8), "28x28 gray": (1, 28, 28)}

#: tiny versions, as a spec would write them; timm's zero start of each block's last batch norm is
#: switched off so that every scored layer moves at the first step
TINY = {
    "timm:resnet18": {
        "small_input": True,
        "kwargs": {"channels": [8, 16, 32, 64], "zero_init_last": False},
    },
    "resnet50": {"width": 8},
    "senet18": {"width": 8},
    "vit": {"embed_dim": 32, "depth": 2, "num_heads": 2},
}


def build(name: str, shape: tuple[int, ...], **params) -> Backbone:
    return get_components().build("backbone", name, params, BuildContext(input_shape=shape))


def with_head(backbone: Backbone) -> TaskModel:
    return TaskModel(backbone, nn.Linear(backbone.num_features, 10))


def described_layers(name: str) -> int:
    description = get_components().get("backbone", name).record.description
    return int(re.search(r"(\d+) scored layers", description).group(1))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("name", TINY)
def test_backbone_trains_one_sgd_step(name, shape):
    torch.manual_seed(0)
    model = with_head(build(name, shape, **TINY[name]))
    weights = scored_layers(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x, y = torch.rand(4, *shape), torch.randint(0, 10, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    after = dict(model.named_parameters())
    assert [k for k in weights if torch.equal(before[k], after[k])] == []


@pytest.mark.parametrize("name", TINY)
def test_feature_map_is_4d_and_pools_to_the_forward_features(name):
    backbone = build(name, (3, 32, 32), **TINY[name]).eval()
    x = torch.rand(2, 3, 32, 32)
    fmap = backbone.forward_features(x)
    assert backbone.has_feature_map
    assert fmap.ndim == 4 and fmap.shape[:2] == (2, backbone.num_features)
    assert torch.allclose(backbone(x), backbone.pool(fmap))


def test_vit_map_is_the_patch_grid_and_pooling_its_mean():
    backbone = build("vit", (3, 32, 32), **TINY["vit"])
    x = torch.rand(2, 3, 32, 32)
    fmap = backbone.forward_features(x)
    assert fmap.shape == (2, 32, 8, 8)  # 32 / patch 4
    assert torch.allclose(backbone(x), fmap.mean(dim=(2, 3)), atol=1e-6)


def test_timm_resnet18_in_cifar_form_keeps_the_resolution_in_its_stem():
    cifar = build("timm:resnet18", (3, 32, 32))  # small_input: auto, on for 32×32
    assert cifar.model.conv1.kernel_size == (3, 3) and cifar.model.conv1.stride == (1, 1)
    assert isinstance(cifar.model.maxpool, nn.Identity)
    assert cifar.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 512, 4, 4)
    assert len(scored_layers(with_head(cifar))) == 21  # as the hand-written resnet18

    imagenet = build("timm:resnet18", (3, 32, 32), small_input=False)
    assert imagenet.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 512, 1, 1)


@pytest.mark.parametrize("name", ["resnet50", "senet18", "vit"])
def test_description_states_the_real_number_of_scored_layers(name):
    assert len(scored_layers(with_head(build(name, (3, 32, 32))))) == described_layers(name)


@pytest.mark.parametrize("name", ["resnet50", "senet18"])
def test_width_scales_channels_not_the_layers(name):
    tiny = build(name, (3, 32, 32), width=8)
    assert len(scored_layers(with_head(tiny))) == described_layers(name)


def test_the_registry_answers_timm_names_through_the_family():
    components = get_components()
    found = components.get("backbone", "timm:resnet18")
    assert found.record.name == "timm" and found.variant == "resnet18"
    backbone = build("timm:resnet18", (3, 32, 32), kwargs={"drop_rate": 0.1})
    assert backbone.num_features == 512 and backbone.model.drop_rate == 0.1
    with pytest.raises(ValueError, match=r"timm:resnet18"):
        build("timm", (3, 32, 32))


def test_pretrained_weights_are_refused():
    with pytest.raises(
        ValueError, match="pretrained weights are refused.*local weights is not supported"
    ):
        build("timm:resnet18", (3, 32, 32), kwargs={"pretrained": True})
    with pytest.raises(ValueError, match="checkpoint_path is not allowed"):
        build("timm:resnet18", (3, 32, 32), kwargs={"checkpoint_path": "weights.pth"})


def test_unknown_model_suggests_close_names():
    with pytest.raises(
        ValueError, match=r"unknown timm model 'resnet17'.*did you mean.*'resnet18'"
    ):
        build("timm:resnet17", (3, 32, 32))


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="does not take these kwargs"):
        build("timm:resnet18", (3, 32, 32), kwargs={"no_such_argument": 1})
    with pytest.raises(ValueError, match="num_classes is not allowed"):
        build("timm:resnet18", (3, 32, 32), kwargs={"num_classes": 10})
    with pytest.raises(ValueError, match="extra"):
        build("timm:resnet18", (3, 32, 32), small_inputs=True)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        build("vit", (3, 32, 32), embed_dim=30, num_heads=4)


@pytest.mark.parametrize("name", TINY)
def test_feature_vectors_are_refused(name):
    with pytest.raises(
        ValueError, match=rf"{name} needs image inputs \[C, H, W\], got shape \(12,\)"
    ):
        build(name, (12,), **TINY[name])


def test_images_that_patches_do_not_tile_are_refused():
    with pytest.raises(
        ValueError, match=r"vit cannot take inputs of shape \(3, 30, 30\).*4×4 patches"
    ):
        build("vit", (3, 30, 30), **TINY["vit"])
    tiny_vit = {"embed_dim": 32, "depth": 1, "num_heads": 2}
    with pytest.raises(ValueError, match=r"timm:vit_tiny_patch16_224 cannot take .*\(3, 30, 30\)"):
        build("timm:vit_tiny_patch16_224", (3, 30, 30), kwargs=tiny_vit)


def test_inputs_too_small_for_a_model_are_refused_when_it_is_built():
    # ConvNeXt downsamples by 32 with 2×2 convolutions and has no small-input form
    with pytest.raises(
        ValueError, match=r"timm:convnext_atto cannot take inputs of shape \(3, 8, 8\)"
    ):
        build("timm:convnext_atto", (3, 8, 8))


def test_class_token_pooling_leaves_no_feature_map():
    # the class token is not in the map, so dense heads are refused; pooled heads still work
    backbone = build(
        "timm:vit_tiny_patch16_224",
        (3, 32, 32),
        kwargs={"global_pool": "token", "embed_dim": 32, "depth": 1, "num_heads": 2},
    )
    assert not backbone.has_feature_map
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    with pytest.raises(NotImplementedError, match="no feature map"):
        backbone.forward_features(torch.rand(2, 3, 32, 32))
