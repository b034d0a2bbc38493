"""Typed records that plugins return from their hooks, and what a factory receives.

A record is the unit the registry stores: a name a spec can use, the factory that builds the
component from its validated parameters, the pydantic model of those parameters (with defaults),
a one-line description, and for methods the paper it follows. Keeping these as frozen dataclasses
(rather than bare callables, as many registries do) lets `harness plugins`, `harness schema` and
the spec validator all read the same facts without instantiating anything.

Every factory, of every kind, is called the same way: `factory(params, context)`, with the
validated parameters and a `BuildContext`. What it returns is checked against the kind's base
class (`builds`), so a plugin that returns the wrong thing is named at once rather than failing
deep inside a training loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from harness.backbone import Backbone
from harness.context import BuildContext
from harness.data import DataBundle
from harness.defence import Defence
from harness.names import COMPONENT_NAME_RE
from harness.poison import Poison
from harness.sal_estimators import SALEstimator
from harness.task import TaskHead
from harness.tracking import Tracker


class Params(BaseModel):
    """Base of every component's parameters: unknown keys are errors, not silently ignored.

    Put every check of a parameter here (pydantic `Field` bounds, validators), not in the
    component's constructor: `harness validate` then reports it with the spec's file and line
    before anything runs.
    """

    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    """Parameters model for components that take none."""


@dataclass(frozen=True)
class ComponentRecord:
    name: str
    factory: Callable[[Any, BuildContext], Any]
    params: type[BaseModel] = NoParams
    description: str = ""
    #: a family answers to every `<name>:<variant>` (as `timm` answers `timm:resnet18`); its
    #: factory finds the variant in `context.variant`
    family: bool = False
    kind: ClassVar[str] = "component"
    #: the base class every object the factory builds must be an instance of
    builds: ClassVar[type] = object

    def problems(self) -> list[str]:
        """What makes this record unusable; empty when it is fine."""
        found = []
        if not isinstance(self.name, str) or not COMPONENT_NAME_RE.match(self.name):
            found.append(
                f"name {self.name!r} must be lower-case letters, digits and . _ : - "
                "(it becomes part of file names)"
            )
        if not callable(self.factory):
            found.append(f"factory of {self.name!r} is not callable")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            found.append(f"params of {self.name!r} is not a pydantic BaseModel subclass")
        if not isinstance(self.description, str):
            found.append(f"description of {self.name!r} is not a string")
        return found


@dataclass(frozen=True)
class DatasetRecord(ComponentRecord):
    """factory(params, context) -> DataBundle (train and test split, classes, value range)."""

    kind: ClassVar[str] = "dataset"
    builds: ClassVar[type] = DataBundle


@dataclass(frozen=True)
class BackboneRecord(ComponentRecord):
    """factory(params, context) -> Backbone, for inputs of shape `context.input_shape`."""

    kind: ClassVar[str] = "backbone"
    builds: ClassVar[type] = Backbone


@dataclass(frozen=True)
class TaskHeadRecord(ComponentRecord):
    """factory(params, context) -> TaskHead (builds the head module, owns loss and metric)."""

    kind: ClassVar[str] = "task"
    builds: ClassVar[type] = TaskHead


@dataclass(frozen=True)
class PoisonBudget:
    """The perturbation bound a poison promises, checked on what it returns.

    Per sample, `‖poisoned − clean‖ ≤ bound` in the `norm` (`linf`: the largest change of any
    value; `l2`: the Euclidean norm of the sample's change). `bound` is a number, or the name of
    the parameter that holds it (`"epsilon"`; a dotted name reaches into nested parameters,
    `"attack.epsilon"`). A poison whose output exceeds it stops the run with an error naming it.
    """

    norm: Literal["linf", "l2"]
    bound: float | str

    def limit(self, params: Any) -> float:
        """The bound for these (validated) parameters."""
        if not isinstance(self.bound, str):
            return float(self.bound)
        value: Any = params
        for part in self.bound.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        return float(value)


@dataclass(frozen=True)
class PoisonRecord(ComponentRecord):
    """factory(params, context) -> Poison.

    `task_aware`: the generator minimises whatever task loss the context hands it (with that
    task's targets), so a spec may name the task to craft against (`crafting_task`).
    `budget`: the perturbation bound the method promises (`PoisonBudget`), checked on every
    poison it generates; None when it declares none (its output is still checked to be finite
    and inside the data's value range).
    """

    paper: str = ""
    deviations: tuple[str, ...] = field(default_factory=tuple)
    task_aware: bool = False
    budget: PoisonBudget | None = None
    kind: ClassVar[str] = "poison"
    builds: ClassVar[type] = Poison


@dataclass(frozen=True)
class DefenceRecord(ComponentRecord):
    """factory(params, context) -> Defence."""

    paper: str = ""
    deviations: tuple[str, ...] = field(default_factory=tuple)
    kind: ClassVar[str] = "defence"
    builds: ClassVar[type] = Defence


@dataclass(frozen=True)
class TrackerRecord(ComponentRecord):
    """factory(params, context) -> Tracker (an experiment tracker observing runs)."""

    kind: ClassVar[str] = "tracker"
    builds: ClassVar[type] = Tracker


@dataclass(frozen=True)
class SALEstimatorRecord(ComponentRecord):
    """factory(params, context) -> SALEstimator; `context.sal` holds the spec's SAL section.

    The record states how the estimator is derived and where it is known to be biased: an
    estimator is part of a result's identity (entries from different estimators are never ranked
    together), and a reader must be able to tell what its values mean.
    """

    derivation: str = ""
    biases: str = ""
    kind: ClassVar[str] = "sal_estimator"
    builds: ClassVar[type] = SALEstimator


RECORD_TYPES: dict[str, type[ComponentRecord]] = {
    cls.kind: cls
    for cls in (
        DatasetRecord,
        BackboneRecord,
        TaskHeadRecord,
        PoisonRecord,
        DefenceRecord,
        TrackerRecord,
        SALEstimatorRecord,
    )
}
