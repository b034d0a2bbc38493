"""The `none` defence: ordinary training, the reference every defended arm is compared with."""

from __future__ import annotations

from harness.defence import Defence
from harness.records import DefenceRecord, NoParams


class NoDefence(Defence):
    """`Defence()` unchanged: every hook point leaves training as the spec gives it."""

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params


def records() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="none", factory=NoDefence, params=NoParams,
            description="no defence: the training recipe as the spec gives it",
        )
    ]
