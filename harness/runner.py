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
from harness.backbone import MultiTaskModel, TaskModel, backbone_layers, scored_layers
from harness.data import DataBundle, Split, stratified_indices, subset, take_targets
from harness.defence import Defence
from harness.entries import (
    ENTRIES_DIR,
    RUN_FILE,
    Entry,
    arm_id,
    compute_entries,
    write_entries,
)
from harness.errors import DataError, PluginError, RunStateError, SpecError
from harness.multitask import MultiTask
from harness.pluginmanager import Components
from harness.poison import PoisonContext
from harness.poison_cache import PoisonCache, data_fingerprint, poison_key
from harness.progress import Reporter
from harness.sal import SALSettings, compute_sal
from harness.spec import ArmComponentRef, ComponentRef, PoisonRef, Spec
from harness.specfile import LoadedSpec, SpecSource
from harness.store import EpochRow, RunStore
from harness.sysinfo import git_revision, hardware, harness_version
from harness.task import TaskHead
from harness.training import (
    augment,
    autocast_for,
    batch_order,
    evaluate_all,
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


def build_component(components: Components, kind: str, ref: ComponentRef, *args: Any, **kwargs: Any) -> Any:
    """Build a registered component from a spec reference (a family record also gets its variant)."""
    registered = components.get(kind, ref.name)
    if registered.variant is not None:
        kwargs["variant"] = registered.variant
    record = registered.record
    return record.factory(record.params.model_validate(ref.params), *args, **kwargs)


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
        self.task_layers: list[str] = []  # multi-task: the shared backbone's layers, per-task SAL

    # --- components ------------------------------------------------------------------------
    def _build(self, kind: str, ref: ComponentRef, *args: Any, **kwargs: Any) -> Any:
        return build_component(self.components, kind, ref, *args, **kwargs)

    def build_model(self, backbone_name: str | None = None, backbone_params: dict | None = None,
                    task: TaskHead | None = None) -> TaskModel | MultiTaskModel:
        """The backbone with the head(s) of `task` (default: the trained task or tasks) on top."""
        assert self.data is not None and self.task is not None
        task = task or self.task
        ref = self.spec.backbone if backbone_name is None else ComponentRef(name=backbone_name, params=backbone_params or {})
        try:
            backbone = self._build("backbone", ref, self.data.input_shape)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{self.loaded.source.where(('backbone', 'name'))}: backbone {ref.name!r} "
                            f"(inputs of shape {self.data.input_shape}): {exc}") from None
        heads = task.heads if isinstance(task, MultiTask) else {"": task}
        dense = [label or type(head).__name__ for label, head in heads.items() if head.features == "map"]
        if dense and not backbone.has_feature_map:
            raise SpecError(f"{self.loaded.source.where(('backbone', 'name'))}: backbone {ref.name!r} gives no "
                            f"feature map, which the dense task(s) {', '.join(dense)} need; use a convolutional "
                            "backbone (small-cnn, resnet18, timm:...)")
        if isinstance(task, MultiTask):
            return MultiTaskModel(
                backbone, {k: h.build(backbone.num_features, self.data) for k, h in task.heads.items()},
                {k: h.features for k, h in task.heads.items()},
            )
        return TaskModel(backbone, task.build(backbone.num_features, self.data), task.features)

    def build_task(self) -> TaskHead:
        """The trained task: one head, or a MultiTask over `tasks` with their weights."""
        if not self.spec.tasks:
            return self._build("task", self.spec.task)
        heads = {ref.key: self._build("task", ref) for ref in self.spec.tasks}
        return MultiTask(heads, {ref.key: ref.weight for ref in self.spec.tasks})

    def _check_task_data(self) -> None:
        """Refuse, before training, tasks the data cannot feed and settings dense targets break."""
        assert self.data is not None and self.task is not None
        heads = self.task.heads if isinstance(self.task, MultiTask) else {"": self.task}
        for i, head in enumerate(heads.values()):
            try:
                head.check_data(self.data)
            except ValueError as exc:
                loc = ("tasks", i, "name") if self.spec.tasks else ("task",)
                raise SpecError(f"{self.loaded.source.where(loc)}: {exc}") from None
        dense = [h for h in heads.values() if h.target != "class" and h.features == "map"]
        if dense and self.spec.training.augmentation:
            raise SpecError(
                f"{self.loaded.source.where(('training', 'augmentation'))}: training.augmentation: crop and "
                "flip move the pixels but not the dense targets (masks, depth, key points); set "
                "`augmentation: []` for dense tasks"
            )
        if any(h.target != "class" for h in heads.values()):
            for i, ref in enumerate(self.spec.defences):
                defence = self._build("defence", ref)
                if type(defence).transform_batch is not Defence.transform_batch:
                    raise SpecError(
                        f"{self.loaded.source.where(('defences', i, 'name'))}: defence {ref.name!r} mixes "
                        "images and class labels across a batch, which has no meaning for the dense or "
                        "multi-task targets of this spec"
                    )

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
        self.task = self.build_task()
        self._check_task_data()
        self._check_crafting_tasks()
        torch.manual_seed(self.spec.seeds[0])
        model = self.build_model()
        self.layers = scored_layers(model)
        self.task_layers = backbone_layers(self.layers) if isinstance(self.task, MultiTask) else []
        if not self.layers:
            raise SpecError(f"{self.loaded.source.where(('backbone',))}: the model has no Conv2d or Linear "
                            "layer for SAL to score")
        self._check_landscape(model)
        self._check_existing_run()

    @property
    def trained_task_label(self) -> str:
        """What entries call the trained task: its name, or 'all' for a multi-task model."""
        return "all" if self.spec.tasks else self.spec.task.name

    def crafting_task(self, ref: PoisonRef) -> tuple[TaskHead, str]:
        """The task whose loss a poison minimises, and its label in entries.

        Unset: the trained task(s). Otherwise a label of `tasks`, 'all' (their weighted sum), the
        trained task's name, or any registered task head, built with its default parameters.
        """
        assert self.task is not None and self.data is not None
        name = ref.crafting_task
        if name is None or name == "all":
            return self.task, self.trained_task_label
        if isinstance(self.task, MultiTask) and name in self.task.heads:
            return self.task.heads[name], name
        if not self.spec.tasks and name == self.spec.task.name:
            return self.task, name
        head = self._build("task", ComponentRef(name=name))
        head.check_data(self.data)
        return head, name

    def _check_crafting_tasks(self) -> None:
        for i, ref in enumerate(self.spec.poisons):
            if ref.crafting_task is None:
                continue
            where = self.loaded.source.where(("poisons", i, "crafting_task"))
            if not self.components.get("poison", ref.name).record.task_aware:
                raise SpecError(f"{where}: poisons.{i}.crafting_task: poison {ref.name!r} does not declare "
                                "`task_aware`, so it cannot be crafted against another task's loss")
            try:
                self.crafting_task(ref)
            except (ValueError, PluginError) as exc:
                raise SpecError(f"{where}: poisons.{i}.crafting_task: {exc}") from None

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
        if not self.store.path.exists() or not self.store.intact():
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
        info = _component_info(self.components, "poison", arm.poison)
        craft, craft_label = self.crafting_task(arm.poison)
        if arm.poison.crafting_task is not None:
            info["crafting_task"] = craft_label  # absent otherwise, so older cache entries still match
        cache_key = poison_key(info, dataset, data_fingerprint(self.data.train.x, self.data.train.y), arm.seed)
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
            build_model=lambda name, params: self.build_model(name, params, task=craft),
            task_loss=craft.loss,
            cache_dir=self.poison_cache.root,
            progress=lambda message, fraction: self.reporter.poison_progress(label, message, fraction),
            targets=craft.targets(self.data.train),
            classification=not isinstance(craft, MultiTask) and craft.target == "class",
            crafting_task=craft_label,
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
        config: dict[str, Any] = {
            "arm_id": arm.id,
            "seed": arm.seed,
            "poison_key": arm.poison_key,
            "defence_key": arm.defence_key,
            "poison": None if arm.poison is None else _component_info(self.components, "poison", arm.poison),
            "defence": _component_info(self.components, "defence", arm.defence),
            "task": {"metric_name": self.task.metric_name, "higher_is_better": self.task.higher_is_better},
            "evaluated_task": self.trained_task_label,
            "crafting_task": self._crafting_label(arm),
            "track": {
                "dataset": dataset,
                "task": _component_info(self.components, "task", spec.task),
                "backbone": _component_info(self.components, "backbone", spec.backbone),
                "training": spec.training.model_dump(mode="json"),
                "sal": spec.sal.model_dump(mode="json"),
            },
        }
        if isinstance(self.task, MultiTask):
            config["tasks"] = [
                {**_component_info(self.components, "task", ref), "label": ref.key, "weight": ref.weight,
                 "metric_name": self.task.heads[ref.key].metric_name,
                 "higher_is_better": self.task.heads[ref.key].higher_is_better}
                for ref in spec.tasks
            ]
            del config["track"]["task"]
            config["track"]["tasks"] = [{k: v for k, v in t.items() if k not in ("metric_name", "higher_is_better")}
                                        for t in config["tasks"]]
        return config

    def _crafting_label(self, arm: Arm) -> str | None:
        """The task a poison was crafted against; None for the clean arm and task-agnostic poisons."""
        if arm.poison is None or not self.components.get("poison", arm.poison.name).record.task_aware:
            return None
        name = arm.poison.crafting_task  # the label alone; no need to build the head for it
        return self.trained_task_label if name in (None, "all") else name

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
        self.store.init_arm(arm.id, state["config"], state["hardware"], state["layers"], state["epochs"],
                            state.get("tasks"), state.get("task_layers"))
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
            if isinstance(self.task, MultiTask):
                state["tasks"], state["task_layers"] = list(self.task.heads), self.task_layers
            self.store.init_arm(arm.id, state["config"], state["hardware"], self.layers, recipe.epochs,
                                state.get("tasks"), state.get("task_layers"))
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

        train = _on_device(self.data.train.with_inputs(train_x), self.device)
        test = _on_device(self.data.test, self.device)
        probe_idx = self.probe_indices(arm.seed)
        for epoch in range(done + 1, recipe.epochs + 1):
            t0 = time.perf_counter()
            train_loss = train_epoch(model, train, self.task, defence, recipe, optimizer, generator,
                                     self.device, epoch, self.data.num_classes, self.data.value_range, scaler)
            test_loss, metric = evaluate_all(model, test, self.task, max(recipe.batch_size, 256),
                                             self.device, recipe.amp)
            test_metric = metric.compute()
            t1 = time.perf_counter()
            sal = self.sal(model, arm, train, defence, probe_idx, epoch, train_loss)
            task_sal = self.task_sal(model, arm, train, defence, probe_idx, epoch)
            t2 = time.perf_counter()
            per_task: dict[str, float] = {}
            if isinstance(self.task, MultiTask):
                per_task = {f"test_metric.{k}": v for k, v in metric.compute_all().items()}
                per_task |= {f"test_loss.{k}": v for k, v in metric.losses().items()}
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            row = EpochRow(
                sal=sal.values, sal_ascent_loss=sal.ascent_losses, sal_descent_loss=sal.descent_losses,
                metrics={"train_loss": train_loss, "test_loss": test_loss, "test_metric": test_metric,
                         "sal_base_loss": sal.base_loss, "lr": lr,
                         "train_seconds": t1 - t0, "sal_seconds": t2 - t1, **per_task},
                task_sal=task_sal,
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

    def task_sal(self, model: MultiTaskModel, arm: Arm, train: Split, defence: Defence, probe_idx: Tensor,
                 epoch: int) -> dict[str, list[float]]:
        """Per-task SAL of a multi-task arm: each task's loss alone, over the backbone's layers.

        Same probe and same seeded randomness as the arm's SAL, so the tasks' vectors differ
        only by the loss; the base loss is the eval-mode loss (a running training loss exists
        for the summed loss only).
        """
        if not isinstance(self.task, MultiTask):
            return {}
        return {
            label: self.sal(model, arm, train, defence, probe_idx, epoch, None,
                            loss_fn=self.task.task_loss(label), layers=self.task_layers).values
            for label in self.task.heads
        }

    def sal(self, model: TaskModel | MultiTaskModel, arm: Arm, train: Split, defence: Defence, probe_idx: Tensor,
            epoch: int, train_loss: float | None, loss_fn=None, layers: list[str] | None = None):
        """SAL of every scored layer on the arm's fixed probe, with its own seeded randomness."""
        settings = self.spec.sal
        g = torch.Generator().manual_seed(arm.seed * 100_003 + epoch)
        x = defence.transform_images(train.x[probe_idx.to(train.x.device)], g)
        y = take_targets(self.task.targets(train), probe_idx)
        n, bs = len(x), settings.probe_batch_size

        def batches(order: list[Tensor], augmented: bool) -> list[tuple[Tensor, Tensor]]:
            out = []
            for idx in order:
                xb = x[idx.to(x.device)]
                if augmented:
                    xb = augment(xb, self.spec.training.augmentation, g)
                out.append((xb, take_targets(y, idx)))
            return out

        def train_batches(_: int) -> list[tuple[Tensor, Tensor]]:
            return batches(batch_order(n, bs, g, drop_last=True), settings.probe_augment)

        def eval_batches(_: int) -> list[tuple[Tensor, Tensor]]:
            order = batch_order(n, bs, g) if settings.probe_augment else list(torch.arange(n).split(bs))
            return batches(order, settings.probe_augment)

        fixed_eval = None if settings.probe_augment else eval_batches(0)
        return compute_sal(
            model, layers or self.layers, loss_fn or self.task.loss,
            SALSettings(settings.epsilon, settings.iterations, settings.inner_lr),
            train_batches=train_batches,
            eval_batches=(lambda _: fixed_eval) if fixed_eval is not None else eval_batches,
            base_loss=train_loss if settings.base_loss == "train-running-mean" and train_loss is not None else None,
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
    runner.task = runner.build_task()
    return runner


def _on_device(split: Split, device: torch.device) -> Split:
    return Split(split.x.to(device), split.y.to(device), split.indices,
                 {k: v.to(device) for k, v in split.targets.items()})


def entries_dir(run_dir: Path) -> Path:
    return Path(run_dir) / ENTRIES_DIR
