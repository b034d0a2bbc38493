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

`run_arm` needs only the spec, the arm and the run folder: whatever it is not handed (the
assembly, the poisons) it builds from the spec, so an arm can run in another process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from harness.assembly import Assembly
from harness.checkpoint import ArmState
from harness.entries import Entry, compute_entries, write_entries
from harness.plan import Arm, plan_arms
from harness.pluginmanager import Components, get_components
from harness.poison_cache import PoisonCache
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.probe import SALProbe
from harness.progress import Reporter
from harness.reuse import adopt_clean_arms
from harness.runfolder import RunFolder
from harness.specfile import LoadedSpec
from harness.store import EpochRow
from harness.sysinfo import hardware
from harness.tracking import RunInfo, TrackingReporter
from harness.training import evaluate_all, make_optimizer, make_scheduler, on_device, train_epoch
from harness.trajectory import ParameterTracer


def run_arm(
    loaded: LoadedSpec,
    arm: Arm,
    folder: RunFolder,
    *,
    components: Components | None = None,
    assembly: Assembly | None = None,
    poisons: PoisonedInputs | None = None,
    reporter: Reporter | None = None,
) -> None:
    """Train one arm to its last epoch, resuming from its checkpoint, recording into `folder`.

    The folder must be open (`RunFolder.open`). `assembly` and `poisons` let arms of one process
    share the data and generated poisons; without them they are built from the spec.
    """
    reporter = reporter or Reporter()
    assembly = assembly or Assembly.from_spec(loaded, components or get_components())
    poisons = poisons or PoisonedInputs(assembly, reporter=reporter)
    spec, tasks, device = loaded.spec, assembly.tasks, assembly.device
    recipe = spec.training
    state = folder.resume_arm(arm.id, assembly.arm_config(arm), hardware(device))
    if state is not None and state.complete:
        reporter.arm_done(arm.id, skipped=True)
        return

    train_x = poisons.for_arm(arm)
    defence = assembly.components.build("defence", arm.defence.name, arm.defence.params)
    torch.manual_seed(arm.seed)
    model = assembly.build_model().to(device)
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

    data = assembly.data
    train = on_device(data.train.with_inputs(train_x), device)
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
        assembly.autocast,
        on_layer=lambda i, total: reporter.sal_layer(arm.id, i, total),
    )
    for epoch in range(done + 1, recipe.epochs + 1):
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
        reuse_clean: Path | str | None = None,
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
        self.reuse_clean = RunFolder(reuse_clean) if reuse_clean is not None else None
        self.assembly: Assembly | None = None

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def prepare(self) -> Assembly:
        self.reporter.stage(f"loading data set {self.spec.data.name}")
        self.assembly = preflight(
            self.loaded, self.components, folder=self.folder, fresh=self.fresh, log_to=self.log_to
        )
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
        if self.reuse_clean is not None:
            adopted = adopt_clean_arms(
                self.folder, self.reuse_clean, assembly, plan_arms(self.spec)
            )
            if adopted:
                self.reporter.stage(
                    f"clean arms from {self.reuse_clean.path}: {', '.join(adopted)}"
                )
        reporter = self._tracked(assembly)
        poisons = PoisonedInputs(assembly, self.poison_cache, reporter)
        try:
            for arm in plan_arms(self.spec):
                run_arm(
                    loaded, arm, self.folder, assembly=assembly, poisons=poisons, reporter=reporter
                )
            entries = compute_entries(self.folder.path)
            write_entries(self.folder.path, entries)
            if isinstance(reporter, TrackingReporter):
                reporter.run_end(entries)
        finally:
            reporter.close()
            self.folder.unlock()
        return entries

    def _tracked(self, assembly: Assembly) -> Reporter:
        """The reporter, sending the run's events to the spec's trackers and those of --log-to."""
        refs = [(ref.name, ref.name, ref.params) for ref in self.spec.trackers]
        refs += [(name, name, {}) for name in self.log_to if name not in {r[0] for r in refs}]
        if not refs:
            return self.reporter
        trackers = {
            label: self.components.build("tracker", name, params) for label, name, params in refs
        }
        reporter = TrackingReporter(self.reporter, trackers)
        reporter.run_start(
            RunInfo(
                self.spec.name,
                self.loaded.hash,
                self.loaded.resolved(),
                self.folder.path,
                assembly.layers,
                assembly.task_layers,
            )
        )
        return reporter
