"""Finding plugins through entry points and turning their hooks into registries.

A broken third-party plugin must never take the harness down with it: every import, hook call
and record is checked one plugin at a time, and a failure is kept as a `PluginFailure` (shown by
`harness plugins` and as a warning) instead of an exception. `strict=True` turns failures into
an error for CI-like use.
"""

from __future__ import annotations

import importlib.metadata as md
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy
from pydantic import BaseModel

from harness import hookspecs
from harness.context import BuildContext
from harness.errors import ComponentError, HarnessError, PluginError
from harness.records import RECORD_TYPES
from harness.registry import Registered, Registry, did_you_mean


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return f"plugin {self.plugin} ({self.distribution} {self.version}) is broken: {self.error}"


class PluginWarning(UserWarning):
    """Emitted once per broken plugin."""


@dataclass
class Components:
    """Every registry, plus the plugins that could not be loaded."""

    registries: dict[str, Registry] = field(
        default_factory=lambda: {kind: Registry(kind) for kind in RECORD_TYPES}
    )
    failures: list[PluginFailure] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Registered:
        return self.registries[kind].get(name)

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    def build(
        self,
        kind: str,
        name: str,
        params: dict[str, Any] | BaseModel,
        context: BuildContext | None = None,
    ) -> Any:
        """Build a component: `factory(validated params, context)`, checked against its kind.

        Every kind is built this way. An error the factory raises on its inputs (a `HarnessError`,
        `ValueError` or `TypeError`) and any other exception it raises become a `ComponentError`
        naming the component and its plugin; so does an object of the wrong type, which would
        otherwise fail far from its cause.
        """
        registered = self.get(kind, name)
        record = registered.record
        if not isinstance(params, BaseModel):
            params = record.params.model_validate(params)
        context = replace(context or BuildContext(), variant=registered.variant)
        who = f"{kind} {name!r} (plugin {registered.plugin}, {registered.distribution} {registered.version})"
        try:
            built = record.factory(params, context)
        except HarnessError:  # the plugin already says what the user must change (a missing path)
            raise
        except (ValueError, TypeError) as exc:
            raise ComponentError(f"{who}: {exc}") from None
        except Exception as exc:  # a plugin's bug: name it instead of showing its traceback
            raise ComponentError(f"{who} failed to build: {type(exc).__name__}: {exc}") from exc
        if not isinstance(built, record.builds):
            raise ComponentError(
                f"{who}: its factory returned a {type(built).__name__}, "
                f"not a {record.builds.__name__}"
            )
        return built


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _unknown_hooks(plugin: object) -> list[str]:
    known = set(hookspecs.HOOK_FOR_KIND.values())
    unknown = []
    for attr in dir(plugin):
        try:
            func = getattr(plugin, attr, None)
            opts = getattr(func, f"{hookspecs.PROJECT}_impl", None) if callable(func) else None
        except Exception:  # a property of a plugin object may raise: not a hook, so skip it
            continue
        if not isinstance(opts, dict):
            continue  # not marked with harness.hookimpl
        # @hookimpl(specname=...) implements the named hook whatever the function is called
        hook = opts.get("specname") or attr
        if hook not in known:
            unknown.append(f"unknown hook {hook}: {did_you_mean(hook, sorted(known))}")
    return unknown


def load_components(
    *,
    entry_points: bool = True,
    extra_plugins: Iterable[tuple[str, object]] = (),
    strict: bool = False,
) -> Components:
    """Load every plugin and build the registries.

    `extra_plugins` are (name, module-or-object) pairs registered as if they came from an entry
    point of distribution "<local>": tests and notebooks use it to add a component in-process.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    components = Components()
    provenance: dict[str, tuple[str, str]] = {}

    candidates: list[tuple[str, str, str, Any]] = []
    if entry_points:
        for ep in md.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            plugin_name = f"{dist}:{ep.name}"
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # a plugin's import error is its own problem
                components.failures.append(
                    PluginFailure(plugin_name, dist, version, f"import failed: {_describe(exc)}")
                )
                continue
            candidates.append((plugin_name, dist, version, plugin))
    for name, plugin in extra_plugins:
        candidates.append((name, "<local>", "0", plugin))

    for plugin_name, dist, version, plugin in candidates:
        problems = _unknown_hooks(plugin)
        if problems:
            components.failures.append(
                PluginFailure(plugin_name, dist, version, "; ".join(problems))
            )
            continue
        if pm.has_plugin(plugin_name) or pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin, name=plugin_name)
        except Exception as exc:
            components.failures.append(PluginFailure(plugin_name, dist, version, _describe(exc)))
            continue
        provenance[plugin_name] = (dist, version)

    for kind, hook_name in hookspecs.HOOK_FOR_KIND.items():
        record_type = RECORD_TYPES[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            dist, version = provenance.get(impl.plugin_name, ("<unknown>", "?"))
            try:
                records = impl.function()
            except (Exception, SystemExit) as exc:  # a hook that raises, or exits, is its plugin's
                components.failures.append(
                    PluginFailure(
                        impl.plugin_name, dist, version, f"{hook_name} raised {_describe(exc)}"
                    )
                )
                continue
            if not isinstance(records, (list, tuple)):
                components.failures.append(
                    PluginFailure(
                        impl.plugin_name,
                        dist,
                        version,
                        f"{hook_name} returned {type(records).__name__}, not a list",
                    )
                )
                continue
            for record in records:
                if not isinstance(record, record_type):
                    components.failures.append(
                        PluginFailure(
                            impl.plugin_name,
                            dist,
                            version,
                            f"{hook_name} returned a {type(record).__name__}, "
                            f"expected {record_type.__name__}",
                        )
                    )
                    continue
                problems = record.problems()
                if problems:
                    components.failures.append(
                        PluginFailure(impl.plugin_name, dist, version, "; ".join(problems))
                    )
                    continue
                components.registries[kind].add(Registered(record, impl.plugin_name, dist, version))

    if strict and components.failures:
        raise PluginError("\n".join(str(f) for f in components.failures))
    for failure in components.failures:
        warnings.warn(str(failure), PluginWarning, stacklevel=2)
    return components


_cached: Components | None = None


def get_components(*, strict: bool = False) -> Components:
    """The process-wide components, loaded on first use."""
    global _cached
    if _cached is None:
        _cached = load_components(strict=strict)
    elif strict and _cached.failures:
        raise PluginError("\n".join(str(f) for f in _cached.failures))
    return _cached


def reset_components() -> None:
    """Forget the loaded components (after installing a plugin in the same process)."""
    global _cached
    _cached = None
