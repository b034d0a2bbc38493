"""`harness eval SPEC --dry-run`: what a run would do and roughly what it would cost, doing none of it.

The pre-flight checks run as for a real run (the data set is loaded, every component built), the
run folder is only read (which arms a previous run finished or checkpointed), and for each defence
in the spec a few training steps, one evaluation batch and one SAL iteration on one layer are
timed on the real data and model. Per epoch an arm costs

    training   = batches per epoch × one timed step (with the arm's defence)
    evaluation = test batches × one timed evaluation batch
    SAL        = scored layers × iterations × (probe size / probe batch) × one timed probe batch

so the estimate scales with everything the spec sets. Poison generation is the plugin's own
affair and is not estimated: the plan says which generations each arm waits on and whether the
poison cache already holds them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.assembly import Assembly
from harness.checkpoint import ArmState, load_state
from harness.errors import RunStateError
from harness.plan import Arm, plan_arms, select_arms
from harness.pluginmanager import Components
from harness.poison_cache import PoisonCache
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.probe import SALProbe
from harness.progress import Reporter, duration
from harness.reuse import ArmSources
from harness.runfolder import RunFolder
from harness.runner import check_poison_storage
from harness.spec import ArmComponentRef
from harness.specfile import LoadedSpec
from harness.training import evaluate_all, make_optimizer, on_device, train_epoch


@dataclass
class EpochCost:
    """Estimated seconds of one epoch of one arm, by part."""

    train: float
    evaluate: float
    sal: float

    @property
    def total(self) -> float:
        return self.train + self.evaluate + self.sal


@dataclass
class ArmPlan:
    arm: Arm
    position: int
    done: int
    epochs: int
    complete: bool
    waits_on: str | None
    cost: EpochCost
    #: the run folder (`--reuse-clean`, `--reuse-arms`) this arm's complete checkpoint would be
    #: adopted from instead of training it
    adopted_from: Path | None = None

    @property
    def remaining_seconds(self) -> float:
        done = self.complete or self.adopted_from is not None
        return 0.0 if done else self.cost.total * (self.epochs - self.done)

    @property
    def status(self) -> str:
        if self.adopted_from is not None:
            return f"adopted from {self.adopted_from}"
        if self.complete:
            return "complete"
        return f"resumes after epoch {self.done}" if self.done else "new"


@dataclass
class PoisonPlan:
    label: str
    seed: int
    cached: bool
    arms: list[str] = field(default_factory=list)
    #: a generation cut short left a checkpoint to resume from
    unfinished: bool = False


@dataclass
class DryRun:
    name: str
    folder: Path
    executor: str
    cpus_per_arm: float
    gpus_per_arm: float
    arms: list[ArmPlan]
    poisons: list[PoisonPlan]
    #: arms complete in the `--reuse-arms` run but configured otherwise there: trained here
    not_reused: list[str] = field(default_factory=list)
    reuse_source: Path | None = None

    @property
    def remaining_seconds(self) -> float:
        return sum(a.remaining_seconds for a in self.arms)

    def text(self) -> str:
        n = len(self.arms)
        lines = [
            f"{self.name}: {n} arms (executor {self.executor}); run folder {self.folder} "
            "(dry run: nothing trained, nothing written)",
        ]
        if self.poisons:
            lines.append("poison generations:")
            width = max(len(f"{p.label} (seed {p.seed})") for p in self.poisons)
            for p in self.poisons:
                name = f"{p.label} (seed {p.seed})"
                state = (
                    "in this machine's poison cache"
                    if p.cached
                    else "to generate, resuming an unfinished generation (cost not estimated)"
                    if p.unfinished
                    else "to generate (cost not estimated)"
                )
                lines.append(
                    f"  {name:<{width}}  {state}; used by {len(p.arms)} arm(s): {', '.join(p.arms)}"
                )
        lines.append("arms (estimated cost: training + evaluation + SAL per epoch):")
        width = max(len(a.arm.id) for a in self.arms)
        waits = max(len(a.waits_on or "-") for a in self.arms)
        status = max(len(a.status) for a in self.arms)
        for a in self.arms:
            c = a.cost
            wait = a.waits_on or "-"
            lines.append(
                f"  arm {a.position}/{n}  {a.arm.id:<{width}}  {a.status:<{status}}  "
                f"waits on {wait:<{waits}}  "
                f"{c.total:7.2f} s/epoch ({c.train:.2f} + {c.evaluate:.2f} + {c.sal:.2f})  "
                f"remaining {duration(a.remaining_seconds)}"
            )
        if self.not_reused:
            lines.append(
                f"not reused from {self.reuse_source} (configured otherwise there; trained here): "
                + ", ".join(self.not_reused)
            )
        total = self.remaining_seconds
        if self.executor == "ray":
            lines.append(
                f"estimated arm time: {duration(total)} in all, at {self.cpus_per_arm:g} CPU and "
                f"{self.gpus_per_arm:g} GPU per arm; Ray divides it among the arms the cluster "
                "runs at once"
            )
        else:
            lines.append(f"estimated arm time: {duration(total)}, one arm after another")
        return "\n".join(lines)


def dry_run(
    loaded: LoadedSpec,
    components: Components,
    *,
    output_root: Path | str | None = None,
    fresh: bool = False,
    reporter: Reporter | None = None,
    steps: int = 3,
    reuse: ArmSources | None = None,
    arms: Sequence[str] = (),
) -> DryRun:
    """The plan of the spec's run with an estimated cost per arm; writes nothing. With `reuse`
    (`--reuse-clean`, `--reuse-arms`) the arms the run would adopt are marked as such."""
    reporter = reporter or Reporter()
    spec = loaded.spec
    chosen = select_arms(plan_arms(spec), arms)
    folder = RunFolder.for_spec(spec.name, output_root if output_root is not None else spec.output)
    reporter.stage(f"loading data set {spec.data.name}")
    assembly = preflight(loaded, components, folder=folder, fresh=fresh)
    check_poison_storage(assembly)
    arms = chosen
    stale = fresh and folder.resolved_spec_file.exists()
    reuse = reuse or ArmSources()
    reused = reuse.plan(None if stale else folder, assembly, arms)
    costs: dict[str, EpochCost] = {}
    for arm in arms:
        if arm.defence_key not in costs:
            reporter.stage(f"timing {steps} steps with defence {arm.defence_key}")
            costs[arm.defence_key] = measure_epoch(assembly, arm.defence, steps)
    poisons: dict[tuple[int, str], PoisonPlan] = {}
    inputs = PoisonedInputs(assembly)
    cache = PoisonCache()
    plans = []
    for position, arm in enumerate(arms, start=1):
        state = None if stale else _checkpoint(folder, arm)
        waits = None
        if arm.poison is not None:
            key = (arm.seed, arm.poison.key)
            if key not in poisons:
                cache_key = inputs.cache_key(arm)
                poisons[key] = PoisonPlan(
                    arm.poison.key,
                    arm.seed,
                    cache.path(cache_key).exists(),
                    unfinished=cache.partial_path(cache_key).exists(),
                )
            poisons[key].arms.append(arm.id)
            waits = f"{arm.poison.key} (seed {arm.seed})"
        plans.append(
            ArmPlan(
                arm,
                position,
                0 if state is None else state.epochs_done,
                spec.training.epochs,
                state is not None and state.complete,
                waits,
                costs[arm.defence_key],
                reused.source_of(arm.id),
            )
        )
    assembly.data.train.release()
    execution = spec.execution
    return DryRun(
        spec.name,
        folder.path,
        execution.executor,
        execution.cpus_per_arm,
        execution.gpus_per_arm,
        plans,
        list(poisons.values()),
        reused.differing,
        None if reuse.any is None else Path(reuse.any),
    )


def _checkpoint(folder: RunFolder, arm: Arm) -> ArmState | None:
    try:
        return load_state(folder.checkpoint(arm.id))
    except RunStateError:
        return None  # the run itself will name the damaged checkpoint


def measure_epoch(assembly: Assembly, defence_ref: ArmComponentRef, steps: int = 3) -> EpochCost:
    """One epoch's estimated seconds with this defence, from `steps` timed training steps, one
    timed evaluation batch and one timed SAL iteration on one layer over one probe batch."""
    spec, data, device = assembly.spec, assembly.data, assembly.device
    recipe, sal = spec.training, spec.sal
    defence = assembly.components.build("defence", defence_ref.name, defence_ref.params)
    torch.manual_seed(spec.seeds[0])
    model = assembly.build_model().to(device)
    optimizer = make_optimizer(model, recipe.optimizer)
    generator = torch.Generator().manual_seed(spec.seeds[0])
    bs = recipe.batch_size
    n_train = len(data.train)
    count = min(n_train, bs * steps)
    timed = on_device(data.train.take(torch.arange(count)), device)
    warm = on_device(data.train.take(torch.arange(min(n_train, bs))), device)

    def epoch_on(split) -> float:
        args = (model, split, assembly.tasks, defence, recipe, optimizer, generator, device, 1)
        return train_epoch(*args, data.num_classes, data.value_range)

    epoch_on(warm)  # first step: allocations, lazy initialisation
    started = time.perf_counter()
    loss = epoch_on(timed)
    per_step = (time.perf_counter() - started) / max(1, math.ceil(count / bs))
    train = per_step * math.ceil(n_train / bs)

    eval_bs = max(bs, 256)
    test = on_device(data.test.take(torch.arange(min(len(data.test), eval_bs))), device)
    evaluate_all(model, test, assembly.tasks, eval_bs, device, recipe.amp)
    started = time.perf_counter()
    evaluate_all(model, test, assembly.tasks, eval_bs, device, recipe.amp)
    evaluate = (time.perf_counter() - started) * math.ceil(len(data.test) / eval_bs)

    def sample(layers: list[str]) -> list[str]:
        # the first, a middle and the last layer: with the exact prefix cache a layer's cost
        # falls with its depth, so the first alone would overstate a deep network's SAL
        return [layers[i] for i in sorted({0, len(layers) // 2, len(layers) - 1})] if layers else []

    sampled, sampled_tasks = sample(assembly.layers), sample(assembly.task_layers)
    tasks = assembly.tasks
    measured_layers = len(sampled) + len(tasks.per_task_labels) * len(sampled_tasks)
    layers = len(assembly.layers) + len(tasks.per_task_labels) * len(assembly.task_layers)
    probe_batches = max(1, math.ceil(min(sal.probe_size, n_train) / sal.probe_batch_size))

    def sal_seconds(iterations: int) -> float:
        one_batch = sal.model_copy(
            update={"iterations": iterations, "probe_size": sal.probe_batch_size}
        )
        probe = SALProbe(
            one_batch,
            recipe.augmentation,
            assembly.tasks,
            sampled,
            sampled_tasks,
            on_device(data.train, device),
            defence,
            spec.seeds[0],
            assembly.sal_autocast,
            estimator=assembly.sal_estimator()
            if iterations == sal.iterations
            else None,  # the reference, at a chosen number of iterations
        )
        started = time.perf_counter()
        probe.measure(model, 1, loss)
        return time.perf_counter() - started

    if sal.estimator.name != "reference" or sal.estimator.params:
        # not the plain reference (another estimator, or the convergence stop): timed as the
        # run will compute it, since its cost does not follow the iterations
        sal_seconds(sal.iterations)  # warm-up
        per_layer = sal_seconds(sal.iterations) / measured_layers
        return EpochCost(train, evaluate, per_layer * layers * probe_batches)
    sal_seconds(1)  # warm-up
    one, two = sal_seconds(1), sal_seconds(2)
    per_iteration = max(two - one, 0.0)
    fixed = max(one - per_iteration, 0.0)  # per layer: the base loss, the copies
    per_layer = (fixed + sal.iterations * per_iteration) / measured_layers
    return EpochCost(train, evaluate, per_layer * layers * probe_batches)
