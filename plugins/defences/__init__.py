"""First-party defences, one module per method or family.

Every submodule that defines `records()` contributes its DefenceRecords, so adding a defence is
adding a module; nothing here needs to change. Modules whose names start with an underscore hold
shared helpers and register nothing.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.hookspecs import hookimpl
from harness.records import DefenceRecord


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    found: list[DefenceRecord] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "records"):
            found.extend(module.records())
    return found
