"""Multi-task and cross-task runs: per-task SAL in the run file, per-task UD, similarity, refusals."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.cli import main
from harness.entries import compute_entries, read_entries
from harness.errors import SpecError
from harness.pluginmanager import get_components
from harness.runner import Runner
from harness.scoring import learnable_proportion, task_similarity
from harness.specfile import load_spec

TASKS = ["classification", "segmentation", "depth"]


def multitask_spec(name: str = "mt", **overrides) -> dict:
    spec = {
        "name": name,
        "data": {"name": "shapes-multitask", "params": {"train": 96, "test": 48, "size": 16}},
        "tasks": [
            {"name": "classification", "label": "shape"},
            {"name": "segmentation", "params": {"hidden": 8}},
            {"name": "depth", "weight": 0.5, "params": {"hidden": 8}},
        ],
        "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 2}},
        "training": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "sal": {"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
        "poisons": [
            {
                "name": "em",
                "label": "em-all",
                "crafting_task": "all",
                "params": {
                    "max_rounds": 1,
                    "train_steps": 2,
                    "steps": 2,
                    "surrogate": {
                        "backbone": "small-cnn",
                        "backbone_params": {"width": 4, "blocks": 2},
                    },
                },
            },
        ],
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory) -> Path:
    from conftest import write_spec

    root = tmp_path_factory.mktemp("mt")
    spec = write_spec(root / "mt.yaml", multitask_spec())
    assert main(["eval", str(spec), "--output", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / "mt"


def test_run_file_holds_sal_per_task_over_the_backbone_layers(multitask_run: Path):
    with h5py.File(multitask_run / "run.h5", "r") as f:
        arm = f["arms/em-all__none__s0"]
        backbone = [s.decode() for s in arm["tasks/layer_names"][()]]
        assert backbone and all(name.startswith("backbone.") for name in backbone)
        for task in ("shape", "segmentation", "depth"):
            sal = arm[f"tasks/{task}/sal"][()]
            assert sal.shape == (2, len(backbone)) and np.isfinite(sal).all()
            assert np.isfinite(arm[f"metrics/test_metric.{task}"][()]).all()
        # the tasks' losses differ, so their SAL vectors do too
        assert not np.allclose(arm["tasks/shape/sal"][()], arm["tasks/depth/sal"][()])
        # the summed loss is still probed over every layer, heads included
        assert arm["sal"].shape[1] > len(backbone)


def test_one_entry_per_task_with_its_own_ud_metric_and_similarity(multitask_run: Path):
    entries = {e.entry_id: e for e in read_entries(multitask_run)}
    assert set(entries) == {
        f"{arm}__{task}"
        for arm in ("clean__none__s0", "em-all__none__s0")
        for task in ("shape", "segmentation", "depth")
    }
    seg = entries["em-all__none__s0__segmentation"]
    assert seg.evaluated_task == "segmentation" and seg.crafting_task == "all"
    assert seg.results.test_metric.name == "miou" and seg.results.test_metric.higher_is_better
    depth = entries["em-all__none__s0__depth"]
    assert depth.results.test_metric.higher_is_better is False
    assert set(seg.results.task_similarity_per_epoch) == {"shape", "depth"}
    assert len(seg.results.learnable_proportion_per_epoch) == 2
    assert entries["clean__none__s0__shape"].results.ud == pytest.approx(1.0)
    # entries of different tasks never share a track, so the leaderboard never ranks them together
    assert len({e.track.id for e in entries.values()}) == 3
    assert seg.track.tasks is not None and [t["label"] for t in seg.track.tasks] == [
        "shape",
        "segmentation",
        "depth",
    ]
    # and they are recomputed from the run file alone
    assert {e.entry_id: e for e in compute_entries(multitask_run)} == entries


def test_similarity_and_proportion_follow_their_definitions():
    a = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    b = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    sim = task_similarity({"a": a, "b": b})
    assert sim.shape == (2, 2, 2)
    assert sim[0, 0, 1] == pytest.approx(1.0)
    assert sim[1, 0, 1] == pytest.approx(0.0)
    assert learnable_proportion(a, 0.5).tolist() == pytest.approx([2 / 3, 2 / 3])


def test_cross_task_poison_is_crafted_on_one_task_and_evaluated_on_another(tmp_path: Path):
    from conftest import write_spec

    spec = multitask_spec(
        "cross",
        tasks=[],
        task="classification",
        training={"epochs": 1, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        poisons=[
            {**multitask_spec()["poisons"][0], "label": "em-seg", "crafting_task": "segmentation"}
        ],
    )
    del spec["tasks"]
    path = write_spec(tmp_path / "cross.yaml", spec)
    assert main(["eval", str(path), "--output", str(tmp_path / "runs"), "--quiet"]) == 0
    entry = next(
        e for e in read_entries(tmp_path / "runs" / "cross") if e.arm_id == "em-seg__none__s0"
    )
    assert entry.crafting_task == "segmentation" and entry.evaluated_task == "classification"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"training": {"epochs": 1, "batch_size": 32, "augmentation": ["flip"]}},
            "augmentation: crop and flip move the pixels but not the dense targets",
        ),
        (
            {
                "backbone": "lenet5",
                "data": {"name": "shapes-multitask", "params": {"train": 64, "test": 32}},
            },
            "gives no feature map, which the dense task",
        ),
        (
            {"poisons": [{"name": "ops", "crafting_task": "segmentation"}]},
            "poison 'ops' does not declare `task_aware`",
        ),
        ({"defences": ["mixup"]}, "defence 'mixup' mixes images and class labels"),
        ({"data": {"name": "digits"}}, "needs the target 'segmentation'"),
    ],
)
def test_refused_before_anything_is_written(tmp_path: Path, overrides: dict, message: str):
    from conftest import write_spec

    path = write_spec(tmp_path / "bad.yaml", multitask_spec("bad", **overrides))
    runner = Runner(
        load_spec(path, get_components()), get_components(), output_root=tmp_path / "runs"
    )
    with pytest.raises(SpecError, match=message) as err:
        runner.prepare()
    assert str(path) in str(err.value)  # the error names the file (and line)
    assert not (tmp_path / "runs").exists()


def test_task_and_tasks_together_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from conftest import write_spec

    path = write_spec(tmp_path / "both.yaml", multitask_spec("both", task="segmentation"))
    assert main(["validate", str(path)]) != 0
    assert "give either `task` (one task) or `tasks`" in capsys.readouterr().err


def test_report_draws_the_multitask_figures(multitask_run: Path):
    from harness.report import build_figures, load_run

    figs = build_figures(load_run(multitask_run))
    sim = figs["task_similarity"]
    panels = [ax for ax in sim.axes if ax.get_label().startswith("similarity:")]
    assert [ax.get_label() for ax in panels] == ["similarity:clean", "similarity:em-all"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["shape", "segmentation", "depth"]
    assert panels[0].texts[0].get_text() == "1.00"  # a task is fully similar to itself
    proportion = figs["task_learnable_proportion"]
    lines = [ax for ax in proportion.axes if ax.get_label().startswith("proportion:")][
        0
    ].get_lines()
    assert [line.get_label() for line in lines] == ["shape", "segmentation", "depth"]
    assert all(0.0 <= v <= 1.0 for line in lines for v in line.get_ydata())
    metric_panels = [
        ax.get_label() for ax in figs["task_metrics"].axes if ax.get_label().startswith("metric:")
    ]
    assert metric_panels == ["metric:shape", "metric:segmentation", "metric:depth"]


def test_a_killed_multitask_run_with_a_damaged_file_resumes_to_the_same_entries(tmp_path: Path):
    from conftest import write_spec
    from test_resume import VOLATILE, finish, harness_eval, kill_when

    spec = write_spec(
        tmp_path / "mtr.yaml",
        multitask_spec(
            "mtr",
            poisons=[],
            training={"epochs": 3, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        ),
    )
    finish(spec, tmp_path / "reference")
    run = tmp_path / "runs" / "mtr"
    kill_when(
        harness_eval(spec, tmp_path / "runs"),
        lambda: (run / "checkpoints" / "clean__none__s0.pt").exists(),
    )
    data = (run / "run.h5").read_bytes()
    (run / "run.h5").write_bytes(
        data[: len(data) // 3]
    )  # what a kill inside an HDF5 write can leave
    finish(spec, tmp_path / "runs")

    def comparable(folder: Path) -> dict[str, dict]:
        return {e.entry_id: e.model_dump(exclude=VOLATILE) for e in read_entries(folder)}

    assert comparable(run) == comparable(tmp_path / "reference" / "mtr")
    with h5py.File(run / "run.h5") as a, h5py.File(tmp_path / "reference" / "mtr" / "run.h5") as b:
        for task in ("shape", "segmentation", "depth"):
            key = f"arms/clean__none__s0/tasks/{task}/sal"
            np.testing.assert_array_equal(a[key][()], b[key][()])


def test_training_curves_of_a_multitask_run_show_the_summed_loss_only(multitask_run: Path):
    from harness.report import build_figures, load_run

    curves = build_figures(load_run(multitask_run))["training_curves"]
    assert [ax.get_label() for ax in curves.axes] == ["train_loss"]


def test_a_multitask_run_passes_submission_checks(multitask_run: Path, tmp_path: Path):
    from harness.submit import submit

    written, _ = submit(multitask_run, tmp_path / "board")
    assert len(written) == 6  # two arms, three tasks each
    assert (
        "of multi-task [shape, segmentation, depth]"
        in (tmp_path / "board" / "leaderboard.md").read_text()
    )
