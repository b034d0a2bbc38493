"""MLflow: one MLflow run per arm, in an experiment named after the harness run."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field

from harness.api import BuildContext, Params, RunInfo, Tracker, TrackerRecord, hookimpl

INSTALL = "pip install 'harness[mlflow]' (or mlflow-skinny)"


class MLflowParams(Params):
    tracking_uri: str | None = Field(
        default=None,
        description="an MLflow tracking server or store; null: $MLFLOW_TRACKING_URI, else a local "
        "file store in RUN/mlruns",
    )
    experiment: str | None = Field(
        default=None, description="experiment name; null: the run's name"
    )


class MLflowTracker(Tracker):
    """Per arm, an MLflow run tagged with the harness run, arm and spec hash: parameters (poison,
    defence, seed and the spec's recipe), metrics per epoch (step = epoch) including each layer's
    SAL, and at the end UD, #LP and β. A resumed arm continues its own MLflow run."""

    def __init__(self, params: MLflowParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        try:
            import mlflow
        except ImportError:  # mlflow is an optional extra
            raise ValueError(f"the mlflow tracker needs mlflow: {INSTALL}") from None
        self._mlflow = mlflow
        self.client: Any = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}
        self.run: RunInfo | None = None

    def on_run_start(self, run: RunInfo) -> None:
        self.run = run
        uri = self.params.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            # the local default is MLflow's file store, which MLflow keeps working in maintenance
            # mode behind this opt-in; a team's tracking server is the tracking_uri to use
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run.folder / "mlruns").resolve().as_uri()
        self.client = self._mlflow.MlflowClient(tracking_uri=uri)
        name = self.params.experiment or run.name
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(name)

    def _run_id(self, arm_id: str) -> str:
        if arm_id in self.runs:
            return self.runs[arm_id]
        assert self.run is not None and self.experiment_id is not None
        key = f"{self.run.spec_hash[:16]}/{arm_id}"
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`harness.key` = '{key}'", max_results=1
        )
        if existing:
            run_id = existing[0].info.run_id
        else:
            tags = {
                "harness.key": key,
                "harness.arm": arm_id,
                "harness.spec_hash": self.run.spec_hash,
                "harness.run": self.run.name,
                "mlflow.runName": arm_id,
            }
            run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
            for name, value in self._params(arm_id).items():
                self.client.log_param(run_id, name, value)
        self.runs[arm_id] = run_id
        return run_id

    def _params(self, arm_id: str) -> dict[str, str]:
        assert self.run is not None
        spec = self.run.spec
        poison, defence, seed = arm_id.split("__")
        training = spec.get("training", {})
        return {
            "poison": poison,
            "defence": defence,
            "seed": seed.removeprefix("s"),
            "data": spec["data"]["name"],
            "backbone": spec["backbone"]["name"],
            "epochs": str(training.get("epochs")),
            "batch_size": str(training.get("batch_size")),
            "lr": str(training.get("optimizer", {}).get("lr")),
            "sal.estimator": str(spec.get("sal", {}).get("estimator")),
        }

    def on_arm_start(self, arm_id: str, epochs: int, done: int) -> None:
        self._run_id(arm_id)

    def on_epoch_end(
        self, arm_id: str, epoch: int, metrics: dict[str, float], sal: list[float]
    ) -> None:
        assert self.run is not None
        run_id = self._run_id(arm_id)
        for name, value in metrics.items():
            self.client.log_metric(run_id, name, value, step=epoch)
        for layer, value in zip(self.run.layers, sal, strict=False):
            self.client.log_metric(run_id, f"sal.{layer}", value, step=epoch)

    def on_arm_end(self, arm_id: str) -> None:
        self.client.set_terminated(self._run_id(arm_id), status="FINISHED")

    def on_run_end(self, entries) -> None:
        for entry in entries:
            run_id = self._run_id(entry.arm_id)
            prefix = f"{entry.task_label}." if entry.task_label else ""
            if entry.results.ud is not None:
                self.client.log_metric(run_id, prefix + "ud", entry.results.ud, step=entry.epochs)
            self.client.log_metric(run_id, prefix + "lp", entry.results.lp, step=entry.epochs)
            self.client.log_metric(run_id, prefix + "beta", entry.results.beta, step=entry.epochs)


@hookimpl
def harness_register_trackers() -> list[TrackerRecord]:
    return [
        TrackerRecord(
            name="mlflow",
            factory=MLflowTracker,
            params=MLflowParams,
            description="MLflow: one run per arm with metrics and each layer's SAL per epoch, UD and "
            "#LP at the end (needs mlflow-skinny or mlflow)",
        )
    ]
