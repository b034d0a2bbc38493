"""Runs in notebooks: run a spec from Python, open a run folder, read and re-score its arms.

    import harness
    run = harness.run("specs/quickstart.yaml", output="runs")       # or a dict; resumes like eval
    run = harness.open_run("runs/quickstart")                       # a finished (or running) run
    arm = run["noise-class__none__s0"]
    arm.sal, arm.layers                                             # epochs × layers, layer names
    run.entries_frame()                                             # one row per entry (pandas)
    run.rescore(beta=1e-3)                                          # #LP and UD against another β

Everything is read from `run.h5` (and the entries computed from it), never from the checkpoints,
so what a notebook shows is what `harness score` would compute. pandas is needed only for the
`*_frame` methods (`pip install harness[notebook]`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.entries import Entry, compute_entries
from harness.errors import HarnessError
from harness.names import clean_arm_id
from harness.runfolder import RunFolder
from harness.scoring import learnable_counts, learnable_threshold
from harness.store import ArmData


def _pandas():
    try:
        import pandas
    except ImportError:  # an optional dependency: say how to get it
        raise HarnessError(
            "data frames need pandas: pip install 'harness[notebook]' (or pandas)"
        ) from None
    return pandas


@dataclass
class ArmResults:
    """One arm of a run: its SAL (epochs × layers), per-epoch metrics and configuration."""

    data: ArmData

    @property
    def id(self) -> str:
        return self.data.arm_id

    @property
    def config(self):
        return self.data.config

    @property
    def seed(self) -> int:
        return self.data.config.seed

    @property
    def layers(self) -> list[str]:
        return list(self.data.layer_names)

    @property
    def sal(self) -> np.ndarray:
        """SAL of every scored layer (columns, in `layers` order) after every epoch (rows)."""
        return self.data.sal

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        """Per-epoch metrics: train_loss, test_loss, test_metric, sal_base_loss, lr, timings."""
        return dict(self.data.metrics)

    @property
    def task_sal(self) -> dict[str, np.ndarray]:
        """Multi-task arms: each task's SAL over the shared backbone (epochs × backbone layers)."""
        return dict(self.data.task_sal)

    @property
    def complete(self) -> bool:
        return self.data.complete

    def sal_frame(self):
        """SAL as a data frame: one row per epoch (1-based), one column per layer."""
        pd = _pandas()
        epochs = pd.RangeIndex(1, self.sal.shape[0] + 1, name="epoch")
        return pd.DataFrame(self.sal, index=epochs, columns=pd.Index(self.layers, name="layer"))

    def metrics_frame(self):
        pd = _pandas()
        n = self.sal.shape[0]
        return pd.DataFrame(self.metrics, index=pd.RangeIndex(1, n + 1, name="epoch"))


@dataclass(frozen=True)
class Rescored:
    """#LP and UD of every arm against one β (instead of each seed's clean-arm β)."""

    beta: float
    lp: dict[str, float]
    ud: dict[str, float | None]
    learnable_per_epoch: dict[str, np.ndarray]


class RunResults:
    """A run folder, read: its arms, entries and spec."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        store = folder.readable_store()
        self._root = store.root_attrs()
        self._arms = {a: ArmResults(store.read_arm(a)) for a in store.arm_ids()}

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def name(self) -> str:
        return str(self._root.get("spec_name", self.folder.path.name))

    @property
    def spec(self) -> dict[str, Any]:
        """The resolved spec the run was computed from."""
        import json

        return json.loads(self._root["spec"])

    @property
    def arms(self) -> list[str]:
        return list(self._arms)

    def __getitem__(self, arm_id: str) -> ArmResults:
        try:
            return self._arms[arm_id]
        except KeyError:
            raise KeyError(
                f"no arm {arm_id!r} in {self.folder.path}; arms: {', '.join(self._arms)}"
            ) from None

    def __iter__(self) -> Iterator[ArmResults]:
        return iter(self._arms.values())

    @property
    def entries(self) -> list[Entry]:
        """The entries of every complete arm, computed from run.h5 (as `harness score` does)."""
        return compute_entries(self.folder.path)

    def entries_frame(self):
        """One row per entry: arm, task, poison, defence, seed, metric final and best, #LP, UD, ΔUD, β."""
        pd = _pandas()
        rows = []
        for e in self.entries:
            r = e.results
            rows.append(
                {
                    "arm": e.arm_id,
                    "task": e.task_label or e.evaluated_task,
                    "poison": e.poison.label if e.poison else "clean",
                    "defence": e.defence.label or e.defence.name,
                    "seed": e.seed,
                    "metric": r.test_metric.name,
                    "metric_final": r.test_metric.final,
                    "metric_best": r.test_metric.best,
                    "lp": r.lp,
                    "ud": r.ud,
                    "ud_change": r.ud_change,
                    "beta": r.beta,
                    "epochs": e.epochs,
                }
            )
        return pd.DataFrame(rows)

    def beta(self, seed: int | None = None) -> float:
        """β of a seed's undefended clean arm (the first seed's by default)."""
        seed = self.spec["seeds"][0] if seed is None else seed
        return learnable_threshold(self[clean_arm_id(seed)].sal)[0]

    def rescore(
        self,
        beta: float | None = None,
        *,
        beta_from: Sequence[ArmResults] | ArmResults | None = None,
        clean: str | None = None,
    ) -> Rescored:
        """#LP and UD of every arm against one β.

        `beta` a number; or `beta_from` an arm (or several, their β averaged) whose SAL β is
        computed from, e.g. another run's clean arm, to compare two runs on one scale. UD is
        against `clean` (default: the first seed's undefended clean arm of this run), counted
        against the same β.
        """
        if (beta is None) == (beta_from is None):
            raise HarnessError("give either beta or beta_from")
        if beta is None:
            sources = [beta_from] if isinstance(beta_from, ArmResults) else list(beta_from)
            beta = float(np.mean([learnable_threshold(a.sal)[0] for a in sources]))
        clean_arm = self[clean or clean_arm_id(self.spec["seeds"][0])]
        counts = {a.id: learnable_counts(a.sal, beta) for a in self}
        lp = {arm: float(c.mean()) if len(c) else float("nan") for arm, c in counts.items()}
        clean_lp = lp[clean_arm.id]
        ud = {arm: (value / clean_lp if clean_lp > 0 else None) for arm, value in lp.items()}
        return Rescored(beta=float(beta), lp=lp, ud=ud, learnable_per_epoch=counts)


def open_run(path: str | Path) -> RunResults:
    """A run folder (holding run.h5), read."""
    return RunResults(RunFolder(path))


def run(
    spec: str | Path | dict[str, Any],
    *,
    output: str | Path | None = None,
    overrides: Sequence[str] = (),
    fresh: bool = False,
    quiet: bool = True,
) -> RunResults:
    """Run a spec (a file, or a mapping as a file would hold) like `harness eval`, and open the run.

    Resumes like `harness eval`: a finished run is read back without training anything.
    """
    from harness.overrides import apply_overrides
    from harness.pluginmanager import get_components
    from harness.progress import make_reporter
    from harness.runner import Runner
    from harness.specfile import SpecSource, load_spec, resolve_spec

    components = get_components()
    if isinstance(spec, dict):
        loaded = resolve_spec(
            apply_overrides(SpecSource(Path("<spec>"), spec), list(overrides)), components
        )
    else:
        loaded = load_spec(spec, components, list(overrides))
    runner = Runner(
        loaded, components, output_root=output, fresh=fresh, reporter=make_reporter(quiet)
    )
    runner.prepare()
    runner.run()
    return RunResults(runner.folder)
