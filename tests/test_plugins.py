"""Plugins, used the way their authors and users meet them.

Three ways in, from the most real to the most convenient:

1. a third-party distribution found through its entry point (`harness plugins`, `harness eval`
   in a subprocess, with the distribution's metadata on PYTHONPATH: nothing is installed into
   the environment and nothing in this repository changes);
2. `load_components(extra_plugins=[(name, plugin)])`, the in-process way for tests and notebooks;
3. a distribution that is broken on import, which must never take the harness down with it.

The third-party package used throughout is `tests/example_plugin`, the worked example that
CONTRIBUTING.md walks through.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import DatasetRecord, PoisonRecord, hookimpl
from harness.data import DataBundle, Split
from harness.errors import DuplicateComponentError, PluginError, UnknownComponentError
from harness.pluginmanager import Components, PluginWarning, load_components
from harness.poison import Poison, PoisonContext

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_plugin"
QUICKSTART = REPO / "specs" / "quickstart.yaml"

TINY_SPEC = """\
name: stripes
data:
  name: digits
  subset: {train: 200, test: 100}
backbone:
  name: small-cnn
  params: {width: 4, blocks: 1}
training:
  epochs: 2
  batch_size: 64
  device: cpu
sal:
  iterations: 2
  probe_size: 64
poisons: [{name: example-stripes}]
"""


# --- helpers: "install" a distribution by writing the files pip would write -------------------


def install(site: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Write `<name>-<version>.dist-info` into `site`, as pip does; return the folder.

    importlib.metadata finds it on sys.path, so the harness sees a real distribution with a
    real `harness` entry point. The packages it names must be importable from `site` too.
    """
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{key} = {target}\n" for key, target in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[harness]\n{lines}", encoding="utf-8")
    return dist_info


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A site folder holding harness-example-poison 0.1.0, installed as a wheel would be."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copytree(
        EXAMPLE / "harness_example_poison",
        site / "harness_example_poison",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    install(site, "harness-example-poison", "0.1.0", {"example": "harness_example_poison"})
    return site


@pytest.fixture
def broken_site(site: Path) -> Path:
    """The same site plus harness-broken-plugin 0.0.1, whose module fails to import."""
    package = site / "harness_broken_plugin"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("harness-broken-plugin needs libfoo, which is not installed")\n',
        encoding="utf-8",
    )
    install(site, "harness-broken-plugin", "0.0.1", {"broken": "harness_broken_plugin"})
    return site


def harness(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `harness ARGS` in a fresh interpreter that sees the distributions in `site`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- 1. a third-party poison through its entry point --------------------------------------------


def test_installed_plugin_is_listed_with_its_distribution(site: Path, tmp_path: Path) -> None:
    result = harness("plugins", site=site, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "example-stripes" in line)
    assert "harness-example-poison 0.1.0" in line
    assert "follows: (example, not a published method)" in result.stdout
    assert "random-noise" in result.stdout  # the first-party plugins are still there
    assert "broken plugins" not in result.stdout


def test_installed_plugin_runs_from_a_spec(site: Path, tmp_path: Path) -> None:
    spec = tmp_path / "stripes.yaml"
    spec.write_text(TINY_SPEC, encoding="utf-8")

    result = harness(
        "eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet", site=site, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    entries = tmp_path / "runs" / "stripes" / "entries"
    assert sorted(p.name for p in entries.glob("*.json")) == [
        "clean__none__s0.json",
        "example-stripes__none__s0.json",
    ]
    entry = json.loads((entries / "example-stripes__none__s0.json").read_text(encoding="utf-8"))
    assert entry["poison"]["name"] == "example-stripes"
    assert entry["poison"]["distribution"] == "harness-example-poison"
    assert entry["poison"]["version"] == "0.1.0"
    assert entry["poison"]["plugin"] == "harness-example-poison:example"
    assert entry["poison"]["params"] == {"epsilon": 8 / 255, "period": 8}  # the Params defaults


# --- 2. in-process registration ----------------------------------------------------------------


class Keep(Poison):
    """Returns the data unchanged; enough for registry tests."""

    def generate(self, data: DataBundle, ctx: PoisonContext) -> torch.Tensor:
        return data.train.x.clone()


def poison(name: str) -> PoisonRecord:
    return PoisonRecord(name=name, factory=Keep, description=f"{name} (test)")


class GoodPlugin:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        return [poison("good-noise")]


class AlsoGoodNoise:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        return [poison("good-noise")]


class HookRaises:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        raise RuntimeError("cannot reach the model zoo")


class ReturnsNotAList:
    @hookimpl
    def harness_register_poisons(self) -> PoisonRecord:
        return poison("lonely")


class ReturnsWrongRecordType:
    @hookimpl
    def harness_register_poisons(self) -> list[DatasetRecord]:
        return [DatasetRecord(name="not-a-poison", factory=lambda params: None)]


class BadRecordName:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        return [poison("My Poison")]


class UnknownHook:
    @hookimpl
    def harness_register_poison(self) -> list[PoisonRecord]:  # singular: a typo
        return [poison("typo-noise")]


class UnknownSpecname:
    @hookimpl(specname="harness_register_poison")  # the same typo, made in specname
    def my_poisons(self) -> list[PoisonRecord]:
        return [poison("typo-noise")]


class NamedBySpecname:
    @hookimpl(specname="harness_register_poisons")
    def extra_poisons(self) -> list[PoisonRecord]:
        return [poison("renamed-noise")]


def load(*plugins: tuple[str, object], strict: bool = False) -> Components:
    """Only the given plugins, none from entry points: what a test or a notebook does."""
    return load_components(entry_points=False, extra_plugins=plugins, strict=strict)


def test_an_in_process_plugin_is_registered_as_local() -> None:
    components = load(("mine", GoodPlugin()))

    registered = components.get("poison", "good-noise")
    assert registered.provenance() == {"plugin": "mine", "distribution": "<local>", "version": "0"}
    assert components.failures == []


def test_a_hook_may_have_another_name_given_by_specname() -> None:
    components = load(("mine", NamedBySpecname()))

    assert components["poison"].names() == ["renamed-noise"]
    assert components.failures == []


def test_the_example_package_registers_in_process_and_keeps_the_poison_contract(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import harness_example_poison

    record = load(("example", harness_example_poison)).get("poison", "example-stripes").record
    params = record.params(epsilon=0.1)
    generator = record.factory(params)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 8, 8, generator=g)
    y = torch.arange(30) % 3
    data = DataBundle("toy", Split(x, y), Split(x[:6], y[:6]), classes=["a", "b", "c"])
    ctx = PoisonContext(
        seed=0,
        device=torch.device("cpu"),
        data=data,
        build_model=lambda name, params: torch.nn.Identity(),
        task_loss=torch.nn.functional.cross_entropy,
    )
    poisoned = generator.generate(data, ctx)

    assert poisoned.shape == x.shape
    assert poisoned.min() >= 0 and poisoned.max() <= 1  # inside data.value_range
    assert (poisoned - x).abs().max() <= 0.1 + 1e-6  # inside the L∞ ball
    assert torch.equal(poisoned, generator.generate(data, ctx))  # deterministic
    assert torch.equal(data.train.y, y)  # labels never change
    # class-wise: images of one class share a pattern wherever no clamping happened
    delta = poisoned - x
    unclamped = (x > 0.1) & (x < 0.9)
    same_class = (y == 1).nonzero().flatten()
    first, second = same_class[0], same_class[1]
    both = unclamped[first] & unclamped[second]
    assert torch.allclose(delta[first][both], delta[second][both])


def test_two_plugins_may_not_register_one_name() -> None:
    with pytest.raises(DuplicateComponentError) as excinfo:
        load(("alpha", GoodPlugin()), ("beta", AlsoGoodNoise()))

    message = str(excinfo.value)
    assert "'good-noise'" in message
    assert "plugin alpha" in message and "plugin beta" in message


def test_an_unknown_name_suggests_the_closest_one() -> None:
    components = load(("mine", GoodPlugin()))

    with pytest.raises(UnknownComponentError, match="did you mean 'good-noise'"):
        components.get("poison", "good-nosie")


@pytest.mark.parametrize(
    ("plugin", "reason"),
    [
        (HookRaises(), "harness_register_poisons raised RuntimeError: cannot reach the model zoo"),
        (ReturnsNotAList(), "returned PoisonRecord, not a list"),
        (ReturnsWrongRecordType(), "returned a DatasetRecord, expected PoisonRecord"),
        (BadRecordName(), "name 'My Poison' must be lower-case"),
        (
            UnknownHook(),
            "unknown hook harness_register_poison: did you mean 'harness_register_poisons'",
        ),
        (UnknownSpecname(), "unknown hook harness_register_poison: did you mean"),
    ],
    ids=[
        "hook-raises",
        "not-a-list",
        "wrong-record-type",
        "bad-name",
        "unknown-hook",
        "unknown-specname",
    ],
)
def test_a_broken_plugin_is_reported_and_the_good_ones_still_load(
    plugin: object, reason: str
) -> None:
    with pytest.warns(PluginWarning, match="plugin broken"):
        components = load(("good", GoodPlugin()), ("broken", plugin))

    assert components["poison"].names() == ["good-noise"]
    (failure,) = components.failures
    assert failure.plugin == "broken"
    assert failure.distribution == "<local>"
    assert reason in failure.error


def test_strict_loading_turns_a_broken_plugin_into_an_error() -> None:
    with pytest.raises(PluginError, match="plugin broken .* cannot reach the model zoo"):
        load(("good", GoodPlugin()), ("broken", HookRaises()), strict=True)


# --- 3. a distribution that fails to import ------------------------------------------------------


def test_a_plugin_that_fails_to_import_is_listed_as_broken(
    broken_site: Path, tmp_path: Path
) -> None:
    result = harness("plugins", site=broken_site, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "random-noise" in result.stdout and "example-stripes" in result.stdout
    broken = result.stdout.split("broken plugins:", 1)[1]
    assert "harness-broken-plugin:broken (harness-broken-plugin 0.0.1)" in broken
    assert "import failed: ImportError: harness-broken-plugin needs libfoo" in broken
    assert "warning: plugin harness-broken-plugin:broken" in result.stderr


def test_strict_refuses_a_plugin_that_fails_to_import(broken_site: Path, tmp_path: Path) -> None:
    result = harness("plugins", "--strict", site=broken_site, cwd=tmp_path)

    assert result.returncode != 0
    assert "harness-broken-plugin" in result.stderr
    assert "Traceback" not in result.stderr


def test_specs_still_validate_next_to_a_broken_plugin(broken_site: Path, tmp_path: Path) -> None:
    result = harness("validate", str(QUICKSTART), site=broken_site, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert "warning: plugin harness-broken-plugin:broken" in result.stderr


# --- 4. one component in full: harness plugins NAME ----------------------------------------------


def test_plugins_name_shows_kind_origin_paper_deviations_and_parameters(capsys) -> None:
    from harness.cli import main

    assert main(["plugins", "em"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("em  (poison)")
    assert "harness 0.1.0 (plugin harness:poisons.em)" in out
    assert "follows:     Huang" in out and "differs:" in out and "task-aware:  yes" in out
    # every parameter with its type, default and description, nested ones by dotted name
    assert "epsilon" in out and "float > 0, ≤ 1" in out and "L∞ bound of δ" in out
    assert "surrogate.batch_size" in out and "default 512" in out


def test_plugins_name_as_json_and_for_a_family_variant(capsys) -> None:
    from harness.cli import main

    assert main(["plugins", "timm:resnet18", "--json"]) == 0
    (timm,) = json.loads(capsys.readouterr().out)
    assert timm["kind"] == "backbone" and timm["name"] == "timm"
    assert {p["name"] for p in timm["params"]} == {"kwargs", "small_input"}


def test_plugins_name_unknown_suggests_a_close_name(capsys) -> None:
    from harness.cli import main

    assert main(["plugins", "nonee"]) == 2
    assert "no component named 'nonee': did you mean 'none'?" in capsys.readouterr().err
