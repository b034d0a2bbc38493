"""The `none` defence: ordinary training. Real defences come from their own plugin."""

from __future__ import annotations

from harness.defence import Defence
from harness.hookspecs import hookimpl
from harness.records import DefenceRecord, NoParams


class NoDefence(Defence):
    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="none", factory=NoDefence, params=NoParams,
            description="no defence: the training recipe as the spec gives it",
        )
    ]
