"""What the long generators need to resume through `ctx.checkpoint` (see `harness.api.Poison`).

A resumed generation must give the same poison, bit for bit, as one that ran through, so its
state holds every source of what comes next: weights and optimizer (their `state_dict`s), the
step, each `torch.Generator`'s state, the global RNG (forked by `seeded`, so a third-party layer
drawing from it resumes too) and, for the batch stream, the batches left in the current pass.

This lives apart from `_surrogate.py` on purpose: a poison's cache key covers the code of every
module of this package it imports, so helpers added there would make every cached EM, TAP,
HYPO and DeepConfuse poison miss; only the generators that resume import this module.

This module registers nothing (its name starts with an underscore).
"""

from __future__ import annotations

from typing import Any

import torch

from ._surrogate import BatchStream


class ResumableStream(BatchStream):
    """A `BatchStream` whose position (the batches left in this pass, the order's generator)
    can be saved and restored."""

    def state(self) -> dict[str, Any]:
        return {
            "pending": [t.clone() for t in self._pending],
            "generator": None if self.generator is None else self.generator.get_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._pending = [t.clone() for t in state["pending"]]
        if self.generator is not None:
            self.generator.set_state(state["generator"])


def generator_states(
    generators: dict[str, torch.Generator], device: torch.device
) -> dict[str, Any]:
    """Every named generator's state, and the global RNG's ("torch"; "cuda" on a GPU)."""
    states = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_generators(
    generators: dict[str, torch.Generator], states: dict[str, Any], device: torch.device
) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
    for name, g in generators.items():
        g.set_state(states[name])
