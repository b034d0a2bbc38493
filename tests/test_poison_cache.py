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


REM_TINY = {
    "name": "rem",
    "params": {
        "train_steps": 6,
        "steps": 1,
        "attack_steps": 1,
        "eot_samples": 1,
        "surrogate": {"backbone": "small-cnn", "backbone_params": {"width": 4, "blocks": 2}},
    },
}


def cut_short(
    tmp_path: Path, monkeypatch, at_save: int, cache: Path | None = None
) -> tuple[Path, Path]:
    """A tiny REM spec whose generation, checkpointed at every step, stops (as on Ctrl-C) right
    after its checkpoint's save number `at_save`; (spec, cache)."""
    cache = cache or tmp_path / "cache"
    from harness.poison_cache import DiskCheckpoint

    monkeypatch.setenv("HARNESS_POISON_CHECKPOINT_S", "0")
    spec = write_spec(tmp_path / "rem.yaml", tiny_spec("rem", poisons=[REM_TINY]))
    saves = []
    original = DiskCheckpoint.save

    def save(self, state):
        original(self, state)
        saves.append(1)
        if len(saves) == at_save:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(DiskCheckpoint, "save", save)
        with pytest.raises(KeyboardInterrupt):
            poisoned(spec, tmp_path / "r1", cache)
    return spec, cache


def test_a_generation_cut_short_resumes_from_its_checkpoint_in_the_cache(tmp_path, monkeypatch):
    spec, cache = cut_short(tmp_path, monkeypatch, at_save=4)
    [unfinished] = [e for e in PoisonCache(cache).entries() if e.partial]
    assert unfinished.method == "rem" and unfinished.meta["seed"] == 0
    resumed, stages = poisoned(spec, tmp_path / "r2", cache)
    assert any("resuming its generation from the checkpoint" in s for s in stages)
    reference, _ = poisoned(spec, tmp_path / "r0", tmp_path / "reference-cache")
    assert torch.equal(resumed, reference)
    [stored] = PoisonCache(cache).entries()
    assert not stored.partial  # stored, and the checkpoint gone
    # its generation time counts the attempt cut short, up to its last checkpoint
    assert stored.meta["seconds"] > unfinished.meta["seconds"] > 0


def test_a_damaged_checkpoint_is_reported_and_the_generation_starts_over(tmp_path, monkeypatch):
    spec, cache = cut_short(tmp_path, monkeypatch, at_save=2)
    [checkpoint] = (cache / "partial").glob("*.pt")
    checkpoint.write_bytes(b"cut off mid-write")
    again, stages = poisoned(spec, tmp_path / "r2", cache)
    assert any("is damaged" in s and "from the start" in s for s in stages)
    assert not any("resuming" in s for s in stages)
    reference, _ = poisoned(spec, tmp_path / "r0", tmp_path / "reference-cache")
    assert torch.equal(again, reference)


def test_a_dry_run_and_the_cache_list_show_an_unfinished_generation(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "home"))
    spec, _ = cut_short(tmp_path, monkeypatch, at_save=1, cache=tmp_path / "home" / "poisons")
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert "rem (seed 0)  to generate, resuming an unfinished generation" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "rem (unfinished)" in listed and "0 poison(s) and 1 unfinished generation(s)" in listed


def test_clearing_the_cache_removes_unfinished_generations(tmp_path, monkeypatch):
    _, cache = cut_short(tmp_path, monkeypatch, at_save=1)
    removed = PoisonCache(cache).clear(method="rem")
    assert [e.partial for e in removed] == [True]
    assert not (tmp_path / "cache" / "partial").exists()


def test_checkpoint_interval_must_be_a_number(monkeypatch):
    from harness.errors import HarnessError
    from harness.poison_cache import checkpoint_interval_s

    monkeypatch.setenv("HARNESS_POISON_CHECKPOINT_S", "soon")
    with pytest.raises(HarnessError, match="HARNESS_POISON_CHECKPOINT_S"):
        checkpoint_interval_s()
    monkeypatch.setenv("HARNESS_POISON_CHECKPOINT_S", "30")
    assert checkpoint_interval_s() == 30.0


def test_a_refused_poison_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch):
    from harness.errors import PoisonContractError
    from harness_plugins.poisons import noise

    def out_of_range(self, data, ctx):
        ctx.checkpoint.save({"step": 1})
        return data.train.x + 5.0

    monkeypatch.setattr(noise.RandomNoise, "generate", out_of_range)
    spec = write_spec(tmp_path / "g.yaml", tiny_spec("g"))
    with pytest.raises(PoisonContractError):
        poisoned(spec, tmp_path / "r", tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.pt"))


HOLDER = """\
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from harness_plugins.poisons import noise
from test_poison_cache import poisoned

release = Path({release!r})
generate = noise.RandomNoise.generate

def slow(self, data, ctx):  # holds the generation until the test says so
    print("generating", flush=True)
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return generate(self, data, ctx)

noise.RandomNoise.generate = slow
poisoned(Path({spec!r}), Path("unused"), Path({cache!r}))
print("stored", flush=True)
"""


def test_a_run_waits_for_another_generating_the_same_poison_then_reads_it(tmp_path):
    # two runs sharing a poison, started side by side (Tables 2 and 3 share EM): the second
    # waits for the first's generation instead of generating it too, then reads the cache
    import subprocess
    import sys

    spec = write_spec(tmp_path / "h.yaml", tiny_spec("h"))
    release, cache = tmp_path / "release", tmp_path / "cache"
    script = HOLDER.format(
        tests=str(Path(__file__).parent), release=str(release), spec=str(spec), cache=str(cache)
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "generating"

        class Releasing(Recorder):
            def stage(self, message: str) -> None:
                super().stage(message)
                if "waiting" in message:
                    release.touch()  # only now may the first run finish

        reporter = Releasing()
        assembly = preflight(load_spec(spec, get_components()), get_components())
        arm = next(a for a in plan_arms(assembly.spec) if a.poison is not None)
        x = PoisonedInputs(assembly, PoisonCache(cache), reporter).for_arm(arm)
        out, err = holder.communicate(timeout=120)
    finally:
        holder.kill()
    assert holder.returncode == 0, err
    assert out.strip() == "stored"
    assert "is being generated by another run: waiting" in reporter.stages[0]
    assert any("from the cache" in s for s in reporter.stages)
    assert not any("generating poison" in s for s in reporter.stages)
    again, _ = poisoned(spec, tmp_path / "r", cache)
    assert torch.equal(x, again)
