"""The arm plan: which models a spec trains, in which order.

Every view of a run (report, landscape, submission checks) and every executor asks this module,
never the runner, what a spec's arms are.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.names import CLEAN, UNDEFENDED, arm_id
from harness.spec import ArmComponentRef, PoisonRef, Spec


@dataclass(frozen=True)
class Arm:
    """One model trained: a seed, the data (clean or one poison's) and a defence."""

    seed: int
    poison: PoisonRef | None
    defence: ArmComponentRef

    @property
    def poison_key(self) -> str:
        return CLEAN if self.poison is None else self.poison.key

    @property
    def defence_key(self) -> str:
        return self.defence.key

    @property
    def id(self) -> str:
        return arm_id(self.poison_key, self.defence_key, self.seed)

    @property
    def is_clean_reference(self) -> bool:
        """The undefended clean arm: β and the UD denominator of its seed come from it."""
        return self.poison is None and self.defence_key == UNDEFENDED


def plan_arms(spec: Spec) -> list[Arm]:
    """The clean reference first (β comes from it), then undefended poisons, then defences."""
    arms: list[Arm] = []
    none = next(d for d in spec.defences if d.name == UNDEFENDED)
    defended = [d for d in spec.defences if d is not none]
    for seed in spec.seeds:
        arms.append(Arm(seed, None, none))
        arms += [Arm(seed, p, none) for p in spec.poisons]
        for d in defended:
            arms.append(Arm(seed, None, d))
            arms += [Arm(seed, p, d) for p in spec.poisons]
    return arms


def find_arm(spec: Spec, arm_id_: str) -> Arm:
    """The planned arm with this id; KeyError when the spec plans none."""
    for arm in plan_arms(spec):
        if arm.id == arm_id_:
            return arm
    raise KeyError(arm_id_)
