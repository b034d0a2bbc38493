"""What a backbone is, and the model the runner trains: a backbone with a task head on top."""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """A feature extractor: `forward(x)` returns pooled features of size `num_features`."""

    num_features: int


class TaskModel(nn.Module):
    """Backbone plus head. SAL scores the weights of every Conv2d and Linear in both."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def scored_layers(model: nn.Module) -> list[str]:
    """Names of the `.weight` parameters SAL scores, in module order (the reference's choice)."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and getattr(module, "weight", None) is not None
    ]
