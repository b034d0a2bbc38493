"""`harness schema`: what editors check a spec against while it is typed.

The schema is built from the installed components, so a spec's component names, their short
forms and their parameters are checked by the same rules `harness validate` applies.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from harness.cli import main
from harness.pluginmanager import get_components
from harness.schema import spec_schema

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = spec_schema(get_components())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load(path: Path) -> dict:
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_validates_against_the_schema(validator, path: Path) -> None:
    errors = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(load(path))
    ]
    assert errors == []


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_shipped_spec_points_its_editor_at_the_schema(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/spec.schema.json"


def test_the_committed_schema_is_the_one_harness_schema_prints(capsys) -> None:
    assert main(["schema", "--only", "harness"]) == 0
    printed = json.loads(capsys.readouterr().out)
    committed = json.loads((REPO / "docs" / "spec.schema.json").read_text(encoding="utf-8"))
    assert printed == committed, (
        "regenerate it: harness schema --only harness > docs/spec.schema.json"
    )


QUICKSTART = REPO / "specs" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d["poisons"].append({"name": "no-such-poison"}), "poisons/2"),
        (lambda d: d["poisons"][0]["params"].update(epsilon=-1), "poisons/0"),
        (lambda d: d["poisons"][0]["params"].update(epsilonn=0.1), "poisons/0"),
        (lambda d: d["backbone"]["params"].update(width="wide"), "backbone"),
        (lambda d: d.update(defences=["none", "jpegg"]), "defences/1"),
        (lambda d: d["training"].update(epochs=0), "training/epochs"),
    ],
    ids=[
        "unknown name",
        "param out of range",
        "unknown param",
        "param type",
        "short form",
        "field",
    ],
)
def test_what_validate_refuses_the_schema_refuses_too(validator, change, where: str) -> None:
    spec = load(QUICKSTART)
    change(spec)
    errors = list(validator.iter_errors(spec))
    assert errors and "/".join(map(str, errors[0].absolute_path)).startswith(where)


def test_component_names_carry_their_descriptions_and_params_their_defaults() -> None:
    schema = spec_schema(get_components())
    names = schema["properties"]["poisons"]["items"]["anyOf"][0]["oneOf"]
    em = next(n for n in names if n.get("const") == "em")
    assert "error-minimizing" in em["description"] and "Huang" in em["description"]
    mappings = schema["properties"]["poisons"]["items"]["anyOf"][1]["oneOf"]
    noise = next(m for m in mappings if m["title"] == "random-noise")
    epsilon = noise["properties"]["params"]["properties"]["epsilon"]
    assert epsilon["default"] == pytest.approx(8 / 255) and epsilon.get("description")
    timm = next(n for n in schema["properties"]["backbone"]["anyOf"][0]["oneOf"] if "pattern" in n)
    assert timm["pattern"].startswith("^timm")


def test_a_family_and_the_short_forms_are_accepted(validator) -> None:
    spec = load(QUICKSTART)
    spec.update(task="classification", backbone="timm:resnet18", defences=["none", "jpeg"])
    spec["training"]["augmentation"] = ["crop", {"name": "flip", "p": 0.25}]
    assert list(validator.iter_errors(copy.deepcopy(spec))) == []
