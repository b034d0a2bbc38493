"""Each arm's training inputs: the clean data, or a poison's protected version of it.

A poison is generated once per (seed, poison) and shared by every arm that trains on it (each
defence), in memory within a process and across runs through the disk cache
(`harness.poison_cache`), keyed by everything that determines it. The generator receives a
`PoisonContext` whose models and loss are those of the crafting task.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from harness.armconfig import component_info, dataset_info
from harness.assembly import Assembly
from harness.errors import PluginError
from harness.plan import Arm
from harness.poison import Poison, PoisonContext
from harness.poison_cache import PoisonCache, data_fingerprint, poison_key
from harness.progress import Reporter
from harness.spec import ComponentRef


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
        return poison_key(info, dataset, data_fingerprint(data.train.x, data.train.y), arm.seed)

    def _make(self, arm: Arm) -> Tensor:
        assert arm.poison is not None
        assembly, ref = self.assembly, arm.poison
        data, components = assembly.data, assembly.components
        craft, craft_label = assembly.crafting_tasks(ref)
        cache_key = self.cache_key(arm)
        poison: Poison = components.build("poison", ref.name, ref.params)
        cached = self.cache.load(cache_key, tuple(data.train.x.shape)) if poison.cacheable else None
        if cached is not None:
            self.reporter.stage(f"poison {ref.key} (seed {arm.seed}) from the cache")
            return cached[0]
        self.reporter.stage(f"generating poison {ref.key} (seed {arm.seed})")
        ctx = PoisonContext(
            seed=arm.seed,
            device=assembly.device,
            data=data,
            build_model=lambda name, params: assembly.build_model(
                ComponentRef(name=name, params=params or {}), craft
            ),
            task_loss=craft.loss,
            cache_dir=self.cache.root,
            progress=lambda message, fraction: self.reporter.poison_progress(
                ref.key, message, fraction
            ),
            targets=craft.targets(data.train),
            classification=craft.classification,
            crafting_task=craft_label,
        )
        started = time.perf_counter()
        x = poison.generate(data, ctx)
        seconds = time.perf_counter() - started
        if not isinstance(x, Tensor) or tuple(x.shape) != tuple(data.train.x.shape):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise PluginError(
                f"poison {ref.name!r} returned inputs of shape {shape}, "
                f"expected {tuple(data.train.x.shape)}"
            )
        x = x.detach().to(torch.float32).cpu()
        if poison.cacheable:
            self.cache.save(cache_key, x, {"seconds": seconds, "poison": ref.name})
        return x
