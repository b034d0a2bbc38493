"""Small backbones for CPU-scale runs: a small CNN, LeNet-5 and a linear classifier.

Each returns pooled features; the task head sits on top. The larger backbones of the paper
(ResNet, SENet, ViT through timm) come from their own plugin.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from torch import Tensor, nn

from harness.api import Backbone, BackboneRecord, BuildContext, NoParams, Params, hookimpl


class SmallCNNParams(Params):
    width: int = Field(
        default=16, gt=0, le=512, description="channels of the first block; doubles per block"
    )
    blocks: int = Field(
        default=3, ge=1, le=6, description="conv-BN-ReLU blocks; all but the first halve the size"
    )
    batch_norm: bool = True


class SmallCNN(Backbone):
    """Conv3x3 blocks with batch norm; the first keeps the resolution, later ones pool by 2.

    Works from 8×8 (digits) to 32×32 (CIFAR) and above: pooling stops once the map is 2×2 and
    a global average pool ends the network.
    """

    def __init__(self, params: SmallCNNParams, context: BuildContext) -> None:
        super().__init__()
        input_shape = context.input_shape
        if len(input_shape) != 3:
            raise ValueError(f"small-cnn needs image inputs [C, H, W], got shape {input_shape}")
        channels, height, _ = input_shape
        layers: list[nn.Module] = []
        size, c_in = height, channels
        for i in range(params.blocks):
            c_out = params.width * 2**i
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not params.batch_norm))
            if params.batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            if i > 0 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.num_features = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features[:-2](x)  # everything but the global pool and flatten

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class LeNet5(Backbone):
    """LeNet-5 (conv 6@5×5, pool, conv 16@5×5, pool, fc 120, fc 84); the head adds the last fc.

    The first convolution pads by 2 as for 28×28 MNIST, so 32×32 inputs also work; inputs
    smaller than 12×12 leave nothing for the second convolution and are refused.
    """

    MIN_SIZE = 12

    def __init__(self, params: NoParams, context: BuildContext) -> None:
        super().__init__()
        input_shape = context.input_shape
        if len(input_shape) != 3:
            raise ValueError(f"lenet5 needs image inputs [C, H, W], got shape {input_shape}")
        channels, height, width = input_shape
        if min(height, width) < self.MIN_SIZE:
            raise ValueError(
                f"lenet5 needs inputs of at least {self.MIN_SIZE}×{self.MIN_SIZE}, got {height}×{width}; "
                "use small-cnn or linear for 8×8 data"
            )
        h = ((height // 2) - 4) // 2
        w = ((width // 2) - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * h * w, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
        )
        self.num_features = 84
        self.has_feature_map = False

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class Flatten(Backbone):
    """No parameters: the head's single Linear layer is the whole model (the paper's toy model)."""

    def __init__(self, params: NoParams, context: BuildContext) -> None:
        super().__init__()
        self.num_features = math.prod(context.input_shape)
        self.has_feature_map = False

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


class ResNetParams(Params):
    width: int = Field(
        default=64, gt=0, le=512, description="channels of the first stage (64 in the paper)"
    )
    stem: Literal["cifar", "imagenet"] = Field(
        default="cifar",
        description="cifar: 3x3 stride-1 convolution, no max-pool (32x32 inputs); imagenet: 7x7 "
        "stride-2 convolution and 3x3 stride-2 max-pool (224x224 inputs, torchvision's ResNet-18)",
    )

    @model_serializer(mode="wrap")
    def _omit_cifar_stem(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after the first runs: left out at its default, so older runs keep hash and track
        data = handler(self)
        if self.stem == "cifar":
            data.pop("stem", None)
        return data


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class CifarResNet18(Backbone):
    """ResNet-18 in its CIFAR form (3×3 stride-1 stem, no max-pool), as the paper and the UE
    literature train it: 20 convolutions (17 plus 3 shortcut projections), so with the
    classification head the 21 scored layers of the reference. `stem: imagenet` gives
    torchvision's stem (7×7 stride 2, max-pool) for 224-pixel inputs, with the same 21 layers."""

    def __init__(self, params: ResNetParams, context: BuildContext) -> None:
        super().__init__()
        input_shape = context.input_shape
        if len(input_shape) != 3:
            raise ValueError(f"resnet18 needs image inputs [C, H, W], got shape {input_shape}")
        w = params.width
        if params.stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(input_shape[0], w, 7, 2, 3, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(input_shape[0], w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()
            )
        stages, c_in = [], w
        for i, c_out in enumerate((w, 2 * w, 4 * w, 8 * w)):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_features(x))


class SmallUNetParams(Params):
    width: int = Field(
        default=16, gt=0, le=256, description="channels at full resolution; doubles per level"
    )
    levels: int = Field(
        default=2, ge=1, le=4, description="down-sampling levels (each halves the map)"
    )
    convs: int = Field(
        default=2, ge=1, le=3, description="conv-BN-ReLU layers per block (2 in U-Net)"
    )


def _conv_block(c_in: int, c_out: int, convs: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


class SmallUNet(Backbone):
    """A small encoder-decoder with skip connections: a full-resolution feature map for dense heads.

    Dense tasks (segmentation, depth, key points) need spatial detail that a classification
    backbone pools away; at CPU scale a U-Net is the cheapest way to give every head of a
    multi-task model a map it can learn from. Pooled features are the global average of the
    decoder's output, so classification heads share every weight with the dense ones.
    """

    def __init__(self, params: SmallUNetParams, context: BuildContext) -> None:
        super().__init__()
        input_shape = context.input_shape
        if len(input_shape) != 3:
            raise ValueError(f"small-unet needs image inputs [C, H, W], got shape {input_shape}")
        channels, height, width = input_shape
        if min(height, width) % 2**params.levels:
            raise ValueError(
                f"small-unet with {params.levels} levels needs sides divisible by "
                f"{2**params.levels}, got {height}×{width}"
            )
        widths = [params.width * 2**i for i in range(params.levels + 1)]
        n = params.convs
        self.down = nn.ModuleList([_conv_block(channels, widths[0], n)])
        self.down.extend(_conv_block(widths[i], widths[i + 1], n) for i in range(params.levels))
        self.up = nn.ModuleList(
            _conv_block(widths[i + 1] + widths[i], widths[i])
            for i in reversed(range(params.levels))
        )
        self.num_features = widths[0]

    def forward_features(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = block(
                torch.cat(
                    [nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip],
                    dim=1,
                )
            )
        return x


@hookimpl
def harness_register_backbones() -> list[BackboneRecord]:
    return [
        BackboneRecord(
            name="small-cnn",
            factory=SmallCNN,
            params=SmallCNNParams,
            description="conv3x3-BN-ReLU blocks with pooling and a global average pool; 8×8 to 32×32 inputs",
        ),
        BackboneRecord(
            name="lenet5",
            factory=LeNet5,
            params=NoParams,
            description="LeNet-5 (LeCun et al. 1998) features up to fc 84; inputs of 12×12 and more",
        ),
        BackboneRecord(
            name="resnet18",
            factory=CifarResNet18,
            params=ResNetParams,
            description="ResNet-18, CIFAR form (3×3 stride-1 stem, no max-pool) or `stem: imagenet`; 21 scored layers with its head",
        ),
        BackboneRecord(
            name="small-unet",
            factory=SmallUNet,
            params=SmallUNetParams,
            description="small encoder-decoder with skips: a full-resolution feature map for dense and "
            "multi-task heads at CPU scale",
        ),
        BackboneRecord(
            name="linear",
            factory=Flatten,
            params=NoParams,
            description="flattened inputs into the task head: a linear classifier (the paper's toy model)",
        ),
    ]
