"""Assembly: a spec's components built and put together, ready for arms to train on.

From a validated spec (or the resolved spec stored in a finished run) this builds the data set
with its subset, the task set, the model factory (backbone plus task heads, also for surrogates
and other crafting tasks), the scored layers, and each arm's typed configuration. It holds no
state of any arm, so one assembly serves every arm of a run, in one process or many.

Errors name the spec's file, line and field; `harness.preflight` runs every check before
anything is written, and this module's builders are what it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import torch
from torch import nn

from harness.armconfig import (
    ArmConfig,
    MetricInfo,
    TrainedTaskInfo,
    component_info,
    data_fingerprint,
    track_config,
)
from harness.backbone import backbone_layers, scored_layers
from harness.context import BuildContext
from harness.data import DataBundle, Subset, storage_policy, subset
from harness.errors import DataError, PluginError, SpecError
from harness.plan import Arm
from harness.pluginmanager import Components
from harness.runfolder import RunFolder
from harness.sal_estimators import SALEstimator
from harness.spec import ComponentRef, PoisonRef, Spec
from harness.specfile import LoadedSpec, SpecSource
from harness.taskset import TaskSet
from harness.training import autocast_for, resolve_device

Where = Callable[[tuple[Any, ...]], str]


def load_data(spec: Spec, components: Components, where: Where) -> DataBundle:
    """The data set with the spec's stratified subset of each split."""
    ref = spec.data
    sub = ref.subset
    try:
        data = components.build(
            "dataset",
            ref.name,
            ref.params,
            BuildContext(
                subset=Subset(sub.train, sub.test, sub.seed), storage=storage_policy(spec)
            ),
        )
    except DataError as exc:
        raise DataError(f"{where(('data',))}: data set {ref.name!r}: {exc}") from None
    except PluginError as exc:
        raise SpecError(f"{where(('data', 'name'))}: data: {exc}") from None
    data.train = subset(data.train, sub.train, sub.seed)
    data.test = subset(data.test, sub.test, sub.seed)
    return data


def task_refs(spec: Spec) -> list[tuple[tuple[Any, ...], str, ComponentRef]]:
    """(location, label, reference) of each task the model learns: `tasks`, or `task` alone."""
    if spec.tasks:
        return [(("tasks", i, "name"), ref.key, ref) for i, ref in enumerate(spec.tasks)]
    return [(("task",), spec.task.name, spec.task)]


def build_tasks(spec: Spec, components: Components, where: Where) -> TaskSet:
    heads = {}
    for loc, label, ref in task_refs(spec):
        try:
            heads[label] = components.build("task", ref.name, ref.params)
        except PluginError as exc:
            raise SpecError(f"{where(loc)}: {'.'.join(map(str, loc))}: {exc}") from None
    if not spec.tasks:
        return TaskSet(heads, {label: 1.0 for label in heads}, multi=False)
    return TaskSet(heads, {ref.key: ref.weight for ref in spec.tasks}, multi=True)


class Assembly:
    """The built components of one spec: data, task set, device, scored layers, model factory."""

    def __init__(
        self,
        spec: Spec,
        source: SpecSource,
        components: Components,
        data: DataBundle,
        tasks: TaskSet,
    ) -> None:
        self.spec = spec
        self.source = source
        self.components = components
        self.data = data
        self.tasks = tasks
        self.device = resolve_device(spec.training.device)
        self.autocast = autocast_for(self.device, spec.training.amp)
        #: SAL's autocast: float32 unless the spec asks for SAL under AMP too (`sal.amp`)
        self.sal_autocast = self.autocast if spec.sal.amp else None
        # one model, built under the first seed, tells which layers SAL scores
        torch.manual_seed(spec.seeds[0])
        model = self.build_model()
        self.layers = scored_layers(model)
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        #: multi-task models: the shared backbone's layers, which per-task SAL covers
        self.task_layers = backbone_layers(self.layers) if tasks.per_task_labels else []

    @classmethod
    def from_spec(cls, loaded: LoadedSpec, components: Components) -> Assembly:
        where = loaded.source.where
        data = load_data(loaded.spec, components, where)
        return cls(
            loaded.spec,
            loaded.source,
            components,
            data,
            build_tasks(loaded.spec, components, where),
        )

    @classmethod
    def for_run(cls, folder: RunFolder, components: Components) -> Assembly:
        """The assembly of a finished run, from the resolved spec stored in its run file.

        For analysis after the fact (the loss landscape): the same data, task set and models as
        the run, with nothing written to the run folder.
        """
        resolved = folder.stored_spec()
        return cls.from_spec(
            LoadedSpec(Spec.model_validate(resolved), SpecSource(folder.run_file, resolved)),
            components,
        )

    def where(self, loc: tuple[Any, ...]) -> str:
        return self.source.where(loc)

    def sal_estimator(self) -> SALEstimator:
        """The spec's SAL estimator (`sal.estimator`), built with the spec's SAL section."""
        ref = self.spec.sal.estimator
        return self.components.build(
            "sal_estimator", ref.name, ref.params, BuildContext(sal=self.spec.sal)
        )

    @cached_property
    def data_fingerprint(self) -> str:
        """The data's content as the arms see it: part of the track (never its paths)."""
        return data_fingerprint(self.data)

    # --- models ------------------------------------------------------------------------------------
    def build_model(
        self, backbone: ComponentRef | None = None, tasks: TaskSet | None = None
    ) -> nn.Module:
        """The backbone (default: the spec's) with the head(s) of `tasks` (default: the trained ones)."""
        tasks = tasks or self.tasks
        ref = backbone or self.spec.backbone
        try:
            built = self.components.build(
                "backbone", ref.name, ref.params, BuildContext(input_shape=self.data.input_shape)
            )
        except PluginError as exc:
            raise SpecError(
                f"{self.where(('backbone', 'name'))}: backbone {ref.name!r} "
                f"(inputs of shape {self.data.input_shape}): {exc}"
            ) from None
        dense = [label for label, head in tasks.heads.items() if head.features == "map"]
        if dense and not built.has_feature_map:
            raise SpecError(
                f"{self.where(('backbone', 'name'))}: backbone {ref.name!r} gives no "
                f"feature map, which the dense task(s) {', '.join(dense)} need; use a convolutional "
                "backbone (small-cnn, resnet18, timm:...)"
            )
        return tasks.build_model(built, self.data)

    # --- crafting tasks -----------------------------------------------------------------------------
    def crafting_tasks(self, ref: PoisonRef) -> tuple[TaskSet, str]:
        """The task(s) whose loss a poison minimises, and their label in entries.

        Unset or 'all': the trained task(s). Otherwise a label of `tasks`, the trained task's name,
        or any registered task head, built with its default parameters.
        """
        name = ref.crafting_task
        if name is None or name == "all":
            return self.tasks, self.tasks.label
        if name in self.tasks.heads:
            return (self.tasks if not self.tasks.multi else self.tasks.subset_for(name)), name
        head = self.components.build("task", name, {})
        head.check_data(self.data)
        return TaskSet.single(name, head), name

    def crafting_label(self, arm: Arm) -> str | None:
        """The task a poison was crafted against; None for clean arms and task-agnostic poisons."""
        if (
            arm.poison is None
            or not self.components.get("poison", arm.poison.name).record.task_aware
        ):
            return None
        name = arm.poison.crafting_task  # the label alone: no need to build the head for it
        return self.tasks.label if name in (None, "all") else name

    # --- what an arm records --------------------------------------------------------------------
    def arm_config(self, arm: Arm) -> ArmConfig:
        spec, components = self.spec, self.components
        config: dict[str, Any] = {
            "arm_id": arm.id,
            "seed": arm.seed,
            "poison_key": arm.poison_key,
            "defence_key": arm.defence_key,
            "poison": None
            if arm.poison is None
            else component_info(components, "poison", arm.poison),
            "defence": component_info(components, "defence", arm.defence),
            "task": MetricInfo(
                metric_name=self.tasks.metric_name, higher_is_better=self.tasks.higher_is_better
            ),
            "evaluated_task": self.tasks.label,
            "crafting_task": self.crafting_label(arm),
            "track": track_config(components, spec, self.data_fingerprint),
        }
        if self.tasks.multi:
            config["tasks"] = [
                TrainedTaskInfo.model_validate(
                    component_info(components, "task", ref)
                    | {
                        "label": ref.key,
                        "weight": ref.weight,
                        "metric_name": self.tasks.heads[ref.key].metric_name,
                        "higher_is_better": self.tasks.heads[ref.key].higher_is_better,
                    }
                )
                for ref in spec.tasks
            ]
        return ArmConfig.model_validate(config)
