"""The hooks a harness plugin implements: one per kind of component.

Each hook returns a list of typed records (see `harness.records`). Plugins are found through the
`harness` entry-point group, exactly as pytest and llm find theirs.
"""

from __future__ import annotations

import pluggy

from harness.records import (
    BackboneRecord,
    DatasetRecord,
    DefenceRecord,
    PoisonRecord,
    TaskHeadRecord,
)

PROJECT = "harness"
ENTRY_POINT_GROUP = "harness"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def harness_register_datasets() -> list[DatasetRecord]:
    """Data sets a spec can name under `data.name`."""


@hookspec
def harness_register_backbones() -> list[BackboneRecord]:
    """Model constructors a spec can name under `backbone.name`."""


@hookspec
def harness_register_task_heads() -> list[TaskHeadRecord]:
    """Task heads (loss and metric owners) a spec can name under `task.name`."""


@hookspec
def harness_register_poisons() -> list[PoisonRecord]:
    """Unlearnable-example generators a spec can name under `poisons`."""


@hookspec
def harness_register_defences() -> list[DefenceRecord]:
    """Defences a spec can name under `defences`."""


HOOK_FOR_KIND = {
    "dataset": "harness_register_datasets",
    "backbone": "harness_register_backbones",
    "task": "harness_register_task_heads",
    "poison": "harness_register_poisons",
    "defence": "harness_register_defences",
}
