"""The run's HDF5 file: SAL and metrics streamed per epoch, one group per arm.

Layout (FORMAT_VERSION 1):

    /                      attrs: format_version, harness_version, spec (resolved, JSON),
                                  spec_hash, spec_name, git_revision, created
    /arms/<arm_id>/        attrs: config (JSON), hardware (JSON), epochs_planned,
                                  last_complete_epoch (0 = none), complete (bool)
        layer_names        [L] strings, the scored `.weight` parameters in module order
        sal                [T, L] float64, resizable along T
        sal_ascent_loss    [T, L] best loss of the ascent copy
        sal_descent_loss   [T, L] best loss of the descent copy
        metrics/<name>     [T] float64, resizable: train_loss, test_loss, test_metric,
                           sal_base_loss, lr, train_seconds, sal_seconds; multi-task arms add
                           test_metric.<task> and test_loss.<task> per task (test_metric is NaN)
        tasks/             multi-task arms only; attrs: labels (JSON list)
            layer_names    [B] the shared backbone's scored layers
            <task>/sal     [T, B] SAL of that task's loss alone over the backbone layers
        trajectory/        only when the spec's `landscape` traces the arm; attrs: every_steps
            params         [S, P] float32, resizable along S: the flattened trainable parameters
                           (model.parameters() order) at step 0 and every `every_steps` steps
            step           [S] int64, the optimisation step of each snapshot

The file is opened, appended and closed once per epoch, so it is complete on disk between
epochs. Checkpoints (written atomically before each append) hold the same rows, so a file
damaged by a kill in the middle of a write is rebuilt from them on resume. The trajectory is
too large for checkpoints: it lives in this file alone, is cut back to the checkpoint's step on
resume, and its snapshots before the resume point are lost if the file has to be rebuilt (its
`step` then no longer starts at 0, which `harness landscape` reports).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from harness.armconfig import ArmConfig

FORMAT_VERSION = 1
METRICS = (
    "train_loss",
    "test_loss",
    "test_metric",
    "sal_base_loss",
    "lr",
    "train_seconds",
    "sal_seconds",
)
SAL_ARRAYS = ("sal", "sal_ascent_loss", "sal_descent_loss")


@dataclass
class EpochRow:
    sal: list[float]
    sal_ascent_loss: list[float]
    sal_descent_loss: list[float]
    metrics: dict[str, float]
    task_sal: dict[str, list[float]] = field(default_factory=dict)

    def non_finite(self) -> list[str]:
        """What in this row is NaN or infinite: the SAL arrays and the losses (not the metrics,
        which may be NaN by design, as a multi-task arm's overall test metric is)."""
        found = []
        for name in SAL_ARRAYS:
            bad = int((~np.isfinite(np.asarray(getattr(self, name), dtype=np.float64))).sum())
            if bad:
                found.append(f"{name} has {bad} non-finite value(s)")
        for label, values in sorted(self.task_sal.items()):
            bad = int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
            if bad:
                found.append(f"the SAL of task {label} has {bad} non-finite value(s)")
        for name, value in sorted(self.metrics.items()):
            if name.split(".")[0] in FINITE_METRICS and not math.isfinite(float(value)):
                found.append(f"{name} is {float(value)}")
        return found


#: the metrics that must be finite in every recorded epoch (losses and timings)
FINITE_METRICS = ("train_loss", "test_loss", "sal_base_loss", "lr")


def stored_metric_names(task_labels: list[str] | None = None) -> list[str]:
    """The metrics an arm's group holds, in the order `init_arm` creates them."""
    per_task = [
        f"{kind}.{label}" for label in task_labels or [] for kind in ("test_metric", "test_loss")
    ]
    return [*METRICS, *per_task]


def row_digest(previous: str, row: EpochRow, metric_names: list[str]) -> str:
    """The digest of an epoch's row as `run.h5` stores it, chained to the previous epoch's.

    Values are taken as the file's float64 (every NaN alike) and metrics by the names the file
    holds (a missing one is NaN, as `append_epoch` writes it), so a row read back from the file
    has the digest of the row that was written. The chain (`previous` is the digest of the
    epochs before, "" for the first) makes the last digest stand for every row of the arm.
    """

    def exact(values) -> list[str]:
        return [float(v).hex() for v in np.asarray(values, dtype=np.float64).reshape(-1)]

    canonical = {
        "previous": previous,
        **{name: exact(getattr(row, name)) for name in SAL_ARRAYS},
        "metrics": {name: exact([row.metrics.get(name, math.nan)]) for name in metric_names},
        "task_sal": {label: exact(values) for label, values in sorted(row.task_sal.items())},
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def row_digests(rows: list[EpochRow], metric_names: list[str]) -> list[str]:
    """The chained digest after each row."""
    out: list[str] = []
    for row in rows:
        out.append(row_digest(out[-1] if out else "", row, metric_names))
    return out


@dataclass
class ArmData:
    arm_id: str
    config: ArmConfig
    hardware: dict[str, Any]
    layer_names: list[str]
    epochs_planned: int
    last_complete_epoch: int
    complete: bool
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    task_layer_names: list[str] = field(default_factory=list)
    task_sal: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # label -> [T, B], multi-task only

    #: `(epoch, reason)` when the arm stopped because training diverged there
    diverged: tuple[int, str] | None = None

    @property
    def sal(self) -> np.ndarray:
        return self.arrays["sal"]

    @property
    def rows_recorded(self) -> int:
        """Rows every array holds (after a kill mid-append some may hold one more)."""
        lengths = [a.shape[0] for a in self.arrays.values()]
        lengths += [m.shape[0] for m in self.metrics.values()]
        lengths += [t.shape[0] for t in self.task_sal.values()]
        return min(lengths) if lengths else 0

    def row(self, index: int) -> EpochRow:
        """Epoch `index + 1` as recorded, in the form the runner writes it."""
        return EpochRow(
            sal=[float(v) for v in self.arrays["sal"][index]],
            sal_ascent_loss=[float(v) for v in self.arrays["sal_ascent_loss"][index]],
            sal_descent_loss=[float(v) for v in self.arrays["sal_descent_loss"][index]],
            metrics={name: float(values[index]) for name, values in self.metrics.items()},
            task_sal={
                label: [float(v) for v in sal[index]] for label, sal in self.task_sal.items()
            },
        )

    def first_non_finite(self) -> tuple[int, list[str]] | None:
        """(epoch, what) of the first recorded row with a non-finite loss or SAL value."""
        for t in range(self.rows_recorded):
            bad = self.row(t).non_finite()
            if bad:
                return t + 1, bad
        return None

    def digests(self, epochs: int | None = None) -> list[str]:
        """The chained row digests of the first `epochs` rows (default: every complete one)."""
        n = self.last_complete_epoch if epochs is None else epochs
        return row_digests([self.row(i) for i in range(n)], sorted(self.metrics))


class RunStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _open(self, mode: str) -> Iterator[h5py.File]:
        f = h5py.File(self.path, mode)
        try:
            yield f
        finally:
            f.close()

    # --- the run ---------------------------------------------------------------------------
    def create(self, attrs: dict[str, Any]) -> None:
        with self._open("w") as f:
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            f.create_group("arms")

    def root_attrs(self) -> dict[str, Any]:
        with self._open("r") as f:
            return dict(f.attrs)

    def readable(self) -> bool:
        try:
            with self._open("r") as f:
                return "arms" in f and int(f.attrs.get("format_version", -1)) == FORMAT_VERSION
        except (
            OSError,
            KeyError,
            ValueError,
            RuntimeError,
        ):  # h5py raises RuntimeError on bad metadata
            return False

    def intact(self) -> bool:
        """Whether every arm's data can really be read back, not only the file's header.

        A kill in the middle of an HDF5 write can leave a file that opens and lists its arms but
        whose last-written chunks point past its end; reading them then fails. Everything small
        (SAL, metrics, names, attributes) is read in full; of a trajectory, its steps and the last
        snapshot (the part a kill can damage), so large trajectories are not read whole.
        """
        try:
            with self._open("r") as f:
                if "arms" not in f or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                    return False
                dict(f.attrs)
                for group in f["arms"].values():
                    dict(group.attrs)
                    for name, item in _datasets(group):
                        if name == "trajectory/params":
                            if item.shape[0]:
                                item[item.shape[0] - 1]
                        else:
                            item[()]
            return True
        except (OSError, KeyError, ValueError, RuntimeError):
            return False

    def arm_ids(self) -> list[str]:
        with self._open("r") as f:
            return list(f["arms"].keys())

    # --- one arm ---------------------------------------------------------------------------
    def init_arm(
        self,
        arm_id: str,
        config: ArmConfig,
        hardware: dict[str, Any],
        layer_names: list[str],
        epochs_planned: int,
        tasks: list[str] | None = None,
        task_layers: list[str] | None = None,
    ) -> None:
        """Create an arm's group; `tasks` (multi-task arms) adds per-task SAL and metrics."""
        with self._open("a") as f:
            arms = f["arms"]
            if arm_id in arms:
                del arms[arm_id]
            g = arms.create_group(arm_id)
            g.attrs["config"] = config.to_json()
            g.attrs["hardware"] = json.dumps(hardware, sort_keys=True)
            g.attrs["epochs_planned"] = epochs_planned
            g.attrs["last_complete_epoch"] = 0
            g.attrs["complete"] = False
            g.create_dataset("layer_names", data=np.array(layer_names, dtype=h5py.string_dtype()))
            n_layers = len(layer_names)
            for name in SAL_ARRAYS:
                g.create_dataset(
                    name,
                    shape=(0, n_layers),
                    maxshape=(None, n_layers),
                    dtype="f8",
                    chunks=(max(1, min(64, epochs_planned)), max(1, n_layers)),
                )
            m = g.create_group("metrics")
            for name in stored_metric_names(tasks):
                m.create_dataset(name, shape=(0,), maxshape=(None,), dtype="f8", chunks=(64,))
            if tasks:
                t = g.create_group("tasks")
                t.attrs["labels"] = json.dumps(list(tasks))
                t.create_dataset(
                    "layer_names", data=np.array(task_layers or [], dtype=h5py.string_dtype())
                )
                n = len(task_layers or [])
                for label in tasks:
                    t.create_dataset(
                        f"{label}/sal",
                        shape=(0, n),
                        maxshape=(None, n),
                        dtype="f8",
                        chunks=(max(1, min(64, epochs_planned)), max(1, n)),
                    )

    def append_epoch(self, arm_id: str, epoch: int, row: EpochRow) -> None:
        """Write epoch `epoch` (1-based) of an arm, then record it as the last complete one."""
        with self._open("a") as f:
            g = f["arms"][arm_id]
            done = int(g.attrs["last_complete_epoch"])
            if epoch != done + 1:
                raise ValueError(f"arm {arm_id}: epoch {epoch} cannot follow epoch {done}")
            for name in SAL_ARRAYS:
                ds = g[name]
                ds.resize(epoch, axis=0)
                ds[epoch - 1] = np.asarray(getattr(row, name), dtype=np.float64)
            for name in g["metrics"]:
                ds = g["metrics"][name]
                ds.resize(epoch, axis=0)
                ds[epoch - 1] = float(row.metrics.get(name, np.nan))
            for label in _task_labels(g):
                ds = g[f"tasks/{label}/sal"]
                ds.resize(epoch, axis=0)
                ds[epoch - 1] = np.asarray(row.task_sal[label], dtype=np.float64)
            g.attrs["last_complete_epoch"] = epoch
            f.flush()

    def truncate_arm(self, arm_id: str, epochs: int) -> None:
        """Drop rows past `epochs` (written after the checkpoint a resume starts from)."""
        with self._open("a") as f:
            g = f["arms"][arm_id]
            for name in SAL_ARRAYS:
                g[name].resize(epochs, axis=0)
            for name in g["metrics"]:
                g["metrics"][name].resize(epochs, axis=0)
            for label in _task_labels(g):
                g[f"tasks/{label}/sal"].resize(epochs, axis=0)
            g.attrs["last_complete_epoch"] = epochs
            g.attrs["complete"] = False

    # --- the parameter trajectory (loss landscape) ----------------------------------------
    def append_trajectory(
        self, arm_id: str, steps: list[int], params: list[np.ndarray], every_steps: int
    ) -> None:
        """Append snapshots taken during one epoch, in one open of the file.

        Called once per epoch just before the checkpoint is written: rows past the checkpoint's
        step count (from an epoch that never reached its checkpoint) are dropped on resume by
        `truncate_trajectory`, while writing them after the checkpoint would lose them to a
        kill between the two.
        """
        if not steps:
            return
        block = np.stack([np.asarray(p, dtype=np.float32).reshape(-1) for p in params])
        with self._open("a") as f:
            g = f["arms"][arm_id]
            if "trajectory" not in g:
                t = g.create_group("trajectory")
                t.attrs["every_steps"] = every_steps
                n = block.shape[1]
                t.create_dataset(
                    "params",
                    shape=(0, n),
                    maxshape=(None, n),
                    dtype="f4",
                    chunks=(1, max(1, min(n, 1 << 18))),
                )
                t.create_dataset("step", shape=(0,), maxshape=(None,), dtype="i8", chunks=(256,))
            t = g["trajectory"]
            start = t["step"].shape[0]
            if start and steps[0] <= int(t["step"][start - 1]):
                raise ValueError(
                    f"arm {arm_id}: trajectory step {steps[0]} does not follow "
                    f"step {int(t['step'][start - 1])}"
                )
            if block.shape[1] != t["params"].shape[1]:
                raise ValueError(
                    f"arm {arm_id}: {block.shape[1]} parameters, the trajectory holds "
                    f"{t['params'].shape[1]}"
                )
            t["params"].resize(start + len(steps), axis=0)
            t["params"][start:] = block
            t["step"].resize(start + len(steps), axis=0)
            t["step"][start:] = np.asarray(steps, dtype=np.int64)
            f.flush()

    def truncate_trajectory(self, arm_id: str, last_step: int) -> None:
        """Drop snapshots taken after optimisation step `last_step` (the checkpoint's)."""
        with self._open("a") as f:
            g = f["arms"][arm_id]
            if "trajectory" not in g:
                return
            t = g["trajectory"]
            keep = int(np.searchsorted(t["step"][()], last_step, side="right"))
            t["params"].resize(keep, axis=0)
            t["step"].resize(keep, axis=0)

    def read_trajectory(self, arm_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(steps [S], params [S, P]) of an arm, or None when it was not traced."""
        with self._open("r") as f:
            g = f["arms"][arm_id]
            if "trajectory" not in g:
                return None
            return g["trajectory/step"][()], g["trajectory/params"][()]

    def trajectory_shape(self, arm_id: str) -> tuple[int, int] | None:
        """(snapshots, parameters) without reading the matrix, or None when not traced."""
        with self._open("r") as f:
            g = f["arms"][arm_id]
            return tuple(g["trajectory/params"].shape) if "trajectory" in g else None

    def mark_complete(self, arm_id: str) -> None:
        with self._open("a") as f:
            f["arms"][arm_id].attrs["complete"] = True

    def mark_diverged(self, arm_id: str, epoch: int | None, reason: str = "") -> None:
        """Record (or, with `epoch` None, clear) that the arm stopped because training diverged."""
        with self._open("a") as f:
            attrs = f["arms"][arm_id].attrs
            if epoch is None:
                if "diverged" in attrs:
                    del attrs["diverged"]
            else:
                attrs["diverged"] = json.dumps({"epoch": epoch, "reason": reason})

    def set_hardware(self, arm_id: str, hardware: dict[str, Any]) -> None:
        with self._open("a") as f:
            f["arms"][arm_id].attrs["hardware"] = json.dumps(hardware, sort_keys=True)

    def has_arm(self, arm_id: str) -> bool:
        with self._open("r") as f:
            return arm_id in f["arms"]

    def read_arm(self, arm_id: str) -> ArmData:
        with self._open("r") as f:
            g = f["arms"][arm_id]
            return ArmData(
                arm_id=arm_id,
                config=ArmConfig.model_validate_json(g.attrs["config"]),
                hardware=json.loads(g.attrs["hardware"]),
                layer_names=[
                    s.decode() if isinstance(s, bytes) else str(s) for s in g["layer_names"][()]
                ],
                epochs_planned=int(g.attrs["epochs_planned"]),
                last_complete_epoch=int(g.attrs["last_complete_epoch"]),
                complete=bool(g.attrs["complete"]),
                arrays={name: g[name][()] for name in SAL_ARRAYS},
                metrics={name: g["metrics"][name][()] for name in g["metrics"]},
                task_layer_names=[
                    s.decode() if isinstance(s, bytes) else str(s)
                    for s in g["tasks/layer_names"][()]
                ]
                if "tasks" in g
                else [],
                task_sal={label: g[f"tasks/{label}/sal"][()] for label in _task_labels(g)},
                diverged=_diverged(g),
            )


def _datasets(group: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    found: list[tuple[str, h5py.Dataset]] = []
    group.visititems(
        lambda name, item: found.append((name, item)) if isinstance(item, h5py.Dataset) else None
    )
    return found


def _task_labels(group: h5py.Group) -> list[str]:
    return json.loads(group["tasks"].attrs["labels"]) if "tasks" in group else []


def _diverged(group: h5py.Group) -> tuple[int, str] | None:
    if "diverged" not in group.attrs:
        return None
    found = json.loads(group.attrs["diverged"])
    return int(found["epoch"]), str(found.get("reason", ""))
