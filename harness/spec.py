"""The spec file's schema: what a researcher declares to run an evaluation.

Every model forbids unknown fields, so a misspelt key is an error rather than a silently ignored
setting. Component parameters (`params:`) are checked in a second stage, against the plugin's
own `Params` model, by `harness.specfile.load_spec`; what needs the built components (the data,
the model, the plugins' constructors) is checked by `harness.preflight`.

Every number is range-checked here, so that `harness validate` refuses what would break a run
later: integers are integers (`epochs: true` is not 1; `Count`), real numbers are finite and fit
the float32 arithmetic torch trains in (`Real`: no `.inf`, no `1e300`), and seeds stay inside
what every random generator accepts once the harness derives its streams from them (`Seed`).
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.names import ARM_ID_SEPARATOR, CLEAN, COMPONENT_NAME, SLUG, UNDEFENDED, arm_id

#: the largest float32: a larger learning rate or weight overflows torch's arithmetic
MAX_REAL = 3.4e38
#: seeds are below 2**32: NumPy's and scikit-learn's generators take no more, and the streams
#: the harness derives from a seed (seed × 1,000,003 + salt) then stay far inside the 64 bits
#: a torch.Generator takes
SEED_LIMIT = 2**32

#: an integer, never a boolean or a float (`epochs: true` is refused, not read as 1)
Count = Annotated[int, Strict()]
#: a finite real number that fits float32; integers are accepted, booleans are not
Real = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-MAX_REAL, le=MAX_REAL)]
Seed = Annotated[int, Strict(), Field(ge=0, lt=SEED_LIMIT)]


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _name_or_mapping(value: Any) -> Any:
    """`backbone: small-cnn` is shorthand for `backbone: {name: small-cnn}`."""
    return {"name": value} if isinstance(value, str) else value


class ComponentRef(Closed):
    name: str = Field(pattern=COMPONENT_NAME, description="registered component name")
    params: dict[str, Any] = Field(
        default_factory=dict, description="checked against the plugin's Params"
    )


class ArmComponentRef(ComponentRef):
    label: str | None = Field(
        default=None,
        pattern=SLUG,
        description="name of this arm in tables and file names; defaults to the component name",
    )

    @property
    def key(self) -> str:
        return self.label or self.name.replace(":", "-")


class PoisonRef(ArmComponentRef):
    crafting_task: str | None = Field(
        default=None,
        description="the task whose loss the poison minimises (poisons that declare `task_aware`): a label "
        "of `tasks`, 'all' for the weighted sum of every task in `tasks` (the paper's EM(All)), or the name "
        "of any registered task head; unset: the trained task(s)",
    )


class TaskRef(ComponentRef):
    label: str | None = Field(
        default=None,
        pattern=SLUG,
        description="key of this task in files and tables; defaults to the task name",
    )
    weight: Real = Field(
        default=1.0, gt=0, description="weight of this task's loss in the sum trained"
    )

    @property
    def key(self) -> str:
        return self.label or self.name.replace(":", "-")


Component = Annotated[ComponentRef, BeforeValidator(_name_or_mapping)]
ArmComponent = Annotated[ArmComponentRef, BeforeValidator(_name_or_mapping)]
PoisonComponent = Annotated[PoisonRef, BeforeValidator(_name_or_mapping)]
TaskComponent = Annotated[TaskRef, BeforeValidator(_name_or_mapping)]


class SubsetSpec(Closed):
    train: Count | None = Field(
        default=None, gt=0, description="training samples kept (stratified)"
    )
    test: Count | None = Field(default=None, gt=0, description="test samples kept (stratified)")
    seed: Seed = Field(default=0, description="seed of the subset draw")


class DataSpec(ComponentRef):
    subset: SubsetSpec = Field(default_factory=SubsetSpec)


class OptimizerSpec(Closed):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: Real = Field(default=0.1, gt=0)
    momentum: Real = Field(default=0.9, ge=0, lt=1)
    weight_decay: Real = Field(default=5e-4, ge=0)
    nesterov: bool = False


class ScheduleSpec(Closed):
    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[Annotated[Count, Field(gt=0)]] = Field(default_factory=list)
    gamma: Real = Field(default=0.1, gt=0, le=1)


class AugmentationSpec(Closed):
    name: Literal["crop", "flip"]
    padding: Count = Field(
        default=4, ge=0, le=1024, description="crop only: zero padding before the random crop"
    )
    p: Real = Field(default=0.5, ge=0, le=1, description="flip only: probability")


Augmentation = Annotated[AugmentationSpec, BeforeValidator(_name_or_mapping)]


class TrainingSpec(Closed):
    epochs: Count = Field(gt=0, le=10_000)
    batch_size: Count = Field(default=128, gt=0, le=2**31 - 1)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    augmentation: list[Augmentation] = Field(default_factory=list)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    amp: bool = Field(
        default=False, description="mixed precision (bfloat16/float16 autocast on CUDA)"
    )
    grad_clip: Real | None = Field(default=None, gt=0)
    poison_storage: Literal["float32", "uint8"] = Field(
        default="float32",
        description="how a poisoned training set is held: float32 as generated, or uint8 (4x smaller; "
        "each value rounded to the nearest k/255, at most 0.5/255 away; an L-inf budget that is a whole "
        "number of 255ths stays within itself). Part of the track when uint8",
    )

    @model_serializer(mode="wrap")
    def _omit_float32_storage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after the first runs: left out at its default, so older runs keep hash and track
        data = handler(self)
        if self.poison_storage == "float32":
            data.pop("poison_storage", None)
        return data


class SALSpec(Closed):
    estimator: Component = Field(
        default_factory=lambda: ComponentRef(name="reference"),
        description="the SAL estimator (`harness plugins` lists them): reference, the paper's code "
        "(relative L2 ball, SGD ascent and descent, max of the two), or a cheaper one measured "
        "against it (docs/sal.md). Part of the track",
    )
    epsilon: Real = Field(
        default=0.05, gt=0, description="ball radius relative to the layer's L2 norm"
    )
    iterations: Count = Field(
        default=10,
        gt=0,
        le=1_000_000,
        description="outer iterations: a pass of SGD steps, then projection",
    )
    inner_lr: Real = Field(default=0.1, gt=0)
    probe_size: Count = Field(
        default=256,
        gt=0,
        le=2**31 - 1,
        description="fixed probe subset of the arm's own training data",
    )
    probe_batch_size: Count = Field(default=256, gt=0, le=2**31 - 1)
    probe_augment: bool = Field(
        default=False,
        description="apply the training augmentation to the probe, as the reference does",
    )
    base_loss: Literal["eval", "train-running-mean"] = Field(
        default="eval",
        description="eval: base loss in eval mode on the probe (consistent); "
        "train-running-mean: the epoch's running training loss, as the reference code does",
    )

    amp: bool = Field(
        default=False,
        description="measure SAL under the training's autocast (bf16/fp16) when training.amp is "
        "set; off: SAL in float32, as the paper's reference computes it. Part of the track when on",
    )

    @model_serializer(mode="wrap")
    def _omit_float32_sal(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # added after the first runs: left out at its default, so older runs keep hash and track
        data = handler(self)
        if not self.amp:
            data.pop("amp", None)
        return data

    @field_serializer("estimator")
    def _estimator_as_written(self, ref: ComponentRef) -> Any:
        # the name alone when the estimator runs with its defaults (resolution keeps only
        # params that differ from them): the form of every spec written before estimators were
        # plugins, so those keep their hash and track
        return ref.name if not ref.params else {"name": ref.name, "params": ref.params}


class LandscapeSpec(Closed):
    """Saving the parameter trajectory for the loss-landscape views (paper §3.1, Appendix A.4).

    Off by default: a snapshot is the whole flattened model, so the file grows by
    4 × parameters bytes per snapshot. It does not change what is trained or scored; it only
    adds `arms/<arm>/trajectory` to the run file for `harness landscape`.
    """

    enabled: bool = Field(
        default=False, description="save the flattened trainable parameters during training"
    )
    every_steps: Count = Field(
        default=5,
        gt=0,
        description="a snapshot every k optimisation steps (and at step 0), as the paper does",
    )
    arms: list[str] | None = Field(
        default=None,
        description="arms to trace: 'clean', a poison label (every defence and seed of it) or a full arm id "
        "such as 'clean__none__s0'; null traces every arm",
    )
    max_params: Count = Field(
        default=2_000_000,
        gt=0,
        description="refuse to trace a model with more trainable parameters than this",
    )


class ExecutionSpec(Closed):
    """Where and how the arms run. Never part of a result's identity: left out of the resolved
    spec, its hash and the track, so the same spec gives the same entries on any executor."""

    executor: Literal["local", "ray"] = Field(
        default="local",
        description="local: every arm in this process, one after another; ray: each poison generation and "
        "each arm a Ray task",
    )
    address: str | None = Field(
        default=None,
        description="Ray cluster address as Ray spells it (host:port, ray://host:port, auto); unset: "
        "RAY_ADDRESS, else a local Ray instance started for the run",
    )
    cpus_per_arm: float = Field(default=1, gt=0, description="CPUs Ray grants each arm")
    gpus_per_arm: float = Field(default=0, ge=0, description="GPUs Ray grants each arm")
    cpus_per_poison: float | None = Field(
        default=None, gt=0, description="CPUs per poison generation (unset: cpus_per_arm)"
    )
    gpus_per_poison: float | None = Field(
        default=None, ge=0, description="GPUs per poison generation (unset: gpus_per_arm)"
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="attempts per arm and per poison when a worker or node is lost (each attempt "
        "resumes from the arm's last checkpoint)",
    )
    memory_budget_mb: float | None = Field(
        default=None,
        gt=0,
        description="largest split (as stored, e.g. uint8 images) held in memory; a larger one is written "
        "once into the cache and streamed from disk; unset: every split in memory",
    )
    data_workers: int = Field(
        default=2, ge=0, description="worker processes reading streamed batches ahead of training"
    )
    save_snapshots: Count = Field(
        default=0,
        ge=0,
        le=10_000,
        description="keep the model after every k-th epoch in the run folder's snapshots/ for "
        "`harness sal-agreement`; 0: none",
    )


class Spec(Closed):
    name: str = Field(pattern=SLUG, description="run name; the run folder is <output>/<name>")
    description: str = ""
    data: Annotated[DataSpec, BeforeValidator(_name_or_mapping)]
    task: Component = Field(default_factory=lambda: ComponentRef(name="classification"))
    tasks: list[TaskComponent] = Field(
        default_factory=list,
        description="multi-task training: one backbone, one head per entry, the weighted sum of their losses; "
        "SAL is also recorded per task over the backbone's layers. Give either `task` or `tasks` (with `tasks`, "
        "`task` keeps its default and is not used)",
    )
    backbone: Component
    training: TrainingSpec
    sal: SALSpec = Field(default_factory=SALSpec)
    poisons: list[PoisonComponent] = Field(default_factory=list)
    defences: list[ArmComponent] = Field(
        default_factory=lambda: [ArmComponentRef(name="none")],
        description="the undefended arms (`none`) are always run; list more to add defended arms",
    )
    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description=f"each seed repeats every arm; 0 <= seed < {SEED_LIMIT} (2**32)",
    )
    landscape: LandscapeSpec = Field(default_factory=LandscapeSpec)
    trackers: list[Component] = Field(
        default_factory=list,
        description="experiment trackers that watch the run (tensorboard, mlflow, ...); they change "
        "nothing that is trained or scored and are not part of the spec hash",
    )
    execution: ExecutionSpec = Field(
        default_factory=ExecutionSpec,
        exclude=True,
        description="where and how the arms run (executor, resources, memory budget); never part of the "
        "resolved spec, its hash or the track; `harness eval` options override it",
    )
    output: str = Field(
        default="runs", description="relative folder for runs; no '..', not absolute"
    )

    @field_validator("output")
    @classmethod
    def _relative_output(cls, value: str) -> str:
        for path in (PurePosixPath(value), PureWindowsPath(value)):
            if path.is_absolute() or path.anchor or ".." in path.parts:
                raise ValueError("must be a relative path inside the working folder, without '..'")
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be unique")
        return value

    @field_validator("poisons", "defences")
    @classmethod
    def _distinct_arm_labels(
        cls, value: list[ArmComponentRef], info: ValidationInfo
    ) -> list[ArmComponentRef]:
        """Arm labels name files in the run folder and rows in tables: each must be distinct.

        The error's context carries `at`, the entry's location under the list, so that the spec
        file reader can point at the offending line rather than at the whole list.
        """
        field = info.field_name
        seen: dict[str, int] = {}
        for i, ref in enumerate(value):
            if field == "poisons" and ref.key == CLEAN:
                raise _arm_error(
                    i,
                    "the label 'clean' is reserved for the clean reference arm; "
                    "choose another `label`",
                )
            if field == "defences" and ref.key == UNDEFENDED and ref.name != UNDEFENDED:
                raise _arm_error(
                    i,
                    "the label 'none' is reserved for the undefended arms; choose another `label`",
                )
            if ARM_ID_SEPARATOR in ref.key:
                raise _arm_error(
                    i,
                    f"the label {ref.key!r} contains '__', which separates the parts of "
                    "arm ids; use a single '_' or '-'",
                )
            if ref.key in seen:
                raise _arm_error(
                    i,
                    f"the label {ref.key!r} is already used by {field}.{seen[ref.key]}; "
                    "give each entry a distinct `label`",
                )
            seen[ref.key] = i
        if field == "defences" and not any(ref.name == UNDEFENDED for ref in value):
            value = [ArmComponentRef(name=UNDEFENDED), *value]
        return value

    @field_validator("tasks")
    @classmethod
    def _distinct_task_labels(cls, value: list[TaskRef]) -> list[TaskRef]:
        seen: dict[str, int] = {}
        for i, ref in enumerate(value):
            if ref.key == "all":
                raise _arm_error(
                    i,
                    "the label 'all' is reserved for the sum of every task; choose another `label`",
                )
            if ref.key in seen:
                raise _arm_error(
                    i,
                    f"the label {ref.key!r} is already used by tasks.{seen[ref.key]}; "
                    "give each task a distinct `label`",
                )
            seen[ref.key] = i
        return value

    @model_validator(mode="after")
    def _task_or_tasks(self) -> Spec:
        # the resolved spec stored in a run holds `task` at its default beside `tasks`: accept that
        if (
            self.tasks
            and "task" in self.model_fields_set
            and self.task != ComponentRef(name="classification")
        ):
            raise PydanticCustomError(
                "task_or_tasks",
                "{reason}",
                {
                    "reason": "give either `task` (one task) or `tasks` (a multi-task model), not both",
                    "at": ("task",),
                },
            )
        for i, poison in enumerate(self.poisons):
            if poison.crafting_task == "all" and not self.tasks:
                raise PydanticCustomError(
                    "crafting_task",
                    "{reason}",
                    {
                        "reason": "crafting_task 'all' means every task of `tasks`, and this spec has no `tasks`",
                        "at": ("poisons", i, "crafting_task"),
                    },
                )
        return self

    @model_validator(mode="after")
    def _known_landscape_arms(self) -> Spec:
        """A misspelt arm under `landscape.arms` would silently trace nothing: refuse it."""
        if self.landscape.arms is None:
            return self
        poisons = [CLEAN, *(p.key for p in self.poisons)]
        ids = {arm_id(p, d.key, s) for p in poisons for d in self.defences for s in self.seeds}
        for i, name in enumerate(self.landscape.arms):
            if name not in poisons and name not in ids:
                raise PydanticCustomError(
                    "arm_label",
                    "{reason}",
                    {
                        "reason": f"no arm {name!r}; use 'clean', a poison label "
                        f"({', '.join(poisons[1:]) or 'none'}) or an arm id such as "
                        f"{sorted(ids)[0]!r}",
                        "at": ("landscape", "arms", i),
                    },
                )
        return self

    def traces(self, arm_id: str, poison_key: str) -> bool:
        """Whether the runner saves the parameter trajectory of this arm."""
        ls = self.landscape
        return ls.enabled and (ls.arms is None or arm_id in ls.arms or poison_key in ls.arms)


def _arm_error(index: int, reason: str) -> PydanticCustomError:
    return PydanticCustomError("arm_label", "{reason}", {"reason": reason, "at": (index, "label")})
