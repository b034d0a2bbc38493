"""The JSON Schema of spec files, built from the installed components.

`harness schema` prints it; editors that speak the YAML language server (VS Code, Neovim, JetBrains
IDEs) then complete and check a spec as it is typed. Beyond the spec's own fields, the schema
knows every registered component: a component field accepts the name alone (`task:
classification`, `defences: [none]`) or a mapping whose `name` is one of the registered names,
each with its description, and whose `params` are checked against that component's own
parameters (types, defaults, bounds, descriptions). Since it is built from the plugins installed
where it runs, a third party's components appear in it as soon as they are installed.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from pydantic import BaseModel

from harness.pluginmanager import Components
from harness.registry import Registered
from harness.spec import Spec

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "https://harness.invalid/spec.schema.json"


def _describe(registered: Registered) -> str:
    record = registered.record
    text = record.description or record.name
    paper = getattr(record, "paper", "")
    if paper:
        text += f" (follows: {paper})"
    return f"{text} [{registered.distribution} {registered.version}]"


def _params_schema(registered: Registered, defs: dict[str, Any]) -> dict[str, Any]:
    """The component's params model as a schema, its nested models moved into the shared $defs."""
    prefix = f"{registered.kind}.{registered.name}."
    params: type[BaseModel] = registered.record.params
    schema = params.model_json_schema(ref_template="#/$defs/" + prefix + "{model}")
    for name, sub in schema.pop("$defs", {}).items():
        defs[prefix + name] = sub
    schema.pop("title", None)
    return schema


def _variants(
    components: Components,
    kind: str,
    base: dict[str, Any],
    defs: dict[str, Any],
    distributions: set[str] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the name-only string forms, the mapping forms) of every component of a kind."""
    strings: list[dict[str, Any]] = []
    mappings: list[dict[str, Any]] = []
    for registered in components[kind]:
        if distributions is not None and registered.distribution not in distributions:
            continue
        description = _describe(registered)
        if registered.record.family:
            name_schema = {
                "type": "string",
                "pattern": f"^{re.escape(registered.name)}:.+$",
                "description": description + f"; write {registered.name}:<variant>",
            }
        else:
            name_schema = {"const": registered.name, "description": description}
        strings.append(dict(name_schema))
        mapping = copy.deepcopy(base)
        mapping["title"] = registered.name
        mapping["description"] = description
        mapping["properties"]["name"] = name_schema
        mapping["properties"]["params"] = _params_schema(registered, defs)
        mapping["required"] = sorted(set(mapping.get("required", [])) | {"name"})
        mappings.append(mapping)
    return strings, mappings


def _component_schema(
    components: Components,
    kind: str,
    base: dict[str, Any],
    defs: dict[str, Any],
    distributions: set[str] | None,
) -> dict[str, Any]:
    strings, mappings = _variants(components, kind, base, defs, distributions)
    return {"anyOf": [{"oneOf": strings}, {"oneOf": mappings}] if strings else [base]}


def spec_schema(components: Components, distributions: set[str] | None = None) -> dict[str, Any]:
    """The spec's JSON Schema with every registered component's name and parameters in it.

    `distributions` keeps only the components of those distributions (the repository's own schema
    file holds the first-party components: `harness schema --only harness`).
    """
    schema = Spec.model_json_schema()
    defs: dict[str, Any] = schema["$defs"]
    fields = {
        "data": ("dataset", "DataSpec"),
        "task": ("task", "ComponentRef"),
        "backbone": ("backbone", "ComponentRef"),
        "tasks": ("task", "TaskRef"),
        "poisons": ("poison", "PoisonRef"),
        "defences": ("defence", "ArmComponentRef"),
        "trackers": ("tracker", "ComponentRef"),
        "sal.estimator": ("sal_estimator", "ComponentRef"),
    }
    built = {
        field: _component_schema(components, kind, defs[base], defs, distributions)
        for field, (kind, base) in fields.items()
    }
    props = schema["properties"]
    for field in ("data", "task", "backbone"):
        keep = {k: v for k, v in props[field].items() if k in ("description", "default")}
        props[field] = {**built[field], **keep}
    for field in ("tasks", "poisons", "defences", "trackers"):
        props[field]["items"] = built[field]
    estimator = defs["SALSpec"]["properties"]["estimator"]
    keep = {k: v for k, v in estimator.items() if k in ("description", "default")}
    defs["SALSpec"]["properties"]["estimator"] = {**built["sal.estimator"], **keep}
    augmentation = defs["TrainingSpec"]["properties"]["augmentation"]
    names = defs["AugmentationSpec"]["properties"]["name"]
    augmentation["items"] = {
        "anyOf": [{"type": "string", "enum": names["enum"]}, {"$ref": "#/$defs/AugmentationSpec"}]
    }
    schema["$schema"] = DRAFT
    schema["$id"] = SCHEMA_ID
    schema["title"] = "harness spec"
    schema["description"] = (
        "An evaluation of unlearnable examples: data, task, backbone, training "
        "recipe, SAL settings, poisons, defences and seeds (harness eval SPEC)."
    )
    return schema
