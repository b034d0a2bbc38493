"""The core's seams, used as an executor, a view or a plugin author uses them.

- a factory that builds the wrong type is named, not discovered deep in a training loop;
- one broken first-party poison module costs only its own methods, as a third party's would;
- pre-flight reports every problem of a spec at once, with file and line, before anything runs;
- one arm runs from (spec, arm, run folder) alone, and gives what the whole run gives;
- `--fresh` starts a new run and keeps the old one;
- plugins, first-party and the worked example alike, import only from `harness.api`.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_spec, write_spec

from harness.api import Poison, PoisonRecord, hookimpl
from harness.cli import main
from harness.errors import ComponentError, SpecError
from harness.plan import plan_arms
from harness.pluginmanager import load_components
from harness.preflight import preflight
from harness.runfolder import RunFolder
from harness.runner import Runner, run_arm
from harness.specfile import load_spec

REPO = Path(__file__).resolve().parents[1]


class NotAPoison:
    """What a plugin author might return by mistake: an object with the right method but no base."""

    def __init__(self, params: object, context: object) -> None:
        self.params = params

    def generate(self, data, ctx):
        return data.train.x


class WrongFactory:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        return [
            PoisonRecord(
                name="not-a-poison", factory=NotAPoison, description="builds the wrong type"
            )
        ]


def test_a_factory_that_builds_the_wrong_type_is_named_with_its_plugin() -> None:
    components = load_components(extra_plugins=[("wrong-plugin", WrongFactory())])

    with pytest.raises(
        ComponentError, match=r"poison 'not-a-poison' \(plugin wrong-plugin.*not a Poison"
    ):
        components.build("poison", "not-a-poison", {})


def test_pre_flight_names_the_wrong_type_with_the_spec_line(tmp_path: Path) -> None:
    components = load_components(extra_plugins=[("wrong-plugin", WrongFactory())])
    spec = write_spec(tmp_path / "s.yaml", tiny_spec(poisons=[{"name": "not-a-poison"}]))

    with pytest.raises(SpecError) as err:
        preflight(load_spec(spec, components), components)
    assert f"{spec}:" in str(err.value) and "poisons.0" in str(err.value)
    assert "wrong-plugin" in str(err.value) and "not a Poison" in str(err.value)


def test_one_broken_first_party_poison_module_costs_only_its_own_methods(monkeypatch) -> None:
    real = md.entry_points(group="harness")

    class Broken:
        """The AR module's entry point, as it would look with a dependency missing."""

        name, value, group = "poisons.ar", "harness_plugins.poisons.ar", "harness"
        dist = next(ep for ep in real if ep.name == "poisons.ar").dist

        def load(self):
            raise ImportError("the AR module needs libfoo, which is not installed")

    entry_points = [Broken() if ep.name == "poisons.ar" else ep for ep in real]
    monkeypatch.setattr(md, "entry_points", lambda group: entry_points)

    with pytest.warns(UserWarning, match="poisons.ar"):
        components = load_components()

    poisons = components["poison"].names()
    assert "ar" not in poisons
    assert {"em", "ops", "lsp", "random-noise", "tap", "cuda"} <= set(poisons)
    (failure,) = components.failures
    assert failure.plugin == "harness:poisons.ar" and "libfoo" in failure.error


def test_each_first_party_method_module_is_its_own_plugin() -> None:
    components = load_components()
    by_plugin = {r.plugin for r in components["poison"]} | {r.plugin for r in components["defence"]}
    assert {"harness:poisons.em", "harness:poisons.ops", "harness:defences.ueraser"} <= by_plugin
    assert not any(p in ("harness:poisons", "harness:defences") for p in by_plugin)


def test_validate_lists_every_pre_flight_problem_at_once(tmp_path: Path, capsys) -> None:
    spec = write_spec(
        tmp_path / "bad.yaml",
        tiny_spec(
            data={"name": "make-classification"},  # 12 features, not images
            backbone={"name": "lenet5"},  # needs images
            training={"epochs": 1, "batch_size": 50, "augmentation": ["crop"]},  # images only
            poisons=[{"name": "ops", "crafting_task": "classification"}],  # ops is not task-aware
        ),
    )

    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    problems = [
        line for line in err.splitlines() if line.startswith((f"error: {spec}:", f"{spec}:"))
    ]
    assert len(problems) == 3, err
    assert "training.augmentation" in err and "not images" in err
    assert "backbone 'lenet5'" in err and "needs image inputs" in err
    assert "poisons.0.crafting_task" in err and "task_aware" in err

    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet"]) == 2
    assert not (tmp_path / "runs").exists()  # the same checks, before anything is written


def test_one_arm_runs_from_the_spec_the_arm_and_the_run_folder_alone(tmp_path: Path) -> None:
    from harness.pluginmanager import get_components

    spec = write_spec(tmp_path / "t.yaml", tiny_spec("t", training={"epochs": 2, "batch_size": 50}))
    loaded = load_spec(spec, get_components())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Runner(loaded, get_components(), output_root=tmp_path / "whole").run()
        folder = RunFolder(tmp_path / "alone" / "t")
        folder.open(loaded.source.as_text(), loaded.resolved(), loaded.hash, loaded.spec.name)
        arm = plan_arms(loaded.spec)[1]  # a poisoned arm: its poison is generated from the spec too
        run_arm(loaded, arm, folder)  # nothing shared: the assembly and the poison are built here
    finally:
        torch.set_num_threads(threads)
    whole = RunFolder(tmp_path / "whole" / "t").store().read_arm(arm.id)
    alone = folder.store().read_arm(arm.id)
    np.testing.assert_array_equal(alone.sal, whole.sal)
    np.testing.assert_array_equal(alone.metrics["test_metric"], whole.metrics["test_metric"])
    assert alone.config == whole.config and alone.complete


def test_fresh_starts_a_new_run_and_keeps_the_old_one(tmp_path: Path, capsys) -> None:
    spec = tiny_spec(
        "f",
        backbone={"name": "linear"},
        poisons=[],
        training={"epochs": 1, "batch_size": 50},
        sal={"iterations": 1, "probe_size": 32},
    )
    path = write_spec(tmp_path / "f.yaml", spec)
    runs = tmp_path / "runs"
    assert main(["eval", str(path), "--output", str(runs), "--quiet"]) == 0
    old_hash = load_spec(path, load_components()).hash

    write_spec(path, {**spec, "training": {"epochs": 2, "batch_size": 50}})
    assert main(["eval", str(path), "--output", str(runs), "--quiet"]) == 2
    assert "--fresh" in capsys.readouterr().err
    assert main(["eval", str(path), "--output", str(runs), "--quiet", "--fresh"]) == 0

    (kept,) = runs.glob("f.replaced-*")
    assert RunFolder(kept).store().root_attrs()["spec_hash"] == old_hash
    new = RunFolder(runs / "f").store()
    assert new.root_attrs()["spec_hash"] == load_spec(path, load_components()).hash != old_hash
    assert new.read_arm("clean__none__s0").sal.shape[0] == 2


def _harness_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "harness" or node.module.startswith("harness."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "harness"}
    return found


@pytest.mark.parametrize(
    "path",
    [
        *sorted((REPO / "plugins").rglob("*.py")),
        # not the copy a test's `pip install` leaves under build/: the same file, and absent
        # from a fresh clone (its case made the count differ between a clone's first run and later)
        *sorted(
            p
            for p in (REPO / "tests" / "example_plugin").rglob("*.py")
            if "build" not in p.relative_to(REPO / "tests" / "example_plugin").parts
        ),
    ],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_plugins_import_only_from_harness_api(path: Path) -> None:
    assert _harness_imports(path) <= {"harness.api"}, path


def test_the_api_exports_every_base_class_and_record() -> None:
    import harness.api as api

    for name in (
        "Poison",
        "Defence",
        "TaskHead",
        "Metric",
        "Backbone",
        "DataBundle",
        "Split",
        "PoisonContext",
        "StepContext",
        "Params",
        "BuildContext",
        "PoisonRecord",
        "DefenceRecord",
        "DatasetRecord",
        "BackboneRecord",
        "TaskHeadRecord",
        "hookimpl",
    ):
        assert name in api.__all__ and hasattr(api, name), name
    assert issubclass(api.NoParams, api.Params)
    assert Poison is api.Poison
