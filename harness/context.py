"""What a component's factory receives beside its parameters: one type for every kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.data import StoragePolicy, Subset

if TYPE_CHECKING:
    from harness.spec import SALSpec

__all__ = ["BuildContext"]


@dataclass(frozen=True)
class BuildContext:
    """What a factory receives beside its parameters; one type for every kind of component.

    Each field is set only for the kinds that need it, and None otherwise.
    """

    #: family records (`timm` answering `timm:resnet18`): the part after the colon
    variant: str | None = None
    #: backbones: the shape of one input sample, e.g. (3, 32, 32)
    input_shape: tuple[int, ...] | None = None
    #: data sets: the stratified subset the spec asks for. A factory that can decode only those
    #: samples may honour it; the harness takes the same subset of whatever comes back anyway
    subset: Subset | None = None
    #: data sets: where splits may be kept (in memory up to a budget, else streamed from disk);
    #: set from the run's execution settings, never part of a result's identity
    storage: StoragePolicy | None = None
    #: SAL estimators: the spec's SAL section (epsilon, iterations, inner_lr, the probe)
    sal: SALSpec | None = None
