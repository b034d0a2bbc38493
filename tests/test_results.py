"""Results in notebooks: `harness.run`, `harness.open_run`, arrays, data frames and re-scoring."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_spec

import harness
from harness.entries import read_entries
from harness.errors import HarnessError
from harness.scoring import learnable_threshold

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("nb")
        return harness.run(tiny_spec("nb", training={"epochs": 2, "batch_size": 50}), output=out)
    finally:
        torch.set_num_threads(threads)


def test_a_spec_as_a_dict_runs_and_opens_as_a_run(tiny_run) -> None:
    assert tiny_run.name == "nb"
    assert tiny_run.arms == ["clean__none__s0", "noise-class__none__s0", "noise-sample__none__s0"]
    arm = tiny_run["noise-class__none__s0"]
    assert arm.sal.shape == (2, len(arm.layers)) and arm.layers[-1] == "head.weight"
    assert arm.metrics["test_metric"].shape == (2,) and arm.complete
    assert arm.config.poison.params["mode"] == "class-wise"


def test_frames_have_epochs_as_rows_and_layers_or_metrics_as_columns(tiny_run) -> None:
    arm = tiny_run["clean__none__s0"]
    sal = arm.sal_frame()
    assert list(sal.index) == [1, 2] and list(sal.columns) == arm.layers
    np.testing.assert_array_equal(sal.to_numpy(), arm.sal)
    assert "train_loss" in arm.metrics_frame().columns
    entries = tiny_run.entries_frame()
    assert set(entries["arm"]) == set(tiny_run.arms)
    stored = {e.arm_id: e.results.ud for e in read_entries(tiny_run.path)}
    for row in entries.itertuples():
        assert row.ud == pytest.approx(stored[row.arm])


def test_open_run_reads_without_training(tiny_run) -> None:
    again = harness.open_run(tiny_run.path)
    np.testing.assert_array_equal(again["clean__none__s0"].sal, tiny_run["clean__none__s0"].sal)
    with pytest.raises(KeyError, match="no arm 'nope'"):
        again["nope"]


def test_rescoring_with_the_clean_arms_own_beta_gives_the_entries(tiny_run) -> None:
    clean = tiny_run["clean__none__s0"]
    same = tiny_run.rescore(beta_from=clean)
    assert (
        same.beta
        == pytest.approx(tiny_run.beta())
        == pytest.approx(learnable_threshold(clean.sal)[0])
    )
    for entry in read_entries(tiny_run.path):
        assert same.ud[entry.arm_id] == pytest.approx(entry.results.ud)
        assert same.lp[entry.arm_id] == pytest.approx(entry.results.lp)
    everything = tiny_run.rescore(beta=-1.0)  # every layer above β: every arm counts all layers
    assert set(everything.lp.values()) == {float(len(clean.layers))}
    with pytest.raises(HarnessError, match="either beta or beta_from"):
        tiny_run.rescore()


def test_the_readmes_notebook_example_runs(tmp_path: Path, monkeypatch) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## In a notebook") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) == 5  # five lines, as promised
    (tmp_path / "specs").mkdir()
    quick = (REPO / "specs" / "quickstart.yaml").read_text(encoding="utf-8")
    # the README's own spec, shortened to keep the test quick
    quick = quick.replace("epochs: 8", "epochs: 1").replace("iterations: 10", "iterations: 1")
    (tmp_path / "specs" / "quickstart.yaml").write_text(quick, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "quickstart" / "entries" / "noise-class__none__s0.json").exists()
