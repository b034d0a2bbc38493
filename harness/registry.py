"""Registries of components by kind: typed records in, typed records out, no silent shadowing."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from harness.errors import DuplicateComponentError, UnknownComponentError
from harness.records import ComponentRecord


@dataclass(frozen=True)
class Registered:
    """A record together with who provided it, as shown by `harness plugins` and in entries."""

    record: ComponentRecord
    plugin: str
    distribution: str
    version: str
    variant: str | None = None  # the part after `family:` when a family record answered

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def kind(self) -> str:
        return self.record.kind

    def provenance(self) -> dict[str, str]:
        return {"plugin": self.plugin, "distribution": self.distribution, "version": self.version}


def did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.7)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "known: " + (", ".join(sorted(candidates)) if candidates else "none installed")


class Registry:
    """All components of one kind, keyed by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Registered] = {}

    def add(self, item: Registered) -> None:
        if item.kind != self.kind:
            raise TypeError(f"a {item.kind} record cannot go into the {self.kind} registry")
        existing = self._items.get(item.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"two {self.kind} components are named {item.name!r}: one from "
                f"{existing.distribution} {existing.version} (plugin {existing.plugin}), one from "
                f"{item.distribution} {item.version} (plugin {item.plugin}). Uninstall one, or "
                "rename it in its plugin."
            )
        self._items[item.name] = item

    def get(self, name: str) -> Registered:
        try:
            return self._items[name]
        except KeyError:
            family, _, variant = name.partition(":")
            found = self._items.get(family)
            if variant and found is not None and found.record.family:
                return replace(found, variant=variant)
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}: {did_you_mean(name, list(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Registered]:
        return iter(sorted(self._items.values(), key=lambda r: r.name))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)
