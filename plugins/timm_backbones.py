"""Backbones from timm: any timm model as `timm:<model>`, and the paper's ResNet-50, SENet-18 and ViT.

The harness puts its own task head on top, so every timm model is created headless
(`num_classes=0`) and wrapped so that it speaks the `Backbone` interface: a feature map for dense
heads and pooled features for classification heads, the pooled features always computed from the
map (`forward(x) == pool(forward_features(x))`), so single- and multi-task models see the same
numbers.

timm is imported inside the functions that need it: importing it costs over a second, which
`harness plugins` and every spec check would otherwise pay even when no timm model is used.

Small images (`small_input`, on by default up to 64 pixels a side) change two families, the only
ones the UE literature trains on CIFAR-sized data:

* timm's ResNet class (ResNet, SE-ResNet, ResNeXt, ResNet-D, ...): the CIFAR form. A 7×7
  stride-2 stem convolution becomes a 3×3 stride-1 one with the same channels, a deep stem
  (three 3×3 convolutions) loses the stride of its first one, and the stem max-pool goes. Without
  this a 32×32 image is a 1×1 map after the third stage.
* timm's VisionTransformer: patches of 4 instead of 16 (a 32×32 image gives 64 tokens, not 4),
  unless `patch_size` is given.

Whatever the input size, a ViT is also created for the input's own size (`img_size`) and, unless
told otherwise, pools by the mean of its patch tokens (`global_pool="avg"`) with the final norm
applied to every token (`fc_norm=False`), so that its pooled features are exactly the mean of the
map a dense head reads. Every other timm family is created as timm defines it; where its pooled
features cannot be recovered from a spatial map (a class-token pooling, say), it is offered for
pooled heads only (`has_feature_map = False`).

No weights are ever downloaded: `pretrained: true` is refused, and so is loading local
checkpoints, since the harness records no provenance for them.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from harness.api import Backbone, BackboneRecord, BuildContext, Params, hookimpl

#: `small_input: auto` adapts the model when neither side of the input exceeds this
SMALL_INPUT_SIDE = 64
#: the arguments the harness sets itself (the head) or cannot honour (weights from elsewhere)
_WEIGHT_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")
_HEAD_ARGS = ("num_classes", "features_only")

ImageShape = tuple[int, int, int]


class TimmParams(Params):
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="arguments passed to timm.create_model (e.g. drop_path_rate, channels, depth); "
        "num_classes is the harness's, pretrained must stay false",
    )
    small_input: Literal["auto"] | bool = Field(
        default="auto",
        description=f"CIFAR-form ResNet stems and patch-4 ViTs; auto: on when both sides are ≤ {SMALL_INPUT_SIDE}",
    )


class CifarResNetParams(Params):
    width: int = Field(
        default=64,
        gt=0,
        le=512,
        description="channels of the stem and first stage, doubled per stage (64 in the paper)",
    )


class VitParams(Params):
    embed_dim: int = Field(default=512, gt=0, le=4096, description="token width (512 in the paper)")
    depth: int = Field(default=6, ge=1, le=48, description="transformer blocks (6 in the paper)")
    num_heads: int = Field(default=8, ge=1, le=64, description="attention heads (8 in the paper)")
    patch_size: int = Field(
        default=4, ge=1, le=64, description="side of a square patch (4 in the paper)"
    )
    mlp_ratio: float = Field(
        default=4.0,
        gt=0,
        le=16,
        description="MLP hidden width over token width (timm's default; the paper gives none)",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> VitParams:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        return self


def image_shape(name: str, input_shape: tuple[int, ...]) -> ImageShape:
    """The input as [C, H, W], refusing feature vectors early rather than inside a convolution."""
    if len(input_shape) != 3 or not all(isinstance(n, int) and n > 0 for n in input_shape):
        raise ValueError(f"{name} needs image inputs [C, H, W], got shape {tuple(input_shape)}")
    channels, height, width = input_shape
    return channels, height, width


class TimmBackbone(Backbone):
    """A headless timm model behind the harness's Backbone interface.

    timm models hand back their features in one of three layouts: a channels-first map (CNNs), a
    channels-last map (Swin and friends, `output_fmt = "NHWC"`), or a token sequence whose first
    `num_prefix_tokens` entries are class or register tokens (ViTs). The map a dense head reads is
    always [B, num_features, h, w]; pooling converts it back to the model's own layout and runs the
    model's own pooling (`forward_head(pre_logits=True)`), so pooled features are those timm
    defines. One probe forward at build time measures the layout and checks that pooling the map
    reproduces timm's pooled features; a model for which it does not (its pooling reads the class
    token) gets `has_feature_map = False` and pools from timm's features directly.
    """

    def __init__(self, model: nn.Module, name: str, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        shape = image_shape(name, input_shape)
        self.model = model
        self.label = name
        self.layout = "NHWC" if str(getattr(model, "output_fmt", "NCHW")) == "NHWC" else "NCHW"
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.grid: tuple[int, int] | None = None
        self.feature_ndim = 0  # the rank of timm's features, measured by the probe
        self._probe(shape)

    def _probe(self, shape: ImageShape) -> None:
        """Run one sample through the model in eval mode, without touching the global RNG.

        Eval mode because batch norm refuses a batch of one 1×1 map in training mode; a private
        generator because building a backbone must not shift the seeded data order that follows.
        """
        x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                features = self.model.forward_features(x)
                self.feature_ndim = features.ndim
                pooled = self.model.forward_head(features, pre_logits=True)
                if pooled.ndim != 2:
                    raise TypeError(
                        f"{self.label} pools to shape {tuple(pooled.shape)}, not [batch, features]"
                    )
                if features.ndim == 3:
                    self.layout = "NLC"
                    self.grid = _token_grid(features.shape[1] - self.prefix_tokens, shape[1:])
                self.num_features = int(pooled.shape[-1])
                fmap = self._map(features)
                self.has_feature_map = (
                    fmap is not None
                    and fmap.shape[1] == self.num_features
                    and torch.allclose(self._pool_map(fmap), pooled, rtol=1e-4, atol=1e-5)
                )
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ValueError(
                f"{self.label} cannot take inputs of shape {shape}: the model fails on them ({exc}); "
                "models made for one image size may take img_size in kwargs"
            ) from exc
        finally:
            self.model.train(was_training)

    def _map(self, features: Tensor) -> Tensor | None:
        """timm's features as [B, C, h, w], or None when they have no spatial layout.

        Decided by the rank the build-time probe measured, not `features.ndim`: torch.fx cannot
        branch on a traced tensor's rank, and a traceable backbone gets SAL's exact prefix cache
        (`harness.sal_prefix`; 1.8 times faster than the plain path for SENet-18 on a CPU).
        """
        if self.feature_ndim == 4:
            return features if self.layout == "NCHW" else features.permute(0, 3, 1, 2)
        if self.feature_ndim == 3 and self.grid is not None:
            tokens = features[:, self.prefix_tokens :]
            return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)
        return None

    def _pool_map(self, fmap: Tensor) -> Tensor:
        if self.layout == "NCHW":
            return self.model.forward_head(fmap, pre_logits=True)
        if self.layout == "NHWC":
            return self.model.forward_head(fmap.permute(0, 2, 3, 1), pre_logits=True)
        tokens = fmap.flatten(2).transpose(1, 2)
        # the prefix tokens are gone from the map; zeros hold their places, which a patch-token
        # pooling skips (the probe checked that it does)
        prefix = tokens.new_zeros(tokens.shape[0], self.prefix_tokens, tokens.shape[2])
        return self.model.forward_head(torch.cat([prefix, tokens], dim=1), pre_logits=True)

    def forward_features(self, x: Tensor) -> Tensor:
        if not self.has_feature_map:
            return super().forward_features(x)
        fmap = self._map(self.model.forward_features(x))
        assert fmap is not None
        return fmap

    def pool(self, features: Tensor) -> Tensor:
        return self._pool_map(features)

    def forward(self, x: Tensor) -> Tensor:
        if self.has_feature_map:
            return self.pool(self.forward_features(x))
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def _token_grid(tokens: int, size: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid that `tokens` patch tokens of an H×W image form, if they form one."""
    height, width = size
    if tokens <= 0 or (height * width) % tokens:
        return None
    stride = math.isqrt((height * width) // tokens)
    if (
        stride == 0
        or height % stride
        or width % stride
        or (height // stride) * (width // stride) != tokens
    ):
        return None
    return height // stride, width // stride


def _kaiming_conv(
    c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0
) -> nn.Conv2d:
    """A bias-free convolution initialised as timm initialises ResNet convolutions."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def cifar_stem(model: nn.Module, name: str) -> None:
    """Give a timm ResNet the CIFAR stem in place: stride 1 throughout, no max-pool."""
    stem = model.conv1
    if isinstance(stem, nn.Conv2d):
        model.conv1 = _kaiming_conv(stem.in_channels, stem.out_channels, 3, 1, 1)
    elif isinstance(stem, nn.Sequential) and isinstance(stem[0], nn.Conv2d):
        stem[0].stride = (1, 1)  # a deep stem: only its first 3×3 convolution is strided
    else:
        raise ValueError(
            f"{name}: no CIFAR form for a stem of type {type(stem).__name__}; set small_input: false"
        )
    if not isinstance(model.maxpool, (nn.MaxPool2d, nn.Identity)):
        raise ValueError(
            f"{name}: no CIFAR form for a stem pooling of type {type(model.maxpool).__name__} "
            "(replace_stem_pool or anti-aliasing); set small_input: false"
        )
    model.maxpool = nn.Identity()


def set_stem_width(model: nn.Module, width: int) -> None:
    """Make a CIFAR-form timm ResNet's stem `width` channels wide, keeping the block structure.

    timm fixes a plain stem at 64 channels whatever the stage widths, so a narrowed network would
    gain a shortcut projection in its first block (SE-ResNet-18) or lose one (ResNet-50 at width
    16), changing the scored layers. The stem and the input side of the first block are rebuilt,
    and that block has a projection exactly when its input and output widths differ.
    """
    first = model.layer1[0]
    out = (first.conv3 if hasattr(first, "conv3") else first.conv2).out_channels
    model.conv1 = _kaiming_conv(model.conv1.in_channels, width, 3, 1, 1)
    model.bn1 = nn.BatchNorm2d(width)
    old = first.conv1
    first.conv1 = _kaiming_conv(
        width, old.out_channels, old.kernel_size[0], old.stride[0], old.padding[0]
    )
    first.downsample = (
        nn.Sequential(_kaiming_conv(width, out, 1), nn.BatchNorm2d(out)) if width != out else None
    )


def create_timm_model(
    name: str,
    kwargs: dict[str, Any],
    input_shape: tuple[int, ...],
    small_input: Literal["auto"] | bool,
) -> nn.Module:
    """timm.create_model, headless, for this input, adapted to small images where asked."""
    import timm
    from timm.models import is_model_in_modules
    from timm.models.resnet import ResNet

    label = f"timm:{name}"
    channels, height, width = image_shape(label, input_shape)
    args = dict(kwargs)
    if args.pop("pretrained", False):
        raise ValueError(
            f"{label}: pretrained weights are refused: nothing can be downloaded on these machines, and "
            "loading local weights is not supported either; train from scratch (leave pretrained out)"
        )
    for key in (*_WEIGHT_ARGS, *_HEAD_ARGS):
        if key in args:
            why = (
                "loading weights is not supported"
                if key in _WEIGHT_ARGS
                else "the harness's task head replaces timm's"
            )
            raise ValueError(f"{label}: kwargs.{key} is not allowed ({why})")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = (
            ("did you mean " + " or ".join(repr(c) for c in close) + "?")
            if close
            else "no close name"
        )
        raise ValueError(
            f"unknown timm model {name!r} (timm {timm.__version__}): {hint} "
            "(timm.list_models('*pattern*') lists the names)"
        )
    if args.setdefault("in_chans", channels) != channels:
        raise ValueError(
            f"{label}: kwargs.in_chans is {args['in_chans']} but the inputs have {channels} channels"
        )
    small = max(height, width) <= SMALL_INPUT_SIDE if small_input == "auto" else small_input
    vit = is_model_in_modules(name, ["vision_transformer"])
    if vit:
        args.setdefault("img_size", (height, width))
        args.setdefault("global_pool", "avg")
        args.setdefault("fc_norm", False)
        if small:
            args.setdefault("patch_size", 4)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **args)
    except TypeError as exc:
        raise ValueError(f"{label} does not take these kwargs: {exc}") from exc
    if vit:
        check_patches(label, model.patch_embed.patch_size, (channels, height, width))
    if small and isinstance(model, ResNet):
        cifar_stem(model, label)
    return model


def check_patches(name: str, patch_size: int | tuple[int, int], shape: ImageShape) -> None:
    """Refuse an image that patches do not tile: timm would only fail at the first batch."""
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if shape[1] % ph or shape[2] % pw:
        raise ValueError(
            f"{name} cannot take inputs of shape {shape}: {shape[1]}×{shape[2]} is not a whole number of "
            f"{ph}×{pw} patches"
        )


def build_timm(params: TimmParams, context: BuildContext) -> TimmBackbone:
    """The `timm` family: `timm:<model>` in a spec arrives here with `context.variant` = <model>."""
    variant, input_shape = context.variant, context.input_shape
    if not variant:
        raise ValueError("name a timm model after the family, as in timm:resnet18")
    model = create_timm_model(variant, params.kwargs, input_shape, params.small_input)
    return TimmBackbone(model, f"timm:{variant}", input_shape)


def _cifar_resnet(
    arch: str, name: str, params: CifarResNetParams, input_shape: tuple[int, ...]
) -> TimmBackbone:
    image_shape(name, input_shape)
    stage_widths = tuple(params.width * 2**i for i in range(4))
    # the CIFAR reference models start every batch norm at weight 1; timm's default zero-starts the
    # last one of each block, which leaves the convolution before it untrained at the first step
    # and its SAL zero at initialisation
    kwargs = {"channels": stage_widths, "zero_init_last": False}
    model = create_timm_model(arch, kwargs, input_shape, small_input=True)
    if params.width != model.conv1.out_channels:
        set_stem_width(model, params.width)
    return TimmBackbone(model, name, input_shape)


def cifar_resnet50(params: CifarResNetParams, context: BuildContext) -> TimmBackbone:
    """timm's resnet50 (bottleneck blocks 3-4-6-3) in its CIFAR form, batch norms starting at 1."""
    return _cifar_resnet("resnet50", "resnet50", params, context.input_shape)


def cifar_senet18(params: CifarResNetParams, context: BuildContext) -> TimmBackbone:
    """timm's seresnet18 (basic blocks 2-2-2-2, each with a squeeze-and-excitation module whose two
    1×1 convolutions are scored) in its CIFAR form. Its blocks are post-activation, as in timm;
    some CIFAR code bases write SENet-18 with pre-activation blocks, which have the same layers."""
    return _cifar_resnet("seresnet18", "senet18", params, context.input_shape)


def small_vit(params: VitParams, context: BuildContext) -> TimmBackbone:
    """timm's VisionTransformer sized for 32×32 images; no class token, pooled by patch-token mean.

    The mean of the patch tokens (as timm's `*_gap` ViTs do) rather than a class token makes the
    pooled features the mean of the feature map that dense heads read.
    """
    from timm.models.vision_transformer import VisionTransformer

    input_shape = context.input_shape
    channels, height, width = shape = image_shape("vit", input_shape)
    check_patches("vit", params.patch_size, shape)
    model = VisionTransformer(
        img_size=(height, width),
        patch_size=params.patch_size,
        in_chans=channels,
        num_classes=0,
        global_pool="avg",
        class_token=False,
        fc_norm=False,
        embed_dim=params.embed_dim,
        depth=params.depth,
        num_heads=params.num_heads,
        mlp_ratio=params.mlp_ratio,
    )
    return TimmBackbone(model, "vit", input_shape)


@hookimpl
def harness_register_backbones() -> list[BackboneRecord]:
    return [
        BackboneRecord(
            name="timm",
            factory=build_timm,
            params=TimmParams,
            family=True,
            description="any timm model as timm:<model> (headless, no pretrained weights); CIFAR-form "
            "ResNet stems and patch-4 ViTs for inputs up to 64×64",
        ),
        BackboneRecord(
            name="resnet50",
            factory=cifar_resnet50,
            params=CifarResNetParams,
            description="ResNet-50, CIFAR form (3×3 stride-1 stem, no max-pool), from timm; "
            "54 scored layers with its head",
        ),
        BackboneRecord(
            name="senet18",
            factory=cifar_senet18,
            params=CifarResNetParams,
            description="SENet-18 (SE-ResNet-18), CIFAR form, from timm; 37 scored layers with its head",
        ),
        BackboneRecord(
            name="vit",
            factory=small_vit,
            params=VitParams,
            description="ViT for 32×32 (patch 4, width 512, depth 6, 8 heads), patch-token mean pooling, "
            "from timm; 26 scored layers with its head (patch embedding, 4 per block, head)",
        ),
    ]
