"""First-party poison generators, one module per method.

Every submodule that defines `records()` contributes its PoisonRecords, so adding a method is
adding a module; nothing here needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.hookspecs import hookimpl
from harness.records import PoisonRecord


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    found: list[PoisonRecord] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "records"):
            found.extend(module.records())
    return found
