"""Each arm's training inputs: the clean data, or a poison's protected version of it.

A poison is generated once per (seed, poison) and shared by every arm that trains on it (each
defence), in memory within a process and across runs through the disk cache
(`harness.poison_cache`), keyed by everything that determines it. The generator receives a
`PoisonContext` whose models and loss are those of the crafting task.

What a generator returns is checked before any arm trains on it (`check_output`), from the
cache too, and a violation stops the run with `PoisonContractError` naming the plugin:

- the shape of the training inputs, every value finite;
- every value inside the data's value range (`(0, 1)` for images; feature data has none);
- the perturbation within the budget the plugin's record declares (`PoisonRecord.budget`);
- the clean data untouched: the generator is handed a copy of the data set, which is compared
  with the original afterwards, so a generator that changes labels, targets or the clean inputs
  in place (which would corrupt every later arm, and make a warm cache give other results than
  a cold one) is named instead.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from harness.armconfig import component_info, dataset_info
from harness.assembly import Assembly
from harness.data import DataBundle, Split
from harness.errors import PoisonContractError
from harness.plan import Arm
from harness.poison import GenerationCheckpoint, Poison, PoisonContext
from harness.poison_cache import PoisonCache, data_fingerprint, poison_key
from harness.progress import Reporter, duration
from harness.records import PoisonRecord
from harness.registry import Registered
from harness.spec import ComponentRef, PoisonRef

#: slack for float rounding when checking the value range and the budget
TOLERANCE = 1e-5


class PoisonedInputs:
    def __init__(
        self, assembly: Assembly, cache: PoisonCache | None = None, reporter: Reporter | None = None
    ) -> None:
        self.assembly = assembly
        self.cache = cache if cache is not None else PoisonCache()
        self.reporter = reporter or Reporter()
        self._made: dict[tuple[int, str], Tensor] = {}

    def for_arm(self, arm: Arm) -> Tensor:
        """The arm's training inputs: clean, or the poison's (from the disk cache when it has them)."""
        data = self.assembly.data
        if arm.poison is None:
            return data.train.x
        key = (arm.seed, arm.poison.key)
        if key not in self._made:
            self._made[key] = self._make(arm)
        return self._made[key]

    def cache_key(self, arm: Arm) -> str:
        """The disk cache's key of the arm's poison (everything that determines it)."""
        assert arm.poison is not None
        assembly, ref = self.assembly, arm.poison
        data, components = assembly.data, assembly.components
        dataset = dataset_info(components, assembly.spec)
        info = component_info(components, "poison", ref)
        _, craft_label = assembly.crafting_tasks(ref)
        if ref.crafting_task is not None:
            info["crafting_task"] = (
                craft_label  # absent otherwise, so older cache entries still match
            )
        train = data.train
        return poison_key(
            info, dataset, data_fingerprint(train.x, train.y, train.targets), arm.seed
        )

    def _make(self, arm: Arm) -> Tensor:
        assert arm.poison is not None
        assembly, ref = self.assembly, arm.poison
        data, components = assembly.data, assembly.components
        registered = components.get("poison", ref.name)
        info = component_info(components, "poison", ref)
        craft, craft_label = assembly.crafting_tasks(ref)
        train = data.train
        cache_key = self.cache_key(arm)
        poison: Poison = components.build("poison", ref.name, ref.params)
        cacheable = poison.cacheable and info.get("code") is not None
        cached = None
        if cacheable:
            cached = self.cache.load(
                cache_key,
                tuple(train.x.shape),
                on_damaged=lambda path, why: self.reporter.stage(
                    f"cached poison {path} is damaged ({why}): deleted, generating it again"
                ),
            )
        if cached is not None:
            self.reporter.stage(f"poison {ref.key} (seed {arm.seed}) from the cache")
            check_output(cached[0], data, registered, ref)
            return cached[0]
        self.reporter.stage(f"generating poison {ref.key} (seed {arm.seed})")
        meta = {
            "poison": ref.name,
            "label": ref.key,
            "params": ref.params,
            "version": registered.version,
            "seed": arm.seed,
            "dataset": assembly.spec.data.name,
            "shape": list(train.x.shape),
        }
        checkpoint = (
            self.cache.checkpoint(
                cache_key,
                meta,
                on_resume=lambda age: self.reporter.stage(
                    f"poison {ref.key} (seed {arm.seed}): resuming its generation from the "
                    f"checkpoint saved {duration(age)} ago"
                ),
                on_damaged=lambda path, why: self.reporter.stage(
                    f"checkpoint {path} is damaged ({why}): deleted, generating from the start"
                ),
            )
            if cacheable
            else GenerationCheckpoint()
        )
        handed = copy_data(data)
        ctx = PoisonContext(
            seed=arm.seed,
            device=assembly.device,
            data=handed,
            build_model=lambda name, params: assembly.build_model(
                ComponentRef(name=name, params=params or {}), craft
            ),
            task_loss=craft.loss,
            cache_dir=self.cache.root,
            progress=lambda message, fraction: self.reporter.poison_progress(
                ref.key, message, fraction
            ),
            targets=craft.targets(handed.train),
            classification=craft.classification,
            crafting_task=craft_label,
            checkpoint=checkpoint,
        )
        started = time.perf_counter()
        x = poison.generate(handed, ctx)
        seconds = checkpoint.earlier_seconds + time.perf_counter() - started  # every attempt
        try:
            check_untouched(data, handed, registered, ref)
            if not isinstance(x, Tensor) or tuple(x.shape) != tuple(train.x.shape):
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise PoisonContractError(
                    f"{who(registered, ref)} returned inputs of shape {shape}, "
                    f"expected {tuple(train.x.shape)}"
                )
            x = x.detach().to(torch.float32).cpu()
            check_output(x, data, registered, ref)
        except PoisonContractError:
            checkpoint.discard()  # resuming would only give the same refused result
            raise
        if cacheable:
            self.cache.save(cache_key, x, {"seconds": seconds, **meta})
        checkpoint.discard()  # only once the poison is stored: a kill before loses nothing
        return x


def who(registered: Registered, ref: PoisonRef) -> str:
    return (
        f"poison {ref.name!r} (label {ref.key}; plugin {registered.plugin}, "
        f"{registered.distribution} {registered.version})"
    )


def copy_data(data: DataBundle) -> DataBundle:
    """The data set as a generator gets it: its own copy, so the original cannot be changed."""

    def split(s: Split) -> Split:
        return Split(
            s.x.clone(),
            s.y.clone(),
            None if s.indices is None else s.indices.clone(),
            {k: v.clone() for k, v in s.targets.items()},
        )

    return DataBundle(
        data.name,
        split(data.train),
        split(data.test),
        list(data.classes),
        data.value_range,
        dict(data.metadata),
    )


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit-for-bit equal (NaN equals NaN), as a changed value would not be."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.is_floating_point:
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))
    return torch.equal(a, b)


def check_untouched(
    original: DataBundle, handed: DataBundle, registered: Registered, ref: PoisonRef
) -> None:
    """Refuse a generator that changed the data it was handed (labels, targets, clean inputs)."""
    changed = []
    for name in ("train", "test"):
        before, after = getattr(original, name), getattr(handed, name)
        if not _same(before.y, after.y):
            changed.append(f"data.{name}.y (the labels)")
        if not _same(before.x, after.x):
            changed.append(f"data.{name}.x (the clean inputs)")
        for key, value in before.targets.items():
            if key not in after.targets or not _same(value, after.targets[key]):
                changed.append(f"data.{name}.targets[{key!r}]")
    if changed:
        raise PoisonContractError(
            f"{who(registered, ref)} changed {', '.join(changed)} in place. A poison returns "
            "new inputs and never modifies the data it is handed (labels never change); the "
            "run stopped so that no arm trains on changed data"
        )


def check_output(x: Tensor, data: DataBundle, registered: Registered, ref: PoisonRef) -> None:
    """Refuse poisoned inputs that are not finite, leave the value range, or exceed the budget."""
    name = who(registered, ref)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise PoisonContractError(
            f"{name} returned {bad} value(s) that are NaN or infinite; a poison must return "
            "finite inputs (the run stopped: training on them would score as a perfect poison)"
        )
    if data.value_range is not None:
        lo, hi = data.value_range
        slack = TOLERANCE * max(1.0, hi - lo)
        low, high = float(x.min()), float(x.max())
        if low < lo - slack or high > hi + slack:
            raise PoisonContractError(
                f"{name} returned values in [{low:.6g}, {high:.6g}], outside the data's value "
                f"range [{lo:g}, {hi:g}]; finish the generator with clamp_to_range(x, "
                "data.value_range)"
            )
    record: PoisonRecord = registered.record  # type: ignore[assignment]
    budget = getattr(record, "budget", None)
    if budget is None:
        return
    params = record.params.model_validate(ref.params)
    limit = budget.limit(params)
    delta = (x - data.train.x.to(x.dtype)).reshape(len(x), -1)
    size = delta.abs().amax(dim=1) if budget.norm == "linf" else delta.norm(dim=1)
    largest = float(size.max()) if len(size) else 0.0
    if largest > limit * (1 + TOLERANCE) + TOLERANCE * 1e-2:
        over = int((size > limit * (1 + TOLERANCE) + TOLERANCE * 1e-2).sum())
        raise PoisonContractError(
            f"{name} changed {over} sample(s) by more than its declared {budget.norm} budget "
            f"of {limit:g} (largest change {largest:.6g})"
        )
