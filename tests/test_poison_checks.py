"""What a poison generator returns is checked, and the cache never serves a stale or damaged poison
(issue 14, items 2, 5, 9 and 18).

Broken generators are registered in-process the way a notebook adds a plugin
(`load_components(extra_plugins=...)`); the cache's code digest and the CLI are exercised with a
plugin installed in a site folder and the real `harness` in a subprocess.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import write_spec
from trust_helpers import cli, no_traceback, plugin_site, tiny

from harness.api import Params, Poison, PoisonBudget, PoisonRecord, clamp_to_range, hookimpl
from harness.cli import main
from harness.errors import PoisonContractError
from harness.plan import plan_arms
from harness.pluginmanager import load_components
from harness.poison_cache import PoisonCache
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.progress import Reporter
from harness.specfile import load_spec


class EpsParams(Params):
    epsilon: float = 0.1


class NaNPoison(Poison):
    def generate(self, data, ctx):
        return data.train.x * float("nan")


class HugePoison(Poison):
    def generate(self, data, ctx):
        return data.train.x * 1e30


class LabelFlip(Poison):
    def generate(self, data, ctx):
        data.train.y[:] = 0  # "poisons" the labels in place
        return data.train.x.clone()


class InPlace(Poison):
    def generate(self, data, ctx):
        x = data.train.x
        x += 0.01  # changes the clean inputs every later arm trains on
        return x.clamp(0, 1)


class Overspent(Poison):
    def generate(self, data, ctx):
        noise = torch.rand(data.train.x.shape, generator=ctx.generator(1)) * 2 - 1
        return clamp_to_range(data.train.x + 3 * self.params.epsilon * noise, data.value_range)


class WithinBudget(Poison):
    def generate(self, data, ctx):
        noise = torch.rand(data.train.x.shape, generator=ctx.generator(1)) * 2 - 1
        return clamp_to_range(data.train.x + self.params.epsilon * noise, data.value_range)


class Broken:
    @hookimpl
    def harness_register_poisons(self) -> list[PoisonRecord]:
        budget = PoisonBudget("linf", "epsilon")
        return [
            PoisonRecord(name="nan-noise", factory=NaNPoison),
            PoisonRecord(name="huge-noise", factory=HugePoison),
            PoisonRecord(name="label-flip", factory=LabelFlip),
            PoisonRecord(name="in-place", factory=InPlace),
            PoisonRecord(name="overspent", factory=Overspent, params=EpsParams, budget=budget),
            PoisonRecord(name="within", factory=WithinBudget, params=EpsParams, budget=budget),
            PoisonRecord(
                name="within-l2",
                factory=WithinBudget,
                params=EpsParams,
                budget=PoisonBudget("l2", 0.1 * 8),  # 64 pixels × 0.1: at most 0.8
            ),
        ]


class Stages(Reporter):
    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, message: str) -> None:
        self.stages.append(message)


@pytest.fixture(scope="module")
def components():
    return load_components(extra_plugins=[("broken", Broken())])


def generate(tmp_path: Path, components, poison: str, cache: Path | None = None):
    spec = write_spec(tmp_path / "s.yaml", tiny(poisons=[{"name": poison}]))
    assembly = preflight(load_spec(spec, components), components)
    arm = next(a for a in plan_arms(assembly.spec) if a.poison is not None)
    reporter = Stages()
    inputs = PoisonedInputs(assembly, PoisonCache(cache or tmp_path / "cache"), reporter)
    return assembly, inputs.for_arm(arm), reporter.stages


@pytest.mark.parametrize(
    ("poison", "message"),
    [
        ("nan-noise", "returned 12800 value(s) that are NaN or infinite"),
        ("huge-noise", "outside the data's value range [0, 1]"),
        ("label-flip", "changed data.train.y (the labels) in place"),
        ("in-place", "changed data.train.x (the clean inputs) in place"),
        ("overspent", "by more than its declared linf budget of 0.1"),
    ],
)
def test_a_broken_poison_output_stops_the_run_naming_the_plugin(
    tmp_path, components, poison, message
):
    spec = write_spec(tmp_path / "s.yaml", tiny(poisons=[{"name": poison}]))
    assembly = preflight(load_spec(spec, components), components)
    labels, inputs = assembly.data.train.y.clone(), assembly.data.train.x.clone()
    arm = next(a for a in plan_arms(assembly.spec) if a.poison is not None)
    with pytest.raises(PoisonContractError) as raised:
        PoisonedInputs(assembly, PoisonCache(tmp_path / "cache"), Stages()).for_arm(arm)
    assert f"poison {poison!r} (label {poison}; plugin broken, <local> 0)" in str(raised.value)
    assert message in str(raised.value)
    # the data every other arm trains on is exactly what it was
    assert torch.equal(assembly.data.train.y, labels)
    assert torch.equal(assembly.data.train.x, inputs)
    assert not list((tmp_path / "cache").rglob("*.pt"))  # nothing broken is cached


def test_poisons_within_their_declared_budget_pass(tmp_path, components):
    for name in ("within", "within-l2"):
        assembly, x, _ = generate(tmp_path / name, components, name)
        assert (x - assembly.data.train.x).abs().max() <= 0.1 + 1e-6


def test_a_nan_poison_exits_1_naming_it_with_no_entries(tmp_path):
    source = (
        "from harness.api import Poison, PoisonRecord, hookimpl\n\n"
        "class NaNPoison(Poison):\n"
        "    def generate(self, data, ctx):\n"
        "        return data.train.x * float('nan')\n\n"
        "@hookimpl\n"
        "def harness_register_poisons():\n"
        "    return [PoisonRecord(name='nan-noise', factory=NaNPoison)]\n"
    )
    site = plugin_site(tmp_path, "nan_poison", source)
    spec = write_spec(tmp_path / "s.yaml", tiny(poisons=[{"name": "nan-noise"}]))
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert result.returncode == 1
    assert "error: poison 'nan-noise' (label nan-noise; plugin nan-poison:main" in result.stderr
    assert "NaN or infinite" in result.stderr
    no_traceback(result)
    assert not list((tmp_path / "runs" / "s").glob("entries/*.json"))


# --- item 9: a damaged cache entry is never used ------------------------------------------------


def test_a_bit_rotted_cached_poison_is_reported_deleted_and_generated_again(tmp_path, components):
    _, first, _ = generate(tmp_path, components, "within")
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    # bits flipped inside the tensor's bytes: the file still loads, the values differ
    record = torch.load(entry, weights_only=True)
    record["x"] = record["x"].clone()
    record["x"].view(-1)[:100] += 1 / 255
    torch.save(record, entry)
    _, again, stages = generate(tmp_path, components, "within")
    assert any("is damaged (its content does not match the digest" in s for s in stages), stages
    assert torch.equal(first, again)
    # 100 bits flipped anywhere in the file: unreadable or mismatching, never used
    (entry,) = (tmp_path / "cache").rglob("*.pt")
    data = bytearray(entry.read_bytes())
    rng = random.Random(0)
    for _ in range(100):
        i = rng.randrange(len(data) // 4, len(data))
        data[i] ^= 1 << rng.randrange(8)
    entry.write_bytes(bytes(data))
    _, third, stages = generate(tmp_path, components, "within")
    assert any("is damaged" in s for s in stages) and torch.equal(first, third)


# --- item 18: the key holds the generator's code; list and clear ---------------------------------

EDITABLE = """\
from harness.api import Poison, PoisonRecord, clamp_to_range, hookimpl

SHIFT = {shift}

class Shifted(Poison):
    def generate(self, data, ctx):
        return clamp_to_range(data.train.x + SHIFT, data.value_range)

@hookimpl
def harness_register_poisons():
    return [PoisonRecord(name="shifted", factory=Shifted)]
"""


def test_an_edited_generator_misses_the_cache_without_a_version_bump(tmp_path):
    site = plugin_site(tmp_path, "shifted_poison", EDITABLE.format(shift=0.01))
    spec = write_spec(tmp_path / "s.yaml", tiny(poisons=[{"name": "shifted"}]))
    env = {"HARNESS_CACHE": str(tmp_path / "cache")}
    first = cli("eval", str(spec), "--output", "a", cwd=tmp_path, site=site, env=env)
    assert first.returncode == 0, first.stderr
    assert "generating poison shifted" in first.stderr
    module = site / "shifted_poison" / "__init__.py"
    module.write_text(EDITABLE.format(shift=0.02))  # same distribution, same version 0.1.0
    second = cli("eval", str(spec), "--output", "b", cwd=tmp_path, site=site, env=env)
    assert second.returncode == 0, second.stderr
    assert "generating poison shifted" in second.stderr and "from the cache" not in second.stderr
    listed = cli("cache", "list", cwd=tmp_path, env=env)
    assert listed.returncode == 0
    assert f"poison cache: {tmp_path / 'cache' / 'poisons'}" in listed.stdout
    assert listed.stdout.count(" shifted ") == 2 and "2 poison(s)" in listed.stdout
    assert "digits" in listed.stdout and "seed 0" in listed.stdout


def test_cache_clear_removes_what_it_is_asked_to(tmp_path, components, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "home"))
    cache = tmp_path / "home" / "poisons"
    generate(tmp_path / "a", components, "within", cache)
    generate(tmp_path / "b", components, "within-l2", cache)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "within " in out and "within-l2" in out and "2 poison(s)" in out
    assert main(["cache", "clear", "--method", "within-l2"]) == 0
    assert "removed 1 poison(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--older-than", "1"]) == 0  # nothing is a day old
    assert "removed 0 poison(s)" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 poison(s)" in capsys.readouterr().out
    assert not list(cache.rglob("*.pt"))
