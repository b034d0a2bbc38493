"""What a backbone is, and the models the runner trains: a backbone with one or several heads.

A backbone gives a feature map (`forward_features`, [B, C, h, w]) and pooled features
(`forward`, [B, C]); classification-like heads sit on the pooled features, dense heads
(segmentation, depth, key points) on the map. Backbones that have no spatial map (a flattening
"backbone", LeNet's fully connected tail) say so with `has_feature_map = False`, and a dense
head on them is refused before training starts.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

FeatureKind = Literal["pooled", "map"]


class Backbone(nn.Module):
    """A feature extractor with `num_features` channels (the pooled size and the map's depth)."""

    num_features: int
    has_feature_map: bool = True

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map [B, num_features, h, w] that dense heads read."""
        raise NotImplementedError(
            f"backbone {type(self).__name__} gives no feature map, so dense task heads cannot sit on it"
        )

    def pool(self, features: Tensor) -> Tensor:
        """Pooled features from the map (global average); backbones with other pooling override it."""
        return features.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_features(x))


class TaskModel(nn.Module):
    """Backbone plus one head. SAL scores the weights of every Conv2d and Linear in both."""

    def __init__(
        self, backbone: Backbone, head: nn.Module, features: FeatureKind = "pooled"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.features = features

    def forward(self, x: Tensor) -> Tensor:
        if self.features == "map":
            return self.head(self.backbone.forward_features(x))
        return self.head(self.backbone(x))


class MultiTaskModel(nn.Module):
    """One shared backbone, one head per task; the output is a dict of the heads' outputs.

    The feature map is computed once per batch and pooled for the heads that want pooled features,
    so every task's gradient flows into the same backbone weights (what per-task SAL compares).
    """

    def __init__(
        self, backbone: Backbone, heads: dict[str, nn.Module], features: dict[str, FeatureKind]
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.features = dict(features)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if all(kind == "pooled" for kind in self.features.values()):
            pooled = self.backbone(x)
            return {name: head(pooled) for name, head in self.heads.items()}
        fmap = self.backbone.forward_features(x)
        pooled = self.backbone.pool(fmap) if "pooled" in self.features.values() else None
        return {
            name: head(fmap if self.features[name] == "map" else pooled)
            for name, head in self.heads.items()
        }


def scored_layers(model: nn.Module) -> list[str]:
    """Names of the `.weight` parameters SAL scores, in module order (the reference's choice)."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and getattr(module, "weight", None) is not None
    ]


def backbone_layers(layers: list[str]) -> list[str]:
    """The scored layers of the shared backbone (what per-task SAL vectors are compared over)."""
    return [name for name in layers if name.startswith("backbone.")]
