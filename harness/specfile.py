"""Reading spec files safely, and reporting every problem with its file, line, column and field.

Spec files come from third parties, so before anything is parsed the file's size, its number
of values and how deep it nests are bounded (`MAX_SPEC_BYTES`, `MAX_VALUES`, `MAX_DEPTH`: a
spec is a few kilobytes, and a parser fed megabytes of keys or thousands of nested brackets
takes minutes, gigabytes, or Python's recursion limit). Then the YAML is composed into nodes
(nothing is constructed) and any tag outside plain YAML data types is refused; only then is it
loaded with ruamel's safe loader. The node tree also gives the position of every value, which
turns a pydantic error location such as `("training", "epochs")` into `spec.yaml:7:11`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import PluginError, SpecError
from harness.pluginmanager import Components
from harness.spec import COMPONENT_NAME, SLUG, ArmComponent, Component, ComponentRef, DataSpec, Spec

SAFE_TAGS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")
}
MAX_NODES = 100_000
#: refused before reading: a spec is a few kilobytes
MAX_SPEC_BYTES = 2 * 1024 * 1024
#: refused before parsing: values (keys, items, scalars) counted in the text
MAX_VALUES = 20_000
#: refused before parsing: levels of nesting (mappings, lists, flow brackets)
MAX_DEPTH = 32
Path_ = tuple[Any, ...]
_BLOCK_SCALAR = re.compile(r"(^|[:\-]\s)\s*[|>][-+0-9]*\s*(#.*)?$")


@dataclass
class SpecSource:
    path: Path
    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    #: the file's text as read; None for a spec given as data
    text: str | None = None
    #: command-line overrides applied to `data`: the path each set, and the option as written
    overrides: dict[Path_, str] = field(default_factory=dict)

    def as_text(self) -> str:
        """The spec as run: the file's own text, or its data as YAML when it came as data or was
        changed from the command line (then headed by the file and the options)."""
        if self.text is not None and not self.overrides:
            return self.text
        out = io.StringIO()
        if self.overrides:
            out.write(f"# {self.path} with " + " ".join(self.overrides.values()) + "\n")
        YAML(typ="safe", pure=True).dump(self.data, out)
        return out.getvalue()

    def where(self, loc: Path_, *, key: bool = False) -> str:
        """`file:line:col` of the deepest part of `loc` that exists in the file.

        `key=True` points at the key of a mapping entry rather than at its value (where an
        unknown field is misspelt). A value set from the command line is named by its option.
        """
        loc = tuple(loc)
        for path, option in self.overrides.items():
            if loc[: len(path)] == path:
                return f"{option} (over {self.path})"
        if key and loc in self.key_positions:
            line, col = self.key_positions[loc]
            return f"{self.path}:{line}:{col}"
        while loc and loc not in self.positions:
            loc = loc[:-1]
        line, col = self.positions.get(loc, (1, 1))
        return f"{self.path}:{line}:{col}"


def _problem(path: Path, line: int, col: int, message: str) -> SpecError:
    return SpecError(f"{path}:{line}:{col}: {message}")


def _check_tag(node: Node, loc: Path_, source: Path) -> None:
    if node.tag not in SAFE_TAGS:
        mark = node.start_mark
        raise _problem(
            source,
            mark.line + 1,
            mark.column + 1,
            f"{'.'.join(map(str, loc)) or '<document>'}: the YAML tag {node.tag!r} is not allowed; "
            "spec files hold plain data only (maps, lists, strings, numbers, booleans, null)"
            + ("; quote a date to make it a string" if node.tag.endswith(":timestamp") else ""),
        )


def prescan(text: str, source: Path) -> None:
    """Refuse, before any parser sees it, a text with too many values or nested too deep.

    A lexical estimate, close enough to refuse what would cost minutes or exhaust the parser's
    recursion, never a spec of realistic size: indentation levels, `- ` indicators and open
    flow brackets count as nesting; keys, items and separators as values. Quoted strings,
    comments and the lines of block scalars (`|`, `>`) count for nothing.
    """
    indents: list[int] = []
    flow = values = 0
    block_indent: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        if block_indent is not None:
            if not body.strip() or indent > block_indent:
                continue
            block_indent = None
        if not body.strip() or body.startswith("#"):
            continue
        if flow == 0:
            while indents and indents[-1] >= indent:
                indents.pop()
            indents.append(indent)
        dashes = 0
        while body == "-" or body.startswith("- "):
            dashes += 1
            body = body[1:].lstrip(" ")
        deepest, quote = flow, None
        for i, ch in enumerate(body):
            if quote is not None:
                if ch == quote:
                    quote = None
            elif ch in "'\"" and (i == 0 or body[i - 1] in " [{,:"):
                quote = ch
            elif ch == "#" and (i == 0 or body[i - 1] == " "):
                break
            elif ch in "[{":
                flow += 1
                deepest = max(deepest, flow)
            elif ch in "]}":
                flow = max(0, flow - 1)
            elif ch in ",:":
                values += 1
        values += 1 + dashes
        depth = len(indents) + dashes + deepest
        if depth > MAX_DEPTH:
            raise _problem(
                source,
                number,
                indent + 1,
                f"the spec nests deeper than {MAX_DEPTH} levels; a spec needs a handful",
            )
        if values > MAX_VALUES:
            raise _problem(
                source,
                number,
                1,
                f"the spec holds more than {MAX_VALUES} values; a spec needs a few dozen",
            )
        if _BLOCK_SCALAR.search(body):
            block_indent = indent


def _walk(
    node: Node,
    loc: Path_,
    positions: dict,
    source: Path,
    budget: list[int],
    key_positions: dict,
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise SpecError(
            f"{source}: the document is too large (over {MAX_NODES} values, or aliases expand too far)"
        )
    if len(loc) > MAX_DEPTH:
        mark = node.start_mark
        raise _problem(
            source,
            mark.line + 1,
            mark.column + 1,
            f"the spec nests deeper than {MAX_DEPTH} levels; a spec needs a handful",
        )
    mark = node.start_mark
    positions.setdefault(loc, (mark.line + 1, mark.column + 1))
    _check_tag(node, loc, source)
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                m = key.start_mark
                raise _problem(
                    source, m.line + 1, m.column + 1, "mapping keys must be plain scalars"
                )
            _check_tag(key, (*loc, key.value), source)
            m = key.start_mark
            key_positions.setdefault((*loc, key.value), (m.line + 1, m.column + 1))
            _walk(value, (*loc, key.value), positions, source, budget, key_positions)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), positions, source, budget, key_positions)


def read_spec_file(path: str | Path) -> SpecSource:
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: no such spec file")
    if not path.is_file():
        raise SpecError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"{path}: the file is {size / 2**20:.1f} MiB, over the limit of "
            f"{MAX_SPEC_BYTES // 2**20} MiB for a spec (a spec is a few kilobytes); nothing was parsed"
        )
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
        if len(raw) > MAX_SPEC_BYTES:  # grew since it was measured, or a device
            raise SpecError(f"{path}: over the limit of {MAX_SPEC_BYTES // 2**20} MiB for a spec")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    prescan(text, path)
    positions: dict[Path_, tuple[int, int]] = {}
    key_positions: dict[Path_, tuple[int, int]] = {}
    try:
        node = YAML(typ="rt").compose(io.StringIO(text))
        if node is None:
            raise SpecError(f"{path}:1:1: the spec file is empty")
        _walk(node, (), positions, path, [MAX_NODES], key_positions)
        data = YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = (exc.problem or exc.context or "malformed YAML").strip()
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx is not None and ctx is not mark:
            what += (
                f" ({exc.context.strip()} started at line {ctx.line + 1}, column {ctx.column + 1})"
            )
        raise _problem(path, line, col, f"malformed YAML: {what}") from None
    except YAMLError as exc:
        raise SpecError(f"{path}: malformed YAML: {exc}") from None
    except RecursionError:  # what the lexical estimate let through still never shows a traceback
        raise SpecError(f"{path}: the spec nests too deep to be read") from None
    if not isinstance(data, dict):
        kind = {type(None): "null", str: "string", list: "list"}.get(
            type(data), type(data).__name__
        )
        raise _problem(path, 1, 1, f"the spec must be a mapping of fields, not a {kind}")
    return SpecSource(path, data, positions, key_positions, text)


_PATTERN_MEANING = {
    SLUG: "must be a plain name of at most 64 letters, digits, '.', '_' or '-', starting with a "
    "letter or digit (it names files and folders, so no '/', '\\' or '..')",
    COMPONENT_NAME: "must be a registered component name: lower-case letters, digits, '.', '_', ':' "
    "or '-'",
}


_BOUNDS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _describe_error(err: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "<spec>"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (not part of the spec; check the spelling)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif (
        err["type"] == "string_pattern_mismatch"
        and err.get("ctx", {}).get("pattern") in _PATTERN_MEANING
    ):
        msg = _PATTERN_MEANING[err["ctx"]["pattern"]]
    elif err["type"] == "value_error":
        msg = msg.removeprefix("Value error, ")
    elif err["type"] in ("int_type", "float_type") and isinstance(err.get("input"), bool):
        msg = "a boolean (true/false) is not a number; give the number itself"
    elif err["type"] in _BOUNDS and isinstance(err.get("ctx"), dict):
        for key in ("gt", "ge", "lt", "le"):  # 3.4e38 rather than its 39 digits
            bound = err["ctx"].get(key)
            if isinstance(bound, float) and abs(bound) >= 1e12:
                msg = re.sub(r"\d{13,}", f"{bound:.6g}", msg)
    elif err["type"] == "finite_number":
        msg = "must be a finite number (not .inf, -.inf or .nan)"
    if err["type"] not in ("missing", "extra_forbidden", "arm_label") and "input" in err:
        shown = json.dumps(err["input"], default=str)
        if len(shown) <= 60:
            msg += f" (got {shown})"
    return f"{loc}: {msg}"


def _validation_problems(source: SpecSource, exc: ValidationError, prefix: Path_ = ()) -> list[str]:
    """One `file:line:col: field.path: what was expected` line per error."""
    lines = []
    for err in exc.errors():
        # a list-level check (e.g. distinct arm labels) says which entry it means in ctx["at"]
        at = (err.get("ctx") or {}).get("at", ())
        loc = (*prefix, *err["loc"], *at)
        err = {**err, "loc": loc}
        where = source.where(loc, key=err["type"] == "extra_forbidden")
        lines.append(f"{where}: {_describe_error(err)}")
    return lines


@dataclass
class LoadedSpec:
    """A validated spec with every component's parameters filled in from its plugin's defaults."""

    spec: Spec
    source: SpecSource

    def resolved(self) -> dict[str, Any]:
        return self.spec.model_dump(mode="json")

    @property
    def hash(self) -> str:
        return spec_hash(self.resolved())


def spec_hash(resolved: dict[str, Any], *, with_device: bool = False) -> str:
    """Identity of what a run computes; the output folder and prose do not change results.

    Neither does `training.device`: a run killed on one machine resumes on another, and the
    device it ran on is recorded as provenance. (Runs started before this rule carry the hash
    that included it, `with_device=True`; they are still recognised, see
    `harness.runfolder.holds_spec` and `harness.submit`.)

    A disabled `landscape` section is left out too: it changes nothing in the run, and leaving
    it out keeps the hash of every spec written before the section existed. Enabled, it adds
    the trajectory to the run file, so it is part of the identity.
    """
    # where results go, prose, and who watches the run (trackers) change no result
    identity = {k: v for k, v in resolved.items() if k not in ("output", "description", "trackers")}
    if not with_device and isinstance(identity.get("training"), dict):
        identity["training"] = {k: v for k, v in identity["training"].items() if k != "device"}
    if not (identity.get("landscape") or {}).get("enabled", False):
        identity.pop("landscape", None)
    # fields added after the first runs, left out while unset so that older runs keep their hash
    if not identity.get("tasks"):
        identity.pop("tasks", None)
    identity["poisons"] = [
        {k: v for k, v in p.items() if not (k == "crafting_task" and v is None)}
        for p in identity.get("poisons", [])
    ]
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _component_refs(spec: Spec) -> list[tuple[Path_, str, ComponentRef]]:
    refs: list[tuple[Path_, str, ComponentRef]] = [
        (("data",), "dataset", spec.data),
        (("task",), "task", spec.task),
        (("backbone",), "backbone", spec.backbone),
    ]
    refs += [(("tasks", i), "task", ref) for i, ref in enumerate(spec.tasks)]
    refs += [(("poisons", i), "poison", ref) for i, ref in enumerate(spec.poisons)]
    refs += [(("defences", i), "defence", ref) for i, ref in enumerate(spec.defences)]
    refs += [(("trackers", i), "tracker", ref) for i, ref in enumerate(spec.trackers)]
    refs.append((("sal", "estimator"), "sal_estimator", spec.sal.estimator))
    return refs


_COMPONENT = TypeAdapter(Component)
_ARM_COMPONENT = TypeAdapter(ArmComponent)
_DATA = TypeAdapter(DataSpec)


def _raw_component_refs(data: dict[str, Any]) -> list[tuple[Path_, str, ComponentRef]]:
    """The well-formed component references of a spec that failed validation elsewhere.

    Lets one `validate` report an unknown plugin name or bad params together with, say, a wrong
    epoch count; entries that are malformed themselves were already reported.
    """
    refs: list[tuple[Path_, str, ComponentRef]] = []
    singles = (
        ("data", "dataset", _DATA),
        ("task", "task", _COMPONENT),
        ("backbone", "backbone", _COMPONENT),
    )
    for key, kind, adapter in singles:
        if key in data:
            value = {"name": data[key]} if isinstance(data[key], str) else data[key]
            with contextlib.suppress(ValidationError):
                refs.append(((key,), kind, adapter.validate_python(value)))
    for key, kind in (
        ("tasks", "task"),
        ("poisons", "poison"),
        ("defences", "defence"),
        ("trackers", "tracker"),
    ):
        items = data.get(key)
        for i, item in enumerate(items if isinstance(items, list) else []):
            with contextlib.suppress(ValidationError):
                refs.append(((key, i), kind, _ARM_COMPONENT.validate_python(item)))
    sal = data.get("sal")
    if isinstance(sal, dict) and "estimator" in sal:
        value = sal["estimator"]
        with contextlib.suppress(ValidationError):
            refs.append(
                (
                    ("sal", "estimator"),
                    "sal_estimator",
                    _COMPONENT.validate_python(
                        {"name": value} if isinstance(value, str) else value
                    ),
                )
            )
    return refs


def _without_defaults(params_model: type[BaseModel], resolved: dict[str, Any]) -> dict[str, Any]:
    """The params that differ from the model's defaults.

    A SAL estimator is written as its name alone when it runs with its defaults, the form every
    spec had before estimators were plugins, so that those keep their hash and track.
    """
    try:
        defaults = params_model().model_dump(mode="json")
    except ValidationError:  # a required param: nothing to leave out
        return resolved
    return {k: v for k, v in resolved.items() if k not in defaults or defaults[k] != v}


def validate_params(params_model: type[BaseModel], given: dict[str, Any]) -> dict[str, Any]:
    """Validate component params, refusing unknown keys even if the plugin's model allows them.

    As for the spec's own fields, a boolean given where the plugin takes a number (pydantic
    would read `true` as 1) and a number that is not finite are refused, whatever the plugin's
    model says.
    """
    unknown = sorted(set(given) - set(params_model.model_fields))
    if unknown:
        raise ValidationError.from_exception_data(
            params_model.__name__,
            [{"type": "extra_forbidden", "loc": (k,), "input": given[k]} for k in unknown],
        )
    resolved = params_model.model_validate(given).model_dump(mode="json")
    problems = _number_problems(given, resolved, ())
    if problems:
        raise ValidationError.from_exception_data(params_model.__name__, problems)
    return resolved


def _number_problems(given: Any, resolved: Any, loc: tuple[Any, ...]) -> list[Any]:
    if isinstance(given, bool):
        if isinstance(resolved, (int, float)) and not isinstance(resolved, bool):
            return [{"type": "int_type", "loc": loc, "input": given}]
        return []
    if isinstance(given, float) and not math.isfinite(given):
        return [{"type": "finite_number", "loc": loc, "input": given}]
    if isinstance(given, dict) and isinstance(resolved, dict):
        return [
            p
            for k in given
            if k in resolved
            for p in _number_problems(given[k], resolved[k], (*loc, k))
        ]
    if isinstance(given, list) and isinstance(resolved, list) and len(given) == len(resolved):
        return [
            p
            for i, (g, r) in enumerate(zip(given, resolved, strict=True))
            for p in _number_problems(g, r, (*loc, i))
        ]
    return []


def load_spec(
    path: str | Path, components: Components, overrides: list[str] | None = None
) -> LoadedSpec:
    """Read, validate and resolve a spec, with `KEY=VALUE` overrides applied (`--set`); raises
    SpecError listing every problem found."""
    source = read_spec_file(path)
    if overrides:
        from harness.overrides import apply_overrides

        source = apply_overrides(source, overrides)
    return resolve_spec(source, components)


def spec_from_data(
    data: dict[str, Any], components: Components, origin: str = "<spec>"
) -> LoadedSpec:
    """Validate and resolve a spec given as a mapping (notebooks, benchmarks), as a file would be.

    Errors name `origin` instead of a file and line.
    """
    if not isinstance(data, dict):
        raise SpecError(
            f"{origin}: the spec must be a mapping of fields, not a {type(data).__name__}"
        )
    return resolve_spec(SpecSource(Path(origin), data), components)


def resolve_spec(source: SpecSource, components: Components) -> LoadedSpec:
    """Validate a spec's fields, then each component's parameters against its plugin's model."""
    problems: list[str] = []
    spec: Spec | None = None
    try:
        spec = Spec.model_validate(source.data)
        refs = _component_refs(spec)
    except ValidationError as exc:
        problems += _validation_problems(source, exc)
        refs = _raw_component_refs(source.data)
    for loc, kind, ref in refs:
        try:
            registered = components.get(kind, ref.name)
        except PluginError as exc:
            problems.append(
                f"{source.where((*loc, 'name'))}: {'.'.join(map(str, (*loc, 'name')))}: {exc}"
            )
            continue
        try:
            ref.params = validate_params(registered.record.params, ref.params)
            if kind == "sal_estimator":
                ref.params = _without_defaults(registered.record.params, ref.params)
        except ValidationError as exc:
            problems += _validation_problems(source, exc, (*loc, "params"))
    if problems or spec is None:
        raise SpecError("\n".join(problems))
    return LoadedSpec(spec, source)
