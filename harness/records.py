"""Typed records that plugins return from their hooks.

A record is the unit the registry stores: a name a spec can use, the factory that builds the
component from its validated parameters, the pydantic model of those parameters (with defaults),
a one-line description, and for methods the paper it follows. Keeping these as frozen dataclasses
(rather than bare callables, as many registries do) lets `harness plugins`, `harness schema` and
the spec validator all read the same facts without instantiating anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._:-]*$")


class NoParams(BaseModel):
    """Parameters model for components that take none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class ComponentRecord:
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel] = NoParams
    description: str = ""
    #: a family answers to every `<name>:<variant>` (as `timm` answers `timm:resnet18`); its
    #: factory then also receives `variant=...`
    family: bool = False
    kind: ClassVar[str] = "component"

    def problems(self) -> list[str]:
        """What makes this record unusable; empty when it is fine."""
        found = []
        if not isinstance(self.name, str) or not NAME_PATTERN.match(self.name):
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
    """factory(params) -> harness.data.DataBundle (train and test split, classes, value range)."""

    kind: ClassVar[str] = "dataset"


@dataclass(frozen=True)
class BackboneRecord(ComponentRecord):
    """factory(params, input_shape) -> harness.backbone.Backbone (an nn.Module with num_features)."""

    kind: ClassVar[str] = "backbone"


@dataclass(frozen=True)
class TaskHeadRecord(ComponentRecord):
    """factory(params) -> harness.task.TaskHead (builds the head, owns loss and metric)."""

    kind: ClassVar[str] = "task"


@dataclass(frozen=True)
class PoisonRecord(ComponentRecord):
    """factory(params) -> harness.poison.Poison.

    `task_aware`: the generator minimises whatever task loss the context hands it (with that
    task's targets), so a spec may name the task to craft against (`crafting_task`).
    """

    paper: str = ""
    deviations: tuple[str, ...] = field(default_factory=tuple)
    task_aware: bool = False
    kind: ClassVar[str] = "poison"


@dataclass(frozen=True)
class DefenceRecord(ComponentRecord):
    """factory(params) -> harness.defence.Defence."""

    paper: str = ""
    deviations: tuple[str, ...] = field(default_factory=tuple)
    kind: ClassVar[str] = "defence"


RECORD_TYPES: dict[str, type[ComponentRecord]] = {
    cls.kind: cls
    for cls in (DatasetRecord, BackboneRecord, TaskHeadRecord, PoisonRecord, DefenceRecord)
}
