"""What a result depends on, and nothing else (issue 14, items 4, 17 and 19).

The track (what makes entries comparable) holds the data's content, not where it lives, and the
recipe without the device; the spec hash leaves the device out, so a run resumes on another
machine, which its entries record. Entries record the threads and determinism switches the
numbers depend on. An arm whose plugin changed since it started is refused, not continued.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_spec
from PIL import Image
from trust_helpers import cli, no_traceback, plugin_site, tiny

import harness.runner as runner_module
from harness.checkpoint import load_state, save_state
from harness.cli import main
from harness.entries import read_entries
from harness.errors import RunStateError
from harness.plan import plan_arms
from harness.pluginmanager import get_components, load_components
from harness.preflight import preflight
from harness.runfolder import RunFolder
from harness.runner import Runner
from harness.specfile import load_spec, spec_hash
from harness.submit import verify_run
from harness.sysinfo import hardware_differs


def image_tree(root: Path, seed: int = 0) -> Path:
    """Two classes of tiny PNGs in train/ and test/."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", 8), ("test", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def track_of(spec_path: Path) -> dict:
    components = get_components()
    assembly = preflight(load_spec(spec_path, components), components)
    return assembly.arm_config(plan_arms(assembly.spec)[0]).track.model_dump(mode="json")


def test_the_same_data_at_two_paths_is_one_track_and_no_path_is_recorded(tmp_path):
    first = image_tree(tmp_path / "here" / "shapes")
    second = Path(shutil.copytree(first, tmp_path / "elsewhere" / "copy"))

    def spec(root: Path, name: str) -> Path:
        return write_spec(
            tmp_path / f"{name}.yaml",
            tiny(name, data={"name": "image-folder", "params": {"root": str(root)}}),
        )

    a, b = track_of(spec(first, "a")), track_of(spec(second, "b"))
    assert a == b
    assert "root" not in a["dataset"]["params"] and str(tmp_path) not in json.dumps(a)
    assert len(a["dataset"]["fingerprint"]) == 64
    # other content is another track
    with Image.open(second / "train" / "a" / "0.png") as img:
        changed = np.asarray(img).copy()
    changed[0, 0] = 255 - changed[0, 0]
    Image.fromarray(changed).save(second / "train" / "a" / "0.png")
    assert track_of(spec(second, "c"))["dataset"]["fingerprint"] != a["dataset"]["fingerprint"]


def test_the_device_is_in_neither_the_track_nor_the_spec_hash(tmp_path):
    auto = write_spec(tmp_path / "auto.yaml", tiny(training={"epochs": 2, "device": "auto"}))
    cpu = write_spec(tmp_path / "cpu.yaml", tiny(training={"epochs": 2, "device": "cpu"}))
    assert load_spec(auto, get_components()).hash == load_spec(cpu, get_components()).hash
    assert track_of(auto) == track_of(cpu)
    assert "device" not in track_of(auto)["training"]
    # the run started with `auto` goes on with `cpu`, without --fresh
    assert main(["eval", str(auto), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    assert main(["eval", str(cpu), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    (entry, *_) = read_entries(tmp_path / "runs" / "t")
    assert "device" not in entry.track.training


def test_entries_record_threads_and_determinism_settings(small_runs):
    for entry in read_entries(small_runs["lin"]):
        hw = entry.hardware
        assert hw["torch_threads"] == 1  # conftest trains its runs on one thread
        for key in (
            "torch_interop_threads",
            "omp_num_threads",
            "deterministic_algorithms",
            "cudnn_deterministic",
            "cudnn_benchmark",
            "cpu_capability",  # which kernels torch dispatched to: machines round differently
            "cpu_isa",
            "kernel_dispatch_env",
        ):
            assert key in hw, key
        assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_kernel_dispatch_overrides_are_recorded(monkeypatch):
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    hw = runner_module.hardware(torch.device("cpu"))
    assert hw["kernel_dispatch_env"]["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert "ONEDNN_MAX_CPU_ISA" not in hw["kernel_dispatch_env"]  # only what is set


def test_a_fact_an_older_harness_did_not_record_is_not_another_machine():
    here = runner_module.hardware(torch.device("cpu"))
    older = {k: v for k, v in here.items() if k not in ("cpu_isa", "cpu_capability")}
    assert not hardware_differs(older, here)  # upgraded harness, same machine
    assert hardware_differs(here, {**here, "cpu_isa": ["avx", "avx2"]})  # another CPU
    assert hardware_differs(here, older)  # a fact the machine can no longer tell
    assert hardware_differs(older, {**here, "torch_threads": here["torch_threads"] + 1})


def test_a_run_resumed_on_another_machine_records_it(tmp_path, monkeypatch):
    spec = write_spec(tmp_path / "m.yaml", tiny("m", poisons=[]))
    components = get_components()

    class Killed(BaseException):
        pass

    real_record = RunFolder.record_epoch

    def killed_at_epoch_2(self, arm_id, state, *args, **kwargs):
        if state.epochs_done == 2:
            raise Killed
        return real_record(self, arm_id, state, *args, **kwargs)

    def run() -> None:
        runner = Runner(load_spec(spec, components), components, output_root=tmp_path / "runs")
        runner.prepare()
        runner.run()

    monkeypatch.setattr(RunFolder, "record_epoch", killed_at_epoch_2)
    with pytest.raises(Killed):
        run()
    monkeypatch.undo()
    real_hardware = runner_module.hardware
    elsewhere = {**real_hardware(torch.device("cpu")), "cpu": "another-cpu", "torch_threads": 16}
    monkeypatch.setattr(runner_module, "hardware", lambda device: dict(elsewhere))
    run()
    (entry,) = read_entries(tmp_path / "runs" / "m")
    assert entry.hardware["cpu"] != "another-cpu"  # where it started
    assert entry.hardware["resumed"] == [{"epoch": 2, "hardware": elsewhere}]
    assert len(verify_run(tmp_path / "runs" / "m")) == 1  # and the record is consistent


def test_a_run_hashed_before_the_device_left_the_hash_resumes_and_submits(
    small_runs, tmp_path, capsys
):
    shutil.copy(small_runs["figs"].parent.parent / "figs.yaml", tmp_path / "figs.yaml")
    run = Path(shutil.copytree(small_runs["figs"], tmp_path / "runs" / "figs"))
    with h5py.File(run / "run.h5", "a") as f:  # as an older harness wrote it
        spec = json.loads(f.attrs["spec"])
        f.attrs["spec_hash"] = spec_hash(spec, with_device=True)
    (run / "spec.resolved.json").write_text(
        json.dumps({"spec_hash": spec_hash(spec, with_device=True), "spec": spec})
    )
    assert main(["score", str(run)]) == 0
    args = ["eval", str(tmp_path / "figs.yaml"), "--output", str(tmp_path / "runs"), "--quiet"]
    assert main(args) == 0  # recognised as this spec's run: resumed, not refused
    assert not list((tmp_path / "runs").glob("figs.replaced-*"))
    assert len(verify_run(run)) == 3


# --- item 4: an arm whose plugin changed between a kill and the resume ------------------------


def interrupted_after_one_epoch(run: Path, arm_id: str) -> None:
    """Bring a finished arm back to where a kill after its first epoch would have left it."""
    folder = RunFolder(run)
    state = load_state(folder.checkpoint(arm_id))
    assert state is not None
    state.rows, state.complete = state.rows[:1], False
    state.seal()
    save_state(folder.checkpoint(arm_id), state)
    folder.store().truncate_arm(arm_id, 1)


STRIPES = Path(__file__).parent / "example_plugin" / "harness_example_poison" / "__init__.py"


def test_resuming_an_arm_on_an_upgraded_plugin_is_refused(tmp_path):
    site = plugin_site(tmp_path, "harness_example_poison", STRIPES.read_text(), version="0.1.0")
    spec = write_spec(tmp_path / "s.yaml", tiny("s", poisons=[{"name": "example-stripes"}]))
    assert cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site).returncode == 0
    run = tmp_path / "runs" / "s"
    interrupted_after_one_epoch(run, "example-stripes__none__s0")
    dist = next(site.glob("*.dist-info"))
    dist.rename(site / "harness_example_poison-0.2.0.dist-info")
    metadata = site / "harness_example_poison-0.2.0.dist-info" / "METADATA"
    metadata.write_text(metadata.read_text().replace("0.1.0", "0.2.0"))
    result = cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert result.returncode == 2
    assert "arm example-stripes__none__s0 cannot resume" in result.stderr
    assert "poison 'example-stripes': version 0.1.0 → 0.2.0" in result.stderr
    assert "delete" in result.stderr and "example-stripes__none__s0.pt" in result.stderr
    no_traceback(result)
    # as told: without its checkpoint the arm trains again, on the new version
    (run / "checkpoints" / "example-stripes__none__s0.pt").unlink()
    again = cli("eval", str(spec), "--quiet", cwd=tmp_path, site=site)
    assert again.returncode == 0, again.stderr
    (entry,) = [e for e in read_entries(run) if e.poison is not None]
    assert entry.poison.version == "0.2.0"


def test_resuming_an_arm_whose_plugin_code_changed_is_refused(small_runs, tmp_path, monkeypatch):
    run = Path(shutil.copytree(small_runs["figs"], tmp_path / "runs" / "figs"))
    interrupted_after_one_epoch(run, "noise-class__none__s0")
    import harness.armconfig as armconfig

    real = armconfig.code_digest
    monkeypatch.setattr(
        armconfig,
        "code_digest",
        lambda factory: "f" * 64 if "noise" in factory.__module__ else real(factory),
    )
    components = load_components()
    spec = load_spec(small_runs["figs"].parent.parent / "figs.yaml", components)
    runner = Runner(spec, components, output_root=tmp_path / "runs")
    with pytest.raises(
        RunStateError, match=r"poison 'random-noise': code [0-9a-f]{12} → ffffffffffff"
    ):
        runner.prepare()
    # a version change is named the same way
    monkeypatch.undo()
    registry = components.registries["poison"]
    registry._items["random-noise"] = replace(registry._items["random-noise"], version="9.9.9")
    with pytest.raises(RunStateError, match="version 0.1.0 → 9.9.9"):
        Runner(spec, components, output_root=tmp_path / "runs").prepare()
