"""The typed record of one arm's configuration, as stored with its results in `run.h5`.

Entries, reports and submission checks read an arm's poison, defence, task(s) and track from
this record rather than from string keys of a dict. It is serialised as sorted JSON with only
the fields that were set, so that a single-task arm has no `tasks` and a track has either
`task` or `tasks`; a record read back from a file keeps exactly the keys the file held.

The track is what a result depends on, and nothing it does not:

- the data set by name, its parameters and subset, and a **fingerprint of its content** (the
  training and test inputs, labels and targets as trained on, `data_fingerprint`), but not its
  parameters that name files or folders (`root`, `path`, `*_dir`, ...: machine-local, and the
  fingerprint stands for what they point at);
- the task(s), the backbone, the training recipe without `training.device` (where a run
  trains does not change what it is; the hardware is recorded as provenance instead), and
  the SAL settings.

Poisons and defences record a digest of their code (`harness.sysinfo.code_digest`) beside
their version, so an arm resumed on a changed plugin is refused (`plugin_changes`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer
from torch import Tensor

from harness.data import DataBundle
from harness.pluginmanager import Components
from harness.spec import ArmComponentRef, ComponentRef, Spec, TaskRef
from harness.sysinfo import code_digest

#: component parameters with these names (or suffixes) name files or folders on one machine
PATH_PARAM_NAMES = ("root", "path", "dir", "folder", "file")
PATH_PARAM_SUFFIXES = ("_root", "_path", "_dir", "_folder", "_file")
#: the kinds whose code is digested into their provenance (what an arm trains on)
CODE_KINDS = ("poison", "defence")


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
    code: str | None = Field(
        default=None,
        description="poisons and defences: SHA-256 of the plugin's code (harness.sysinfo.code_digest)",
    )

    @model_serializer(mode="wrap")
    def _without_absent_code(self, handler: Any) -> dict[str, Any]:
        """Records made before code digests existed serialise exactly as they did."""
        out = handler(self)
        if out.get("code", "") is None:
            del out["code"]
        return out


class DatasetInfo(ComponentInfo):
    subset: dict[str, Any]
    fingerprint: str | None = Field(
        default=None, description="digest of the data as trained and tested on (data_fingerprint)"
    )


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
    if kind in CODE_KINDS:
        info["code"] = code_digest(registered.record.factory)
    return info


def is_path_param(name: str) -> bool:
    return name in PATH_PARAM_NAMES or name.endswith(PATH_PARAM_SUFFIXES)


def dataset_info(
    components: Components, spec: Spec, fingerprint: str | None = None
) -> dict[str, Any]:
    """The data set as part of an identity: no path parameters; the content fingerprint if known."""
    info = component_info(components, "dataset", spec.data)
    info["params"] = {k: v for k, v in info["params"].items() if not is_path_param(k)}
    info["subset"] = spec.data.subset.model_dump(mode="json")
    if fingerprint is not None:
        info["fingerprint"] = fingerprint
    return info


def data_fingerprint(data: DataBundle) -> str:
    """A digest of the data as the arms see it: both splits' inputs, labels and targets."""
    digest = hashlib.sha256()
    for split_name, split in (("train", data.train), ("test", data.test)):
        tensors = {
            "x": split.x,
            "y": split.y,
            **{f"targets.{k}": v for k, v in split.targets.items()},
        }
        for name, t in sorted(tensors.items()):
            digest.update(f"{split_name}.{name}:{tuple(t.shape)}:{t.dtype}\0".encode())
            digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().tobytes()


def recipe(spec: Spec) -> dict[str, Any]:
    """The training recipe as part of an identity: everything but where it runs."""
    training = spec.training.model_dump(mode="json")
    training.pop("device", None)
    return training


def track_config(components: Components, spec: Spec, fingerprint: str | None = None) -> TrackConfig:
    track: dict[str, Any] = {
        "dataset": dataset_info(components, spec, fingerprint),
        "backbone": component_info(components, "backbone", spec.backbone),
        "training": recipe(spec),
        "sal": spec.sal.model_dump(mode="json"),
    }
    if spec.tasks:
        track["tasks"] = [_task_info(components, ref) for ref in spec.tasks]
    else:
        track["task"] = component_info(components, "task", spec.task)
    return TrackConfig.model_validate(track)


def _task_info(components: Components, ref: TaskRef) -> dict[str, Any]:
    return component_info(components, "task", ref) | {"label": ref.key, "weight": ref.weight}


def plugin_changes(started: ArmConfig, now: ArmConfig) -> list[str]:
    """What differs in the plugins (distribution, version, code) or data between two configs.

    Only what `started` recorded is compared, so configs written before a field existed
    (code digests, the data fingerprint) are compared on what they hold.
    """

    def parts(config: ArmConfig) -> dict[str, ComponentInfo | None]:
        track = config.track
        out: dict[str, ComponentInfo | None] = {
            "poison": config.poison,
            "defence": config.defence,
            "data set": track.dataset,
            "backbone": track.backbone,
        }
        if track.task is not None:
            out["task"] = track.task
        for task in track.tasks or []:
            out[f"task {task.label or task.name}"] = task
        return out

    before, after = parts(started), parts(now)
    changes = []
    for what, old in before.items():
        new = after.get(what)
        if old is None or new is None:
            continue
        for key in ("distribution", "version", "code", "fingerprint"):
            was, is_ = getattr(old, key, None), getattr(new, key, None)
            if was is not None and was != is_:
                shown = (lambda v: str(v)[:12]) if key in ("code", "fingerprint") else str
                changes.append(f"{what} {old.name!r}: {key} {shown(was)} → {shown(is_)}")
    return changes
