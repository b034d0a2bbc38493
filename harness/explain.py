"""`harness plugins NAME`: everything a spec author needs to know about one component."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from harness.registry import Registered


def _type_text(schema: dict[str, Any]) -> str:
    """A short, readable type from a JSON schema fragment (`int ≥ 1`, `'a' | 'b'`, `float | null`)."""
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    if "anyOf" in schema:
        return " | ".join(_type_text(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type_text(schema.get('items', {}))}]"
    if kind == "object":
        return "mapping"
    bounds = []
    for key, sign in (
        ("exclusiveMinimum", ">"),
        ("minimum", "≥"),
        ("exclusiveMaximum", "<"),
        ("maximum", "≤"),
    ):
        if key in schema:
            bounds.append(
                f"{sign} {schema[key]:g}"
                if isinstance(schema[key], float)
                else f"{sign} {schema[key]}"
            )
    return {
        "integer": "int",
        "number": "float",
        "boolean": "bool",
        "string": "str",
        "null": "null",
    }.get(kind, kind) + (" " + ", ".join(bounds) if bounds else "")


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str)


def parameter_rows(params: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every parameter, nested models flattened with dots."""
    schema = params.model_json_schema()
    rows = []
    for name, field in params.model_fields.items():
        prop = schema.get("properties", {}).get(name, {})
        nested = field.annotation if isinstance(field.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            rows += [(f"{name}.{n}", t, d, desc) for n, t, d, desc in parameter_rows(nested)]
            continue
        rows.append((name, _type_text(prop), _default_text(field), field.description or ""))
    return rows


def describe(registered: Registered) -> str:
    """The kind, provenance, description, paper, deviations and parameters of a component."""
    record = registered.record
    lines = [
        f"{registered.name}  ({registered.kind})",
        f"  from:        {registered.distribution} {registered.version} (plugin {registered.plugin})",
        f"  what:        {record.description}",
    ]
    if record.family:
        lines.append(f"  family:      write {record.name}:<variant>")
    paper = getattr(record, "paper", "")
    if paper:
        lines.append(f"  follows:     {paper}")
    for deviation in getattr(record, "deviations", ()):
        lines.append(f"  differs:     {deviation}")
    budget = getattr(record, "budget", None)
    if budget is not None:
        lines.append(
            f"  budget:      {budget.norm} ≤ {budget.bound} (checked on every poison it generates)"
        )
    for label, text in (
        ("derivation", getattr(record, "derivation", "")),
        ("biases", getattr(record, "biases", "")),
    ):
        if text:
            lines.append(f"  {label + ':':<12} {' '.join(text.split())}")
    if getattr(record, "task_aware", False):
        lines.append("  task-aware:  yes (a spec may set `crafting_task`)")
    rows = parameter_rows(record.params)
    if not rows:
        lines.append("  parameters:  none")
        return "\n".join(lines)
    lines.append("  parameters:")
    width = max(len(r[0]) for r in rows)
    type_width = min(max(len(r[1]) for r in rows), 28)
    for name, kind, default, description in rows:
        lines.append(f"    {name:<{width}}  {kind:<{type_width}}  default {default}")
        if description:
            lines.append(f"    {'':<{width}}  {description}")
    return "\n".join(lines)
