"""Pre-flight: every check that can fail a run, done before any training starts or file is written.

`harness validate` and `harness eval` run the same checks, so a spec that validates does not
fail later, after hours of training earlier arms. Each component is built once (data set, task
heads, model, every poison and defence, so checks inside their constructors run too), and every
problem found is reported at once, each with the spec's file, line and field.

With a run folder (`eval`), it is checked too, still without writing: that it can hold this
spec's run, is not in use by another process, holds no link, and that every arm to be resumed
has a readable checkpoint and still has the plugins (and data) it started with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.assembly import Assembly, build_tasks, load_data, task_refs
from harness.data import DataBundle
from harness.errors import DataError, HarnessError, PluginError, RunStateError, SpecError
from harness.plan import plan_arms
from harness.pluginmanager import Components
from harness.runfolder import RunFolder, holds_spec
from harness.specfile import LoadedSpec
from harness.taskset import TaskSet


class Problems:
    """Problems found so far, in the order found; raised together as one error."""

    def __init__(self) -> None:
        self.found: list[tuple[str, type[HarnessError]]] = []

    def add(self, message: str, kind: type[HarnessError] = SpecError) -> None:
        self.found.append((message, kind))

    def attempt(
        self, build: Callable[[], Any], describe: Callable[[Exception], str] | None = None
    ) -> Any:
        """`build()`, or None with its error recorded (as `describe(error)` when given)."""
        try:
            return build()
        except (HarnessError, ValueError) as exc:
            kind = type(exc) if isinstance(exc, (DataError, RunStateError)) else SpecError
            self.add(describe(exc) if describe is not None else str(exc), kind)
            return None

    def raise_if_any(self) -> None:
        """One error holding every problem: of their own kind when all share it, else a SpecError."""
        if not self.found:
            return
        kinds = {kind for _, kind in self.found}
        kind = kinds.pop() if len(kinds) == 1 else SpecError
        raise kind("\n".join(message for message, _ in self.found))


def preflight(
    loaded: LoadedSpec,
    components: Components,
    *,
    folder: RunFolder | None = None,
    fresh: bool = False,
    log_to: Sequence[str] = (),
) -> Assembly:
    """Check everything and return the assembly the run will use; raise listing every problem.

    With a run folder, also check that it can hold this spec's run (new, or this spec's run to
    resume, or another spec's with `fresh`).
    """
    spec, where = loaded.spec, loaded.source.where
    problems = Problems()
    data: DataBundle | None = problems.attempt(lambda: load_data(spec, components, where))
    if data is not None and spec.training.augmentation and not data.is_image:
        problems.add(
            f"{where(('training', 'augmentation'))}: training.augmentation: data set "
            f"{spec.data.name!r} has inputs of shape {data.input_shape}, not images"
        )
    tasks: TaskSet | None = problems.attempt(lambda: build_tasks(spec, components, where))
    if tasks is not None and data is not None:
        for loc, label, _ in task_refs(spec):
            problems.attempt(
                lambda label=label: tasks.heads[label].check_data(data),
                lambda exc, loc=loc: f"{where(loc)}: {exc}",
            )
    if tasks is not None and tasks.dense and spec.training.augmentation:
        problems.add(
            f"{where(('training', 'augmentation'))}: training.augmentation: crop and flip move the "
            "pixels but not the dense targets (masks, depth, key points); set `augmentation: []` "
            "for dense tasks"
        )
    _check_defences(loaded, components, tasks, problems)
    _check_poisons(loaded, components, problems)
    _check_trackers(loaded, components, log_to, problems)
    device_problem = device_unavailable(spec.training.device)
    if device_problem:
        problems.add(f"{where(('training', 'device'))}: training.device: {device_problem}")
    device_ok = device_problem is None
    assembly = None
    if data is not None and tasks is not None and device_ok:
        assembly = problems.attempt(lambda: Assembly(spec, loaded.source, components, data, tasks))
    if assembly is not None:
        _check_model(assembly, problems)
        _check_crafting_tasks(assembly, problems)
        problems.attempt(assembly.sal_estimator)  # built once, so a broken estimator is named
    if folder is not None:
        target_ok = problems.attempt(lambda: folder.check_target(loaded.hash, fresh) or True)
        if target_ok and assembly is not None:
            _check_resumable_arms(assembly, folder, loaded.hash, problems)
    problems.raise_if_any()
    assert assembly is not None
    return assembly


def _check_defences(
    loaded: LoadedSpec, components: Components, tasks: TaskSet | None, problems: Problems
) -> None:
    where = loaded.source.where
    for i, ref in enumerate(loaded.spec.defences):
        loc = ("defences", i, "name")
        defence = _build(components, "defence", ref, where(loc), f"defences.{i}", problems)
        if defence is not None and tasks is not None and tasks.non_class and defence.mixes_labels:
            problems.add(
                f"{where(loc)}: defence {ref.name!r} mixes images and class labels across a batch, "
                "which has no meaning for the dense or multi-task targets of this spec"
            )


def _check_poisons(loaded: LoadedSpec, components: Components, problems: Problems) -> None:
    where = loaded.source.where
    for i, ref in enumerate(loaded.spec.poisons):
        _build(components, "poison", ref, where(("poisons", i, "name")), f"poisons.{i}", problems)
        if (
            ref.crafting_task is not None
            and not components.get("poison", ref.name).record.task_aware
        ):
            problems.add(
                f"{where(('poisons', i, 'crafting_task'))}: poisons.{i}.crafting_task: poison "
                f"{ref.name!r} does not declare `task_aware`, so it cannot be crafted against another "
                "task's loss"
            )


def _build(
    components: Components, kind: str, ref: Any, where: str, field: str, problems: Problems
) -> Any:
    """The component, built as an arm will build it (so its constructor's checks run), or None."""
    try:
        return components.build(kind, ref.name, ref.params)
    except (HarnessError, ValueError) as exc:
        problems.add(f"{where}: {field}: {exc}")
        return None


def _check_trackers(
    loaded: LoadedSpec, components: Components, log_to: Sequence[str], problems: Problems
) -> None:
    """Each tracker built once, so a missing optional dependency is named before training."""
    where = loaded.source.where
    for i, ref in enumerate(loaded.spec.trackers):
        _build(
            components, "tracker", ref, where(("trackers", i, "name")), f"trackers.{i}", problems
        )
    for name in log_to:
        try:
            components.build("tracker", name, {})
        except (HarnessError, ValueError) as exc:
            problems.add(f"--log-to {name}: {exc}")


def _check_crafting_tasks(assembly: Assembly, problems: Problems) -> None:
    for i, ref in enumerate(assembly.spec.poisons):
        if (
            ref.crafting_task is None
            or not assembly.components.get("poison", ref.name).record.task_aware
        ):
            continue
        where = assembly.where(("poisons", i, "crafting_task"))
        try:
            assembly.crafting_tasks(ref)
        except (ValueError, PluginError) as exc:
            problems.add(f"{where}: poisons.{i}.crafting_task: {exc}")


def _check_model(assembly: Assembly, problems: Problems) -> None:
    spec = assembly.spec
    if not assembly.layers:
        problems.add(
            f"{assembly.where(('backbone',))}: the model has no Conv2d or Linear layer for SAL to score"
        )
    landscape = spec.landscape
    n = assembly.trainable_parameters
    if landscape.enabled and n > landscape.max_params:
        problems.add(
            f"{assembly.where(('landscape', 'max_params'))}: landscape.max_params: the model has "
            f"{n:,} trainable parameters, over the limit of {landscape.max_params:,} (each snapshot of the "
            f"trajectory takes {4 * n / 1e6:.1f} MB); raise `max_params`, trace a smaller model, or "
            "set `landscape.enabled: false`"
        )


def device_unavailable(name: str) -> str | None:
    """Why the spec's `training.device` cannot be used on this machine, or None when it can."""
    if name in ("auto", "cpu"):
        return None
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        return None if mps is not None and mps.is_available() else "no MPS device on this machine"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return (
            f"{name!r} asks for a CUDA device, and this machine has none; use `auto` (CUDA "
            "when there is one) or `cpu`"
        )
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        return (
            f"{name!r} does not exist: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return None


def _check_resumable_arms(
    assembly: Assembly, folder: RunFolder, spec_hash: str, problems: Problems
) -> None:
    """Every checkpoint a resume would read: readable, and its arm's plugins unchanged."""
    stored, _ = folder.resolved_spec()
    if stored is None or not folder.checkpoints_dir.is_dir():
        return  # a new run, or one set aside with --fresh
    if not holds_spec(stored, spec_hash):
        return
    for arm in plan_arms(assembly.spec):
        try:
            state = folder.load_arm_state(arm.id, mmap=True)
            folder.check_resumable(arm.id, assembly.arm_config(arm), state)
        except RunStateError as exc:
            problems.add(str(exc), RunStateError)
