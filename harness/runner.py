"""Running a spec: every arm trained, probed with SAL after every epoch, streamed, scored.

The pipeline, from spec file to leaderboard:

    spec file ─ specfile.load_spec ─▶ LoadedSpec ─ preflight ─▶ Assembly ─ plan.plan_arms ─▶ arms
    arms ─ run_arm (this module) ─▶ RunFolder (run.h5, checkpoints) ─ entries.compute_entries ─▶
    entries ─ submit ─▶ leaderboard

Order of work, chosen so that a bad spec or a missing data set fails before anything is
written, and a killed run loses at most the epoch it was in:

1. pre-flight: every check, each component built once (`harness.preflight`);
2. create (or reopen and check) the run folder;
3. per seed: the clean arm first, then each poison undefended, then each defence over the clean
   data and every poison. Data and poisons are computed once and shared;
4. score every arm from the HDF5 file and write one entry per arm.

`run_arm` needs only the spec, the arm and a recorder: whatever it is not handed (the assembly,
the poisons) it builds from the spec, so an arm can run in another process. It records through
`ArmRecorder`, four calls in the crash-safe order (`resume_arm`, `begin_arm`, `record_epoch`,
`finish_arm`): `RunFolder` is the recorder of a local run, and a Ray worker hands the same calls
to a forwarder that streams them to the driver, the run folder's one writer
(`harness.executors`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from harness import termination
from harness.armconfig import ArmConfig
from harness.assembly import Assembly
from harness.checkpoint import ArmState
from harness.data import float_to_pixels
from harness.defence import apply_images_once
from harness.entries import Entry, compute_entries, write_entries, write_entries_so_far
from harness.errors import SpecError
from harness.plan import Arm, plan_arms, select_arms
from harness.pluginmanager import Components, get_components
from harness.poison_cache import PoisonCache
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.probe import SALProbe
from harness.progress import Reporter
from harness.reuse import ArmSources
from harness.runfolder import RunFolder
from harness.specfile import LoadedSpec
from harness.store import EpochRow
from harness.sysinfo import hardware
from harness.tracking import TrackingReporter, tracked_reporter
from harness.training import (
    evaluate_all,
    make_optimizer,
    make_scheduler,
    on_device,
    prefer_channels_last,
    train_epoch,
)
from harness.trajectory import ParameterTracer


@runtime_checkable
class ArmRecorder(Protocol):
    """Where an arm's progress goes, in the crash-safe order; `RunFolder` is one.

    `resume_arm` gives the state after the last complete epoch (None for a new arm),
    `begin_arm` a new arm's empty record, `record_epoch` one finished epoch (snapshots, then
    checkpoint, then row), `finish_arm` the arm marked complete.
    """

    def resume_arm(
        self, arm_id: str, config: ArmConfig | None = None, hardware: dict | None = None
    ) -> ArmState | None: ...
    def begin_arm(self, arm_id: str, state: ArmState) -> None: ...
    def record_epoch(
        self,
        arm_id: str,
        state: ArmState,
        row: EpochRow,
        snapshots: tuple[list[int], list[np.ndarray]],
        every_steps: int,
    ) -> None: ...
    def finish_arm(self, arm_id: str) -> None: ...


class SnapshotSink(Protocol):
    """Where the model after every `every`-th epoch goes (`harness sal-agreement` reads them)."""

    every: int

    def save(self, arm_id: str, epoch: int, model_state: dict[str, Tensor]) -> None: ...


class ArmInputs(Protocol):
    """The training inputs of a poisoned arm (`PoisonedInputs` generates them)."""

    def for_arm(self, arm: Arm) -> Tensor: ...


def stored_poison(x: Tensor, storage: str) -> Tensor:
    """A poisoned training set as the spec keeps it: float32, or uint8 (`poison_storage`)."""
    if storage == "uint8" and x.dtype != torch.uint8:
        return float_to_pixels(x)
    return x


def check_poison_storage(assembly: Assembly) -> None:
    """uint8 poisons need images in [0, 1]; refused before anything is written otherwise."""
    spec = assembly.spec
    if spec.training.poison_storage == "uint8" and (
        not assembly.data.is_image or assembly.data.value_range != (0.0, 1.0)
    ):
        raise SpecError(
            f"{assembly.where(('training', 'poison_storage'))}: training.poison_storage: uint8 "
            f"keeps images in [0, 1] as k/255; data set {spec.data.name!r} has inputs of shape "
            f"{assembly.data.input_shape} in {assembly.data.value_range}"
        )


class SharedPoisons:
    """Each (seed, poison) of a local run made once (or read from the disk cache), kept as the
    spec stores it (`training.poison_storage`) and dropped after the last arm that trains on it."""

    def __init__(
        self,
        assembly: Assembly,
        arms: Sequence[Arm],
        cache: PoisonCache | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.assembly, self.cache, self.reporter = assembly, cache, reporter
        self.uses = Counter((a.seed, a.poison.key) for a in arms if a.poison is not None)
        self.made: dict[tuple[int, str], Tensor] = {}

    def for_arm(self, arm: Arm) -> Tensor:
        assert arm.poison is not None
        key = (arm.seed, arm.poison.key)
        if key not in self.made:
            x = PoisonedInputs(self.assembly, self.cache, self.reporter).for_arm(arm)
            self.made[key] = stored_poison(x, self.assembly.spec.training.poison_storage)
            self.assembly.data.train.release()  # the float32 copy a poison may have needed
        return self.made[key]

    def done(self, arm: Arm) -> None:
        if arm.poison is None:
            return
        key = (arm.seed, arm.poison.key)
        self.uses[key] -= 1
        if self.uses[key] <= 0:
            self.made.pop(key, None)


def run_arm(
    loaded: LoadedSpec,
    arm: Arm,
    folder: ArmRecorder,
    *,
    components: Components | None = None,
    assembly: Assembly | None = None,
    poisons: ArmInputs | None = None,
    reporter: Reporter | None = None,
    snapshots: SnapshotSink | None = None,
) -> None:
    """Train one arm to its last epoch, resuming from its checkpoint, recording into `folder`.

    `folder` is an open `RunFolder` (`RunFolder.open`) or any other `ArmRecorder`. `assembly`
    and `poisons` let arms of one process share the data and generated poisons; without them
    they are built from the spec.
    """
    reporter = reporter or Reporter()
    assembly = assembly or Assembly.from_spec(loaded, components or get_components())
    spec, tasks, device = loaded.spec, assembly.tasks, assembly.device
    recipe = spec.training
    state = folder.resume_arm(arm.id, assembly.arm_config(arm), hardware(device))
    if state is not None and state.complete:
        reporter.arm_done(arm.id, skipped=True)
        return

    data = assembly.data
    if arm.poison is None:
        train_split = data.train
    else:
        poisons = poisons or PoisonedInputs(assembly, reporter=reporter)
        train_split = data.train.with_inputs(
            stored_poison(poisons.for_arm(arm), recipe.poison_storage)
        )
    defence = assembly.components.build("defence", arm.defence.name, arm.defence.params)
    # JPEG and the like once per arm, not per batch and epoch (same images, see Defence.per_image)
    train_split, defence = apply_images_once(defence, train_split)
    torch.manual_seed(arm.seed)
    model = prefer_channels_last(assembly.build_model().to(device), device)
    optimizer = make_optimizer(model, recipe.optimizer)
    scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs)
    scaler = None
    if recipe.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        scaler = torch.amp.GradScaler("cuda")
    generator = torch.Generator().manual_seed(arm.seed)

    if state is None:
        state = ArmState(
            config=assembly.arm_config(arm),
            hardware=hardware(device),
            layers=assembly.layers,
            epochs=recipe.epochs,
            task_labels=tasks.per_task_labels,
            task_layers=assembly.task_layers,
        )
        folder.begin_arm(arm.id, state)
    else:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        generator.set_state(state.generator)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
    done = state.epochs_done
    reporter.arm_start(arm.id, recipe.epochs, done)
    every = spec.landscape.every_steps
    tracer = ParameterTracer(
        model, optimizer, state.steps, every if spec.traces(arm.id, arm.poison_key) else None
    )
    if done == 0:
        tracer.snapshot()  # step 0: the initial parameters, written with the first epoch

    train = on_device(train_split, device)
    test = on_device(data.test, device)
    probe = SALProbe(
        spec.sal,
        recipe.augmentation,
        tasks,
        assembly.layers,
        assembly.task_layers,
        train,
        defence,
        arm.seed,
        assembly.sal_autocast,
        on_layer=lambda i, total: reporter.sal_layer(arm.id, i, total),
        estimator=assembly.sal_estimator(),
    )
    for epoch in range(done + 1, recipe.epochs + 1):
        termination.check()
        t0 = time.perf_counter()
        train_loss = train_epoch(
            model,
            train,
            tasks,
            defence,
            recipe,
            optimizer,
            generator,
            device,
            epoch,
            data.num_classes,
            data.value_range,
            scaler,
        )
        test_loss, metric = evaluate_all(
            model, test, tasks, max(recipe.batch_size, 256), device, recipe.amp
        )
        test_metric = metric.compute()
        t1 = time.perf_counter()
        measured = probe.measure(model, epoch, train_loss)
        t2 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        sal = measured.sal
        row = EpochRow(
            sal=sal.values,
            sal_ascent_loss=sal.ascent_losses,
            sal_descent_loss=sal.descent_losses,
            metrics={
                "train_loss": train_loss,
                "test_loss": test_loss,
                "test_metric": test_metric,
                "sal_base_loss": sal.base_loss,
                "lr": lr,
                "train_seconds": t1 - t0,
                "sal_seconds": t2 - t1,
                **tasks.metric_row(metric),
            },
            task_sal=measured.task_sal,
        )
        state.rows.append(row)
        state.complete = epoch == recipe.epochs
        state.model, state.optimizer = model.state_dict(), optimizer.state_dict()
        state.scheduler, state.generator = scheduler.state_dict(), generator.get_state()
        state.scaler = scaler.state_dict() if scaler is not None else {}
        state.steps = tracer.step
        if snapshots is not None and epoch % snapshots.every == 0:
            snapshots.save(arm.id, epoch, state.model)  # before the epoch is recorded
        folder.record_epoch(arm.id, state, row, tracer.take(), every)
        reporter.epoch_done(arm.id, epoch, recipe.epochs, {**row.metrics, "sal": row.sal})
    tracer.close()
    folder.finish_arm(arm.id)
    reporter.arm_done(arm.id)


class Runner:
    """Runs every arm of a spec into its run folder, then scores them.

    `prepare()` runs the pre-flight checks (nothing is written); `run()` opens the folder and
    trains the arms one after another in this process.
    """

    def __init__(
        self,
        loaded: LoadedSpec,
        components: Components,
        *,
        output_root: Path | str | None = None,
        fresh: bool = False,
        reporter: Reporter | None = None,
        poison_cache: PoisonCache | None = None,
        log_to: Sequence[str] = (),
        reuse: ArmSources | None = None,
        arms: Sequence[str] = (),
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.components = components
        self.reporter = reporter or Reporter()
        self.fresh = fresh
        self.folder = RunFolder.for_spec(
            self.spec.name, output_root if output_root is not None else self.spec.output
        )
        self.poison_cache = poison_cache
        self.log_to = list(log_to)
        self.reuse = reuse or ArmSources()
        #: the arms this command trains (`--arms`; every planned arm by default)
        self.arms = select_arms(plan_arms(self.spec), arms)
        self.assembly: Assembly | None = None

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def prepare(self) -> Assembly:
        self.reporter.stage(f"loading data set {self.spec.data.name}")
        self.assembly = preflight(
            self.loaded, self.components, folder=self.folder, fresh=self.fresh, log_to=self.log_to
        )
        check_poison_storage(self.assembly)
        return self.assembly

    def run(self) -> list[Entry]:
        assembly = self.assembly or self.prepare()
        loaded = self.loaded
        self.folder.open(
            loaded.source.as_text(),
            loaded.resolved(),
            loaded.hash,
            self.spec.name,
            stage=self.reporter.stage,
        )
        arms = self.arms
        self.reuse.adopt(self.folder, assembly, arms, self.reporter.stage)
        reporter = tracked_reporter(
            self.reporter, loaded, self.components, self.folder, assembly, self.log_to
        )
        reporter.plan([arm.id for arm in arms], self.spec.training.epochs)
        poisons = SharedPoisons(assembly, arms, self.poison_cache, reporter)
        try:
            every = self.spec.execution.save_snapshots
            snapshots = self.folder.snapshots(every) if every else None
            for arm in arms:
                run_arm(
                    loaded,
                    arm,
                    self.folder,
                    assembly=assembly,
                    poisons=poisons,
                    reporter=reporter,
                    snapshots=snapshots,
                )
                poisons.done(arm)
                write_entries_so_far(self.folder.path)
            entries = compute_entries(self.folder.path)
            write_entries(self.folder.path, entries)
            if isinstance(reporter, TrackingReporter):
                reporter.run_end(entries)
        finally:
            reporter.close()
            self.folder.unlock()
        return entries
