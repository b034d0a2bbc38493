"""Experiment trackers: a run watched in TensorBoard and MLflow, read back from what they wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_spec, write_spec

from harness.cli import main
from harness.entries import read_entries
from harness.pluginmanager import get_components
from harness.specfile import load_spec


def small(name: str, **overrides) -> dict:
    return tiny_spec(name, training={"epochs": 2, "batch_size": 50}, **overrides)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory) -> Path:
    """One run sent to both trackers: TensorBoard from the spec, MLflow from --log-to."""
    root = tmp_path_factory.mktemp("tracked")
    spec = write_spec(root / "tr.yaml", small("tr", trackers=["tensorboard"]))
    assert (
        main(["eval", str(spec), "--output", str(root / "runs"), "--quiet", "--log-to", "mlflow"])
        == 0
    )
    return root / "runs" / "tr"


def test_tensorboard_event_files_hold_each_arms_metrics_and_sal(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    entries = {e.arm_id: e for e in read_entries(tracked_run)}
    for arm_id, entry in entries.items():
        events = EventAccumulator(str(tracked_run / "tensorboard" / arm_id))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"metrics/train_loss", "metrics/test_metric", "sal/mean", "entry/lp"} <= tags
        accuracy = [e.value for e in events.Scalars("metrics/test_metric")]
        assert [e.step for e in events.Scalars("metrics/test_metric")] == [1, 2]
        assert accuracy == pytest.approx(entry.results.test_metric.per_epoch)
        assert events.Scalars("entry/lp")[0].value == pytest.approx(entry.results.lp)
        assert any(t.startswith("sal/backbone.") for t in tags)


def test_mlflow_file_store_holds_one_run_per_arm_with_epoch_metrics_and_ud(
    tracked_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.MlflowClient(tracking_uri=(tracked_run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tr")
    runs = {r.data.tags["harness.arm"]: r for r in client.search_runs([experiment.experiment_id])}
    entries = {e.arm_id: e for e in read_entries(tracked_run)}
    assert set(runs) == set(entries)
    for arm_id, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["seed"] == "0" and run.data.params["backbone"] == "small-cnn"
        history = client.get_metric_history(run.info.run_id, "test_metric")
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx(
            entries[arm_id].results.test_metric.per_epoch
        )
        assert run.data.metrics["ud"] == pytest.approx(entries[arm_id].results.ud)


def test_trackers_are_not_part_of_the_spec_hash(tmp_path: Path) -> None:
    plain = load_spec(write_spec(tmp_path / "a.yaml", small("a")), get_components())
    tracked = load_spec(
        write_spec(tmp_path / "b.yaml", small("a", trackers=["mlflow"])), get_components()
    )
    assert plain.hash == tracked.hash


def test_an_unknown_tracker_is_refused_before_training(tmp_path: Path, capsys) -> None:
    spec = write_spec(tmp_path / "s.yaml", small("s"))
    assert (
        main(
            ["eval", str(spec), "--output", str(tmp_path / "runs"), "--quiet", "--log-to", "wandb"]
        )
        == 2
    )
    assert "--log-to wandb" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_failing_tracker_is_switched_off_and_the_run_finishes(tmp_path: Path, capsys) -> None:
    from harness.api import Tracker, TrackerRecord, hookimpl
    from harness.pluginmanager import load_components
    from harness.runner import Runner

    class Flaky(Tracker):
        def on_epoch_end(self, arm_id, epoch, metrics, sal):
            raise ConnectionError("tracking server unreachable")

    class Plugin:
        @hookimpl
        def harness_register_trackers(self):
            return [TrackerRecord(name="flaky", factory=Flaky, description="fails")]

    components = load_components(extra_plugins=[("flaky", Plugin())])
    spec = write_spec(tmp_path / "f.yaml", small("f", poisons=[]))
    runner = Runner(
        load_spec(spec, components), components, output_root=tmp_path / "runs", log_to=["flaky"]
    )
    runner.prepare()
    assert len(runner.run()) == 1
    assert "tracker 'flaky' failed in on_epoch_end" in capsys.readouterr().err
