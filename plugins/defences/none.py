"""The `none` defence: ordinary training, the reference every defended arm is compared with."""

from __future__ import annotations

from harness.api import Defence, DefenceRecord, NoParams, hookimpl


class NoDefence(Defence):
    """`Defence()` unchanged: every hook point leaves training as the spec gives it."""


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="none",
            factory=NoDefence,
            params=NoParams,
            description="no defence: the training recipe as the spec gives it",
        )
    ]
