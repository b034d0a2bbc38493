"""Variations from the command line: `--set KEY=VALUE`, `--seeds`, `--device`.

An override is checked like the file (an error names the option), and the run it makes is a run
of the changed spec: its resolved spec, hash and `spec.yaml` say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_spec, write_spec

from harness.cli import main
from harness.errors import SpecError
from harness.pluginmanager import get_components
from harness.specfile import load_spec


def test_set_changes_values_and_the_hash(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "s.yaml", tiny_spec())
    plain = load_spec(path, get_components())
    changed = load_spec(
        path,
        get_components(),
        ["training.epochs=5", "poisons.1.params.epsilon=0.05", "seeds=[0, 3]"],
    )
    assert changed.spec.training.epochs == 5 and changed.spec.seeds == [0, 3]
    assert changed.spec.poisons[1].params["epsilon"] == 0.05
    assert changed.spec.poisons[1].params["mode"] == "class-wise"  # the rest of the entry is kept
    assert changed.hash != plain.hash
    assert load_spec(path, get_components(), []).hash == plain.hash


def test_set_turns_a_short_form_into_a_mapping(tmp_path: Path) -> None:
    spec = tiny_spec(backbone="small-cnn")
    path = write_spec(tmp_path / "s.yaml", spec)
    loaded = load_spec(path, get_components(), ["backbone.params.width=6"])
    assert loaded.spec.backbone.name == "small-cnn" and loaded.spec.backbone.params["width"] == 6


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("training.epochs=many", r"--set training.epochs=many \(over .*s.yaml\): training.epochs"),
        ("poisons.0.params.epsilonn=0.1", r"--set poisons.0.params.epsilonn=0.1 .*unknown field"),
        ("poisons.7.label=x", r"--set poisons.7.label=x: poisons.7 does not exist"),
        ("training.epochs", r"--set training.epochs: write KEY=VALUE"),
    ],
)
def test_a_bad_override_is_named_by_its_option(
    tmp_path: Path, assignment: str, message: str
) -> None:
    path = write_spec(tmp_path / "s.yaml", tiny_spec())
    with pytest.raises(SpecError, match=message):
        load_spec(path, get_components(), [assignment])


def test_eval_records_the_overrides_in_the_run_folder(tmp_path: Path, capsys) -> None:
    spec = tiny_spec(
        "o", poisons=[], backbone={"name": "linear"}, sal={"iterations": 1, "probe_size": 32}
    )
    path = write_spec(tmp_path / "o.yaml", spec)
    runs = tmp_path / "runs"
    args = ["--seeds", "1", "--device", "cpu", "--set", "training.epochs=1"]
    assert main(["validate", str(path), *args]) == 0
    assert main(["eval", str(path), "--output", str(runs), "--quiet", *args]) == 0
    run = runs / "o"
    resolved = json.loads((run / "spec.resolved.json").read_text())["spec"]
    assert resolved["seeds"] == [1] and resolved["training"]["epochs"] == 1
    assert resolved["training"]["device"] == "cpu"
    text = (run / "spec.yaml").read_text()
    assert text.startswith(
        f"# {path} with --set seeds=[1] --set training.device=cpu --set training.epochs=1"
    )
    assert {p.stem for p in (run / "entries").glob("*.json")} == {"clean__none__s1"}
    # the same command resumes; the file alone is another spec
    assert main(["eval", str(path), "--output", str(runs), "--quiet", *args]) == 0
    assert main(["eval", str(path), "--output", str(runs), "--quiet"]) == 2
    assert "different spec" in capsys.readouterr().err
