"""Running a spec: every arm trained, probed with SAL after every epoch, streamed, scored.

Order of work, chosen so that a bad spec or a missing data set fails before anything is
written, and a killed run loses at most the epoch it was in:

1. validate the spec and every component's parameters (done by `load_spec`);
2. load the data set and build the model once, to learn the scored layers;
3. create (or reopen and check) the run folder;
4. per seed: the clean arm first, then each poison undefended, then each defence over the clean
   data and every poison. Data, poisons and the clean reference are computed once and shared;
5. score every arm from the HDF5 file and write one entry per arm.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from harness.atomic import atomic_write, atomic_write_text
from harness.backbone import TaskModel, scored_layers
from harness.data import DataBundle, Split, stratified_indices, subset
from harness.defence import Defence
from harness.entries import (
    ENTRIES_DIR,
    RUN_FILE,
    Entry,
    arm_id,
    compute_entries,
    write_entries,
)
from harness.errors import DataError, RunStateError, SpecError
from harness.pluginmanager import Components
from harness.poison import PoisonContext
from harness.poison_cache import PoisonCache, data_fingerprint, poison_key
from harness.progress import Reporter
from harness.sal import SALSettings, compute_sal
from harness.spec import ArmComponentRef, ComponentRef, Spec
from harness.specfile import LoadedSpec, SpecSource
from harness.store import EpochRow, RunStore
from harness.sysinfo import git_revision, hardware, harness_version
from harness.task import TaskHead
from harness.training import (
    augment,
    autocast_for,
    batch_order,
    evaluate,
    make_optimizer,
    make_scheduler,
    resolve_device,
    train_epoch,
)

CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class Arm:
    seed: int
    poison: ArmComponentRef | None
    defence: ArmComponentRef

    @property
    def poison_key(self) -> str:
        return "clean" if self.poison is None else self.poison.key

    @property
    def defence_key(self) -> str:
        return self.defence.key

    @property
    def id(self) -> str:
        return arm_id(self.poison_key, self.defence_key, self.seed)


def plan_arms(spec: Spec) -> list[Arm]:
    """The clean reference first (β comes from it), then undefended poisons, then defences."""
    arms: list[Arm] = []
    none = next(d for d in spec.defences if d.name == "none")
    defended = [d for d in spec.defences if d is not none]
    for seed in spec.seeds:
        arms.append(Arm(seed, None, none))
        arms += [Arm(seed, p, none) for p in spec.poisons]
        for d in defended:
            arms.append(Arm(seed, None, d))
            arms += [Arm(seed, p, d) for p in spec.poisons]
    return arms


def _component_info(components: Components, kind: str, ref: ComponentRef) -> dict[str, Any]:
    registered = components.get(kind, ref.name)
    info = {"name": ref.name, "params": ref.params, **registered.provenance()}
    if isinstance(ref, ArmComponentRef):
        info["label"] = ref.key
    return info


class Runner:
    def __init__(
        self,
        loaded: LoadedSpec,
        components: Components,
        *,
        output_root: Path | None = None,
        fresh: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        self.loaded = loaded
        self.spec = loaded.spec
        self.components = components
        self.reporter = reporter or Reporter()
        self.fresh = fresh
        self.run_dir = Path(output_root if output_root is not None else self.spec.output) / self.spec.name
        self.device = resolve_device(self.spec.training.device)
        self.autocast = autocast_for(self.device, self.spec.training.amp)
        self.store = RunStore(self.run_dir / RUN_FILE)
        self._poisoned: dict[tuple[int, str], Tensor] = {}
        self.poison_cache = PoisonCache()
        self.data: DataBundle | None = None
        self.task: TaskHead | None = None
        self.layers: list[str] = []

    # --- components ------------------------------------------------------------------------
    def _build(self, kind: str, ref: ComponentRef, *args: Any, **kwargs: Any) -> Any:
        record = self.components.get(kind, ref.name).record
        return record.factory(record.params.model_validate(ref.params), *args, **kwargs)

    def build_model(self, backbone_name: str | None = None, backbone_params: dict | None = None) -> TaskModel:
        assert self.data is not None and self.task is not None
        ref = self.spec.backbone if backbone_name is None else ComponentRef(name=backbone_name, params=backbone_params or {})
        try:
            backbone = self._build("backbone", ref, self.data.input_shape)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{self.loaded.source.where(('backbone', 'name'))}: backbone {ref.name!r} "
                            f"cannot take inputs of shape {self.data.input_shape}: {exc}") from None
        return TaskModel(backbone, self.task.build(backbone.num_features, self.data))

    def load_data(self) -> DataBundle:
        ref = self.spec.data
        record = self.components.get("dataset", ref.name).record
        params = record.params.model_validate(ref.params)
        sub = ref.subset
        kwargs = {}
        if "subset" in inspect.signature(record.factory).parameters:
            kwargs["subset"] = {"train": sub.train, "test": sub.test, "seed": sub.seed}
        try:
            data = record.factory(params, **kwargs)
        except DataError as exc:
            raise DataError(f"{self.loaded.source.where(('data',))}: data set {ref.name!r}: {exc}") from None
        data.train = subset(data.train, sub.train, sub.seed)
        data.test = subset(data.test, sub.test, sub.seed)
        if self.spec.training.augmentation and not data.is_image:
            raise SpecError(f"{self.loaded.source.where(('training', 'augmentation'))}: training.augmentation: "
                            f"data set {ref.name!r} has inputs of shape {data.input_shape}, not images")
        return data

    # --- preparation (no files written) ------------------------------------------------------
    def prepare(self) -> None:
        self.reporter.stage(f"loading data set {self.spec.data.name}")
        self.data = self.load_data()
        self.task = self._build("task", self.spec.task)
        torch.manual_seed(self.spec.seeds[0])
        model = self.build_model()
        self.layers = scored_layers(model)
        if not self.layers:
            raise SpecError(f"{self.loaded.source.where(('backbone',))}: the model has no Conv2d or Linear "
                            "layer for SAL to score")
        self._check_landscape(model)
        self._check_existing_run()

    def _check_landscape(self, model: TaskModel) -> None:
        """Refuse, before anything is written, a trajectory that would not fit in reason."""
        ls = self.spec.landscape
        if not ls.enabled:
            return
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if n > ls.max_params:
            raise SpecError(
                f"{self.loaded.source.where(('landscape', 'max_params'))}: landscape.max_params: the model has "
                f"{n:,} trainable parameters, over the limit of {ls.max_params:,} (each snapshot of the "
                f"trajectory takes {4 * n / 1e6:.1f} MB); raise `max_params`, trace a smaller model, or "
                "set `landscape.enabled: false`"
            )

    def _check_existing_run(self) -> None:
        spec_file = self.run_dir / "spec.resolved.json"
        if not spec_file.exists():
            if self.run_dir.exists() and any(self.run_dir.iterdir()):
                raise RunStateError(f"{self.run_dir} exists and is not a harness run; choose another "
                                    "name or output folder")
            return
        stored = json.loads(spec_file.read_text())
        if stored.get("spec_hash") == self.loaded.hash:
            return
        if not self.fresh:
            raise RunStateError(
                f"{self.run_dir} holds a run of a different spec (hash {stored.get('spec_hash', '?')[:12]}, "
                f"this spec {self.loaded.hash[:12]}). Rerun with --fresh to start a new run (the old one "
                "is kept, renamed), or change `name`."
            )

    def _open_run_folder(self) -> None:
        spec_file = self.run_dir / "spec.resolved.json"
        if spec_file.exists():
            stored = json.loads(spec_file.read_text())
            if stored.get("spec_hash") != self.loaded.hash:  # only reachable with --fresh
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                moved = self.run_dir.with_name(f"{self.run_dir.name}.replaced-{stamp}")
                shutil.move(str(self.run_dir), str(moved))
                self.reporter.stage(f"previous run moved to {moved}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resolved = self.loaded.resolved()
        if not spec_file.exists():
            atomic_write_text(self.run_dir / "spec.yaml", self.loaded.source.path.read_text(encoding="utf-8"))
            atomic_write_text(spec_file, json.dumps({"spec_hash": self.loaded.hash, "spec": resolved}, indent=2))
        if not self.store.path.exists() or not self.store.readable():
            if self.store.path.exists():
                self.store.path.replace(self.store.path.with_suffix(".h5.damaged"))
                self.reporter.stage("run.h5 was damaged by an interrupted write; rebuilding it from checkpoints")
            self.store.create({
                "spec": resolved, "spec_hash": self.loaded.hash, "spec_name": self.spec.name,
                "harness_version": harness_version(), "git_revision": git_revision() or "",
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })

    # --- data for one arm --------------------------------------------------------------------
    def poisoned_inputs(self, arm: Arm) -> Tensor:
        """The arm's training inputs: clean, or the poison's (from the disk cache when it has them)."""
        assert self.data is not None and self.task is not None
        if arm.poison is None:
            return self.data.train.x
        key = (arm.seed, arm.poison.key)
        if key in self._poisoned:
            return self._poisoned[key]
        dataset = _component_info(self.components, "dataset", self.spec.data)
        dataset["subset"] = self.spec.data.subset.model_dump(mode="json")
        cache_key = poison_key(
            _component_info(self.components, "poison", arm.poison), dataset,
            data_fingerprint(self.data.train.x, self.data.train.y), arm.seed,
        )
        poison = self._build("poison", arm.poison)
        cached = self.poison_cache.load(cache_key, tuple(self.data.train.x.shape)) if poison.cacheable else None
        if cached is not None:
            self.reporter.stage(f"poison {arm.poison.key} (seed {arm.seed}) from the cache")
            self._poisoned[key] = cached[0]
            return cached[0]
        self.reporter.stage(f"generating poison {arm.poison.key} (seed {arm.seed})")
        label = arm.poison.key
        ctx = PoisonContext(
            seed=arm.seed, device=self.device, data=self.data,
            build_model=lambda name, params: self.build_model(name, params),
            task_loss=self.task.loss,
            cache_dir=self.poison_cache.root,
            progress=lambda message, fraction: self.reporter.poison_progress(label, message, fraction),
        )
        started = time.perf_counter()
        x = poison.generate(self.data, ctx)
        seconds = time.perf_counter() - started
        if tuple(x.shape) != tuple(self.data.train.x.shape):
            raise RuntimeError(f"poison {arm.poison.name!r} returned inputs of shape {tuple(x.shape)}, "
                               f"expected {tuple(self.data.train.x.shape)}")
        x = x.detach().to(torch.float32).cpu()
        if poison.cacheable:
            self.poison_cache.save(cache_key, x, {"seconds": seconds, "poison": arm.poison.name})
        self._poisoned[key] = x
        return x

    def probe_indices(self, seed: int) -> Tensor:
        assert self.data is not None
        idx = stratified_indices(self.data.train.y.numpy(), self.spec.sal.probe_size, seed)
        return torch.as_tensor(idx)

    # --- one arm -------------------------------------------------------------------------------
    def arm_config(self, arm: Arm) -> dict[str, Any]:
        spec = self.spec
        dataset = _component_info(self.components, "dataset", spec.data)
        dataset["subset"] = spec.data.subset.model_dump(mode="json")
        return {
            "arm_id": arm.id,
            "seed": arm.seed,
            "poison_key": arm.poison_key,
            "defence_key": arm.defence_key,
            "poison": None if arm.poison is None else _component_info(self.components, "poison", arm.poison),
            "defence": _component_info(self.components, "defence", arm.defence),
            "task": {"metric_name": self.task.metric_name, "higher_is_better": self.task.higher_is_better},
            "track": {
                "dataset": dataset,
                "task": _component_info(self.components, "task", spec.task),
                "backbone": _component_info(self.components, "backbone", spec.backbone),
                "training": spec.training.model_dump(mode="json"),
                "sal": spec.sal.model_dump(mode="json"),
            },
        }

    def _checkpoint_path(self, arm: Arm) -> Path:
        return self.run_dir / CHECKPOINTS_DIR / f"{arm.id}.pt"

    def _sync_store(self, arm: Arm, state: dict[str, Any]) -> None:
        """Make the HDF5 arm hold exactly the checkpoint's rows (after a kill at any point).

        The checkpoint's rows are the truth: when the file's differ in number, they are all
        rewritten from it. The parameter trajectory lives in the file alone, so the arm's group
        is kept (not recreated) whenever it exists, and its trajectory is cut back to the
        checkpoint's optimisation step.
        """
        rows = state["rows"]
        if self.store.has_arm(arm.id):
            data = self.store.read_arm(arm.id)
            if data.layer_names == list(state["layers"]):
                complete = data.complete
                if data.last_complete_epoch != len(rows) or data.sal.shape[0] != len(rows):
                    self.store.truncate_arm(arm.id, 0)
                    for epoch, row in enumerate(rows, start=1):
                        self.store.append_epoch(arm.id, epoch, EpochRow(**row))
                    complete = False
                if state["complete"] and not complete:
                    self.store.mark_complete(arm.id)
                if "steps" in state:
                    self.store.truncate_trajectory(arm.id, int(state["steps"]))
                return
        self.store.init_arm(arm.id, state["config"], state["hardware"], state["layers"], state["epochs"])
        for epoch, row in enumerate(rows, start=1):
            self.store.append_epoch(arm.id, epoch, EpochRow(**row))
        if state["complete"]:
            self.store.mark_complete(arm.id)

    def run_arm(self, arm: Arm) -> None:
        assert self.data is not None and self.task is not None
        recipe = self.spec.training
        ckpt_path = self._checkpoint_path(arm)
        state = torch.load(ckpt_path, weights_only=True) if ckpt_path.exists() else None
        if state is not None and state["complete"]:
            self._sync_store(arm, state)
            self.reporter.arm_done(arm.id, skipped=True)
            return

        train_x = self.poisoned_inputs(arm)
        defence: Defence = self._build("defence", arm.defence)
        torch.manual_seed(arm.seed)
        model = self.build_model().to(self.device)
        optimizer = make_optimizer(model, recipe.optimizer)
        scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs)
        scaler = None
        if recipe.amp and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            scaler = torch.amp.GradScaler("cuda")
        generator = torch.Generator().manual_seed(arm.seed)

        if state is None:
            state = {
                "config": self.arm_config(arm), "hardware": hardware(self.device),
                "layers": self.layers, "epochs": recipe.epochs, "rows": [], "complete": False,
            }
            self.store.init_arm(arm.id, state["config"], state["hardware"], self.layers, recipe.epochs)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            self._sync_store(arm, state)
        done = len(state["rows"])
        self.reporter.arm_start(arm.id, recipe.epochs, done)
        tracer = _Tracer(model, optimizer, int(state.get("steps", 0)),
                         self.spec.landscape.every_steps if self.spec.traces(arm.id, arm.poison_key) else None)
        if done == 0:
            tracer.snapshot()  # step 0: the initial parameters, written with the first epoch

        train = Split(train_x.to(self.device), self.data.train.y.to(self.device))
        test = Split(self.data.test.x.to(self.device), self.data.test.y.to(self.device))
        probe_idx = self.probe_indices(arm.seed)
        for epoch in range(done + 1, recipe.epochs + 1):
            t0 = time.perf_counter()
            train_loss = train_epoch(model, train, self.task, defence, recipe, optimizer, generator,
                                     self.device, epoch, self.data.num_classes, self.data.value_range, scaler)
            test_loss, test_metric = evaluate(model, test, self.task, max(recipe.batch_size, 256),
                                              self.device, recipe.amp)
            t1 = time.perf_counter()
            sal = self.sal(model, arm, train, defence, probe_idx, epoch, train_loss)
            t2 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            row = EpochRow(
                sal=sal.values, sal_ascent_loss=sal.ascent_losses, sal_descent_loss=sal.descent_losses,
                metrics={"train_loss": train_loss, "test_loss": test_loss, "test_metric": test_metric,
                         "sal_base_loss": sal.base_loss, "lr": lr,
                         "train_seconds": t1 - t0, "sal_seconds": t2 - t1},
            )
            state["rows"].append(asdict(row))
            state["complete"] = epoch == recipe.epochs
            state.update(
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                generator=generator.get_state(), scaler=scaler.state_dict() if scaler is not None else {},
                steps=tracer.step,
            )
            # the epoch's snapshots go in before the checkpoint: a resume cuts the trajectory back
            # to the checkpoint's step count, so rows of an epoch that never got its checkpoint go
            self.store.append_trajectory(arm.id, *tracer.take(), self.spec.landscape.every_steps)
            atomic_write(ckpt_path, lambda f, s=state: torch.save(s, f))
            self.store.append_epoch(arm.id, epoch, row)
            self.reporter.epoch_done(arm.id, epoch, recipe.epochs, {**row.metrics, "sal": row.sal})
        tracer.close()
        self.store.mark_complete(arm.id)
        self.reporter.arm_done(arm.id)

    def sal(self, model: TaskModel, arm: Arm, train: Split, defence: Defence, probe_idx: Tensor,
            epoch: int, train_loss: float):
        """SAL of every scored layer on the arm's fixed probe, with its own seeded randomness."""
        settings = self.spec.sal
        g = torch.Generator().manual_seed(arm.seed * 100_003 + epoch)
        x = defence.transform_images(train.x[probe_idx.to(train.x.device)], g)
        y = train.y[probe_idx.to(train.y.device)]
        n, bs = len(x), settings.probe_batch_size

        def batches(order: list[Tensor], augmented: bool) -> list[tuple[Tensor, Tensor]]:
            out = []
            for idx in order:
                xb = x[idx.to(x.device)]
                if augmented:
                    xb = augment(xb, self.spec.training.augmentation, g)
                out.append((xb, y[idx.to(y.device)]))
            return out

        def train_batches(_: int) -> list[tuple[Tensor, Tensor]]:
            return batches(batch_order(n, bs, g, drop_last=True), settings.probe_augment)

        def eval_batches(_: int) -> list[tuple[Tensor, Tensor]]:
            order = batch_order(n, bs, g) if settings.probe_augment else list(torch.arange(n).split(bs))
            return batches(order, settings.probe_augment)

        fixed_eval = None if settings.probe_augment else eval_batches(0)
        return compute_sal(
            model, self.layers, self.task.loss,
            SALSettings(settings.epsilon, settings.iterations, settings.inner_lr),
            train_batches=train_batches,
            eval_batches=(lambda _: fixed_eval) if fixed_eval is not None else eval_batches,
            base_loss=train_loss if settings.base_loss == "train-running-mean" else None,
            autocast=self.autocast,
            on_layer=lambda i: self.reporter.sal_layer(arm.id, i, len(self.layers)),
        )

    # --- everything ------------------------------------------------------------------------------
    def run(self) -> list[Entry]:
        if self.data is None:
            self.prepare()
        self._open_run_folder()
        try:
            for arm in plan_arms(self.spec):
                self.run_arm(arm)
        finally:
            self.reporter.close()
        entries = compute_entries(self.run_dir)
        write_entries(self.run_dir, entries)
        return entries


class _Tracer:
    """Counts optimisation steps and, when the arm is traced, snapshots the parameters.

    Hooks the optimiser (`register_step_post_hook`) rather than the training loop, so every
    step the optimiser really takes is counted (a step skipped by the AMP grad scaler is not).
    Snapshots are held in memory until the epoch ends and go into the run file with it.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                 every_steps: int | None) -> None:
        self.step = step
        self.every = every_steps
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.steps: list[int] = []
        self.rows: list[Any] = []
        self._handle = optimizer.register_step_post_hook(self._on_step)

    def _on_step(self, *_: Any) -> None:
        self.step += 1
        if self.every is not None and self.step % self.every == 0:
            self.snapshot()

    def snapshot(self) -> None:
        if self.every is None:
            return
        flat = torch.nn.utils.parameters_to_vector([p.detach() for p in self.params])
        self.steps.append(self.step)
        self.rows.append(flat.float().cpu().numpy())

    def take(self) -> tuple[list[int], list[Any]]:
        steps, rows = self.steps, self.rows
        self.steps, self.rows = [], []
        return steps, rows

    def close(self) -> None:
        self._handle.remove()


def runner_for_run(run_dir: Path, components: Components, reporter: Reporter | None = None) -> Runner:
    """A runner over an existing run folder, rebuilt from the resolved spec stored in its run.h5.

    For analysis after the fact (the loss landscape): the same data, poisons (from the cache),
    task and model as the run, with nothing written to the run folder.
    """
    run_dir = Path(run_dir)
    store = RunStore(run_dir / RUN_FILE)
    if not store.path.exists() or not store.readable():
        raise RunStateError(f"{store.path}: no readable run file")
    resolved = json.loads(store.root_attrs()["spec"])
    spec = Spec.model_validate(resolved)
    runner = Runner(LoadedSpec(spec, SpecSource(store.path, resolved)), components,
                    output_root=run_dir.parent, reporter=reporter)
    runner.run_dir = run_dir
    runner.store = store
    runner.data = runner.load_data()
    runner.task = runner._build("task", spec.task)
    return runner


def entries_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ENTRIES_DIR
