"""Generated poisons are cached on disk and reused across runs; a failed generation leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_spec, write_spec

from harness.plan import plan_arms
from harness.pluginmanager import get_components
from harness.poison_cache import PoisonCache
from harness.poisoning import PoisonedInputs
from harness.preflight import preflight
from harness.progress import Reporter
from harness.specfile import load_spec


class Recorder(Reporter):
    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, message: str) -> None:
        self.stages.append(message)


def poisoned(spec_path: Path, output: Path, cache: Path) -> tuple[torch.Tensor, list[str]]:
    reporter = Recorder()
    assembly = preflight(load_spec(spec_path, get_components()), get_components())
    arm = next(a for a in plan_arms(assembly.spec) if a.poison is not None)
    return PoisonedInputs(assembly, PoisonCache(cache), reporter).for_arm(arm), reporter.stages


def test_a_second_run_reads_the_poison_from_the_cache(tmp_path):
    spec = write_spec(tmp_path / "a.yaml", tiny_spec("a"))
    first, stages = poisoned(spec, tmp_path / "runs1", tmp_path / "cache")
    assert any("generating poison" in s for s in stages)
    second, stages = poisoned(spec, tmp_path / "runs2", tmp_path / "cache")
    assert any("from the cache" in s for s in stages) and not any("generating" in s for s in stages)
    assert torch.equal(first, second)


def test_changing_the_poison_parameters_or_seed_misses_the_cache(tmp_path):
    base = tiny_spec("b")
    poisoned(write_spec(tmp_path / "b.yaml", base), tmp_path / "r1", tmp_path / "cache")
    other_eps = {
        **base,
        "poisons": [{"name": "random-noise", "label": "noise-sample", "params": {"epsilon": 0.2}}],
    }
    _, stages = poisoned(
        write_spec(tmp_path / "c.yaml", other_eps), tmp_path / "r2", tmp_path / "cache"
    )
    assert any("generating poison" in s for s in stages)
    _, stages = poisoned(
        write_spec(tmp_path / "d.yaml", {**base, "seeds": [1]}), tmp_path / "r3", tmp_path / "cache"
    )
    assert any("generating poison" in s for s in stages)


def test_an_interrupted_generation_leaves_no_cache_entry(tmp_path, monkeypatch):
    from harness_plugins.poisons import noise

    def interrupted(self, data, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(noise.RandomNoise, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        poisoned(
            write_spec(tmp_path / "e.yaml", tiny_spec("e")), tmp_path / "r", tmp_path / "cache"
        )
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_a_damaged_cache_entry_is_a_miss_not_an_error(tmp_path):
    spec = write_spec(tmp_path / "f.yaml", tiny_spec("f"))
    first, _ = poisoned(spec, tmp_path / "r1", tmp_path / "cache")
    for entry in (tmp_path / "cache").rglob("*.pt"):
        entry.write_bytes(b"not a tensor")
    again, stages = poisoned(spec, tmp_path / "r2", tmp_path / "cache")
    assert any("generating poison" in s for s in stages) and torch.equal(first, again)
