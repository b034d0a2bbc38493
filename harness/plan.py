"""The arm plan: which models a spec trains, in which order.

Every view of a run (report, landscape, submission checks) and every executor asks this module,
never the runner, what a spec's arms are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import SpecError
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


def select_arms(planned: Sequence[Arm], asked: Sequence[str], option: str = "--arms") -> list[Arm]:
    """The planned arms `asked` names (arm ids, poison keys or defence keys), in plan order, with
    every seed's clean reference: β and the UD denominator of each arm come from it, so no arm
    can be scored without it. Nothing asked: every planned arm.

    `harness eval --arms` trains a part of a run this way (the rest stays planned: the same
    command without it completes the run), `harness sal-agreement --arms` measures a part.
    """
    if not asked:
        return list(planned)
    wanted = set(asked)

    def named(arm: Arm) -> bool:
        return bool(wanted & {arm.id, arm.poison_key, arm.defence_key})

    unknown = sorted(
        w for w in wanted if not any(w in (a.id, a.poison_key, a.defence_key) for a in planned)
    )
    if unknown:
        raise SpecError(
            f"{option}: {', '.join(unknown)} is not an arm, poison or defence of this run (arms: "
            + ", ".join(arm.id for arm in planned)
            + ")"
        )
    return [arm for arm in planned if named(arm) or arm.is_clean_reference]


def find_arm(spec: Spec, arm_id_: str) -> Arm:
    """The planned arm with this id; KeyError when the spec plans none."""
    for arm in plan_arms(spec):
        if arm.id == arm_id_:
            return arm
    raise KeyError(arm_id_)
