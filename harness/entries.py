"""Leaderboard entries: one validated JSON file per arm, computed from the run's HDF5 file alone.

Because entries are a pure function of `run.h5`, `harness score RUN` can always recompute them,
and a leaderboard can check a submitted entry against the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.atomic import atomic_write_text
from harness.errors import RunStateError
from harness.scoring import learnable_counts, score
from harness.store import ArmData, RunStore

SCHEMA_VERSION = 1
RUN_FILE = "run.h5"
ENTRIES_DIR = "entries"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentInfo(Model):
    name: str
    label: str | None = None
    params: dict[str, Any]
    plugin: str
    distribution: str
    version: str


class Track(Model):
    """What makes two entries comparable: only entries of one track are ranked together."""

    id: str
    dataset: dict[str, Any]
    task: ComponentInfo
    backbone: ComponentInfo
    training: dict[str, Any]
    sal: dict[str, Any]


class MetricResult(Model):
    name: str
    higher_is_better: bool
    final: float
    best: float
    per_epoch: list[float]


class Results(Model):
    ud: float | None = Field(description="#LP of this arm / #LP of the undefended clean arm; None if that is 0")
    lp: float = Field(description="#LP: mean over epochs of the layers with SAL > β")
    beta: float = Field(description="learnable threshold from the undefended clean arm")
    clean_lp: float
    learnable_per_epoch: list[int]
    ud_undefended: float | None = Field(
        default=None, description="UD of the same poison without defence (defended arms only)"
    )
    ud_change: float | None = Field(default=None, description="ud − ud_undefended (defended arms only)")
    test_metric: MetricResult
    final_train_loss: float


class HDF5Ref(Model):
    path: str
    sha256: str


class Entry(Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    run: str
    arm_id: str
    seed: int
    epochs: int
    poison: ComponentInfo | None = Field(description="None for the clean reference")
    defence: ComponentInfo
    track: Track
    results: Results
    spec_hash: str
    harness_version: str
    git_revision: str | None
    hardware: dict[str, Any]
    wall_time_s: float
    hdf5: HDF5Ref


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def track_id(track: dict[str, Any]) -> str:
    canonical = json.dumps(track, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def clean_arm_id(seed: int) -> str:
    return f"clean__none__s{seed}"


def arm_id(poison_key: str, defence_key: str, seed: int) -> str:
    return f"{poison_key}__{defence_key}__s{seed}"


def _entry(arm: ArmData, clean: ArmData, undefended: ArmData | None, root: dict[str, Any],
           h5: HDF5Ref) -> Entry:
    cfg = arm.config
    s = score(arm.sal, clean.sal)
    ud_undefended = None
    if undefended is not None:
        ud_undefended = score(undefended.sal, clean.sal).ud
    metric = arm.metrics["test_metric"]
    higher = bool(cfg["task"]["higher_is_better"])
    track = {k: cfg["track"][k] for k in ("dataset", "task", "backbone", "training", "sal")}
    seconds = arm.metrics["train_seconds"].sum() + arm.metrics["sal_seconds"].sum()
    return Entry(
        run=root["spec_name"],
        arm_id=arm.arm_id,
        seed=cfg["seed"],
        epochs=int(arm.sal.shape[0]),
        poison=cfg["poison"],
        defence=cfg["defence"],
        track=Track(id=track_id(track), **track),
        results=Results(
            ud=s.ud,
            lp=s.lp,
            beta=s.beta,
            clean_lp=s.clean_lp,
            learnable_per_epoch=[int(v) for v in learnable_counts(arm.sal, s.beta)],
            ud_undefended=ud_undefended,
            ud_change=(s.ud - ud_undefended) if (s.ud is not None and ud_undefended is not None) else None,
            test_metric=MetricResult(
                name=cfg["task"]["metric_name"],
                higher_is_better=higher,
                final=float(metric[-1]),
                best=float(np.max(metric) if higher else np.min(metric)),
                per_epoch=[float(v) for v in metric],
            ),
            final_train_loss=float(arm.metrics["train_loss"][-1]),
        ),
        spec_hash=root["spec_hash"],
        harness_version=root["harness_version"],
        git_revision=root.get("git_revision") or None,
        hardware=arm.hardware,
        wall_time_s=round(float(seconds), 3),
        hdf5=h5,
    )


def compute_entries(run_dir: Path) -> list[Entry]:
    """Every complete arm's entry, from `run_dir/run.h5` alone."""
    path = Path(run_dir) / RUN_FILE
    store = RunStore(path)
    if not path.exists() or not store.readable():
        raise RunStateError(f"{path}: no readable run file")
    root = store.root_attrs()
    arms = {a: store.read_arm(a) for a in store.arm_ids()}
    h5 = HDF5Ref(path=RUN_FILE, sha256=sha256_file(path))
    entries = []
    for arm in arms.values():
        if not arm.complete:
            continue
        seed = arm.config["seed"]
        clean = arms.get(clean_arm_id(seed))
        if clean is None or not clean.complete:
            raise RunStateError(f"{path}: arm {arm.arm_id} has no complete clean reference {clean_arm_id(seed)}")
        undefended = None
        if arm.config["defence"]["name"] != "none":
            poison_key = arm.config["poison_key"]
            undefended = arms.get(arm_id(poison_key, "none", seed))
            if undefended is not None and not undefended.complete:
                undefended = None
        entries.append(_entry(arm, clean, undefended, root, h5))
    return entries


def write_entries(run_dir: Path, entries: list[Entry]) -> list[Path]:
    out = Path(run_dir) / ENTRIES_DIR
    paths = []
    for entry in entries:
        path = out / f"{entry.arm_id}.json"
        atomic_write_text(path, entry.model_dump_json(indent=2) + "\n")
        paths.append(path)
    return paths


def read_entries(run_dir: Path) -> list[Entry]:
    return [Entry.model_validate_json(p.read_text()) for p in sorted((Path(run_dir) / ENTRIES_DIR).glob("*.json"))]
