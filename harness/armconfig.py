"""The typed record of one arm's configuration, as stored with its results in `run.h5`.

Entries, reports and submission checks read an arm's poison, defence, task(s) and track from
this record rather than from string keys of a dict. It is serialised as sorted JSON with only
the fields that were set, so that a single-task arm has no `tasks` and a track has either
`task` or `tasks`; a record read back from a file keeps exactly the keys the file held.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness.pluginmanager import Components
from harness.spec import ArmComponentRef, ComponentRef, Spec, TaskRef


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentInfo(Record):
    """A component as used: its name, resolved parameters and the plugin it came from."""

    name: str
    label: str | None = None
    params: dict[str, Any]
    plugin: str
    distribution: str
    version: str


class DatasetInfo(ComponentInfo):
    subset: dict[str, Any]


class TaskInfo(ComponentInfo):
    """One task of a multi-task model: its label and loss weight (part of the track)."""

    weight: float


class TrainedTaskInfo(TaskInfo):
    """A task of a multi-task arm with the facts about its metric that entries report."""

    metric_name: str
    higher_is_better: bool


class MetricInfo(Record):
    metric_name: str
    higher_is_better: bool


class TrackConfig(Record):
    """What makes two arms' results comparable (see `harness.entries.Track`)."""

    dataset: DatasetInfo
    task: ComponentInfo | None = None
    tasks: list[TaskInfo] | None = None
    backbone: ComponentInfo
    training: dict[str, Any]
    sal: dict[str, Any]


class ArmConfig(Record):
    arm_id: str
    seed: int
    poison_key: str
    defence_key: str
    poison: ComponentInfo | None = Field(description="None for the clean arms")
    defence: ComponentInfo
    task: MetricInfo
    evaluated_task: str | None = None
    crafting_task: str | None = None
    track: TrackConfig
    tasks: list[TrainedTaskInfo] | None = None

    @property
    def evaluated(self) -> str:
        """The task the arm's entry scores (runs written before the field existed: the track's)."""
        if self.evaluated_task is not None:
            return self.evaluated_task
        assert self.track.task is not None
        return self.track.task.name

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def component_info(components: Components, kind: str, ref: ComponentRef) -> dict[str, Any]:
    """The provenance block of a component reference (labels only for arm components)."""
    registered = components.get(kind, ref.name)
    info = {"name": ref.name, "params": ref.params, **registered.provenance()}
    if isinstance(ref, ArmComponentRef):
        info["label"] = ref.key
    return info


def dataset_info(components: Components, spec: Spec) -> dict[str, Any]:
    return component_info(components, "dataset", spec.data) | {
        "subset": spec.data.subset.model_dump(mode="json")
    }


def track_config(components: Components, spec: Spec) -> TrackConfig:
    track: dict[str, Any] = {
        "dataset": dataset_info(components, spec),
        "backbone": component_info(components, "backbone", spec.backbone),
        "training": spec.training.model_dump(mode="json"),
        "sal": spec.sal.model_dump(mode="json"),
    }
    if spec.tasks:
        track["tasks"] = [_task_info(components, ref) for ref in spec.tasks]
    else:
        track["task"] = component_info(components, "task", spec.task)
    return TrackConfig.model_validate(track)


def _task_info(components: Components, ref: TaskRef) -> dict[str, Any]:
    return component_info(components, "task", ref) | {"label": ref.key, "weight": ref.weight}
