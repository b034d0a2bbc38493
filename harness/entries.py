"""Leaderboard entries: one validated JSON file per arm, computed from the run's HDF5 file alone.

Because entries are a pure function of `run.h5`, `harness score RUN` can always recompute them,
and a leaderboard can check a submitted entry against the file it came from.

An arm that diverged (stopped at a non-finite loss or SAL value, see `harness.runfolder`) has
no entry, and while one has, the run has none: `compute_entries` says which arm and where. The
names an entry carries (`run`, `arm_id`, `task_label`) become file names, so they are checked
against the patterns of run names and arm ids whenever an entry is read or made.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.armconfig import ComponentInfo
from harness.errors import DivergedError, RunStateError
from harness.names import SLUG, UNDEFENDED, arm_id, clean_arm_id
from harness.runfolder import ENTRIES_DIR, RUN_FILE, RunFolder
from harness.scoring import learnable_counts, learnable_proportion, score, task_similarity
from harness.store import ArmData

SCHEMA_VERSION = 1
#: an arm id: `<poison label>__<defence label>__s<seed>` (harness.names.arm_id)
ARM_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}__[A-Za-z0-9][A-Za-z0-9._-]{0,63}__s[0-9]{1,20}$"

__all__ = ["ENTRIES_DIR", "RUN_FILE", "ComponentInfo", "Entry", "Track", "arm_id", "clean_arm_id"]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Track(Model):
    """What makes two entries comparable: only entries of one track are ranked together."""

    id: str
    dataset: dict[str, Any]
    task: ComponentInfo
    backbone: ComponentInfo
    training: dict[str, Any]
    sal: dict[str, Any]
    tasks: list[dict[str, Any]] | None = Field(
        default=None,
        description="multi-task runs: every task trained together (label, weight, plugin); "
        "`task` is then the one this entry scores",
    )


class MetricResult(Model):
    name: str
    higher_is_better: bool
    final: float
    best: float
    per_epoch: list[float]


class Results(Model):
    ud: float | None = Field(
        description="#LP of this arm / #LP of the undefended clean arm; None if that is 0"
    )
    lp: float = Field(description="#LP: mean over epochs of the layers with SAL > β")
    beta: float = Field(description="learnable threshold from the undefended clean arm")
    clean_lp: float
    learnable_per_epoch: list[int]
    ud_undefended: float | None = Field(
        default=None, description="UD of the same poison without defence (defended arms only)"
    )
    ud_change: float | None = Field(
        default=None, description="ud − ud_undefended (defended arms only)"
    )
    test_metric: MetricResult
    final_train_loss: float
    learnable_proportion_per_epoch: list[float] | None = Field(
        default=None, description="λ(t) / layers per epoch (multi-task entries: of this task's SAL)"
    )
    task_similarity_per_epoch: dict[str, list[float]] | None = Field(
        default=None,
        description="multi-task entries: cosine similarity of this task's SAL vector with "
        "each other task's, per epoch",
    )


class HDF5Ref(Model):
    path: str
    sha256: str


class CleanReference(Model):
    """The clean arm an entry was scored against: β and the UD denominator come from it."""

    run: str = Field(
        description="the run that trained it (this run, or one adopted with --reuse-clean)"
    )
    spec_hash: str
    arm_id: str


class Entry(Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    run: str = Field(pattern=SLUG, description="the run's name (it names the entry's file)")
    arm_id: str = Field(pattern=ARM_ID)
    seed: int
    epochs: int
    poison: ComponentInfo | None = Field(description="None for the clean reference")
    defence: ComponentInfo
    evaluated_task: str | None = Field(
        default=None,
        description="the task this entry scores: the trained task's name, or a label of a "
        "multi-task run's tasks",
    )
    crafting_task: str | None = Field(
        default=None,
        description="the task the poison minimised when crafted ('all' for the sum of a "
        "multi-task model's); None for the clean arm and task-agnostic poisons",
    )
    task_label: str | None = Field(
        default=None,
        pattern=SLUG,
        description="multi-task runs: the task of the arm this entry scores (one entry per task)",
    )
    track: Track
    results: Results
    spec_hash: str
    harness_version: str
    git_revision: str | None
    hardware: dict[str, Any]
    wall_time_s: float
    hdf5: HDF5Ref
    clean_reference: CleanReference | None = Field(
        default=None,
        description="the clean run and arm β and the UD denominator came from (the leaderboard's "
        "scoring queue trains a track's clean arms once and every submission adopts them)",
    )

    @property
    def entry_id(self) -> str:
        """Unique within a run: the arm id, and the task for multi-task arms."""
        return self.arm_id if self.task_label is None else f"{self.arm_id}__{self.task_label}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def track_id(track: dict[str, Any]) -> str:
    canonical = json.dumps(track, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _metric(values: np.ndarray, name: str, higher: bool) -> MetricResult:
    return MetricResult(
        name=name,
        higher_is_better=higher,
        final=float(values[-1]),
        best=float(np.max(values) if higher else np.min(values)),
        per_epoch=[float(v) for v in values],
    )


def _entry(
    arm: ArmData,
    clean: ArmData,
    undefended: ArmData | None,
    root: dict[str, Any],
    h5: HDF5Ref,
    task: str | None = None,
) -> Entry:
    """The entry of an arm, or (multi-task arms) of one of its tasks, scored on that task's SAL."""
    cfg = arm.config

    def sal_of(data: ArmData) -> np.ndarray:
        return data.sal if task is None else data.task_sal[task]

    s = score(sal_of(arm), sal_of(clean))
    ud_undefended = None
    if undefended is not None:
        ud_undefended = score(sal_of(undefended), sal_of(clean)).ud
    track = cfg.track.model_dump(
        mode="json", exclude_unset=True, include={"dataset", "backbone", "training", "sal"}
    )
    similarity = None
    if task is None:
        assert cfg.track.task is not None
        track["task"] = cfg.track.task.model_dump(mode="json", exclude_unset=True)
        metric = _metric(
            arm.metrics["test_metric"], cfg.task.metric_name, cfg.task.higher_is_better
        )
        evaluated = cfg.evaluated
    else:
        assert cfg.tasks is not None and cfg.track.tasks is not None
        info = next(t for t in cfg.tasks if t.label == task)
        track["task"] = info.model_dump(
            mode="json", include={"name", "params", "plugin", "distribution", "version"}
        )
        track["task"]["label"] = task
        track["tasks"] = [t.model_dump(mode="json", exclude_unset=True) for t in cfg.track.tasks]
        metric = _metric(
            arm.metrics[f"test_metric.{task}"], info.metric_name, info.higher_is_better
        )
        evaluated = task
        sim = task_similarity(arm.task_sal)
        labels = list(arm.task_sal)
        k = labels.index(task)
        similarity = {
            other: [float(v) for v in sim[:, k, j]]
            for j, other in enumerate(labels)
            if other != task
        }
    seconds = arm.metrics["train_seconds"].sum() + arm.metrics["sal_seconds"].sum()
    return Entry(
        run=root["spec_name"],
        arm_id=arm.arm_id,
        seed=cfg.seed,
        epochs=int(arm.sal.shape[0]),
        poison=cfg.poison,
        defence=cfg.defence,
        evaluated_task=evaluated,
        crafting_task=cfg.crafting_task,
        task_label=task,
        track=Track(id=track_id(track), **track),
        results=Results(
            ud=s.ud,
            lp=s.lp,
            beta=s.beta,
            clean_lp=s.clean_lp,
            learnable_per_epoch=[int(v) for v in learnable_counts(sal_of(arm), s.beta)],
            ud_undefended=ud_undefended,
            ud_change=(s.ud - ud_undefended)
            if (s.ud is not None and ud_undefended is not None)
            else None,
            test_metric=metric,
            final_train_loss=float(arm.metrics["train_loss"][-1]),
            learnable_proportion_per_epoch=(
                None
                if task is None
                else [float(v) for v in learnable_proportion(sal_of(arm), s.beta)]
            ),
            task_similarity_per_epoch=similarity,
        ),
        spec_hash=root["spec_hash"],
        harness_version=root["harness_version"],
        git_revision=root.get("git_revision") or None,
        hardware=arm.hardware,
        wall_time_s=round(float(seconds), 3),
        hdf5=h5,
    )


def diverged_arms(arms: list[ArmData]) -> list[str]:
    """Each arm that diverged, with where: marked so when it stopped, or holding a non-finite
    loss or SAL value (a run written before divergence stopped arms)."""
    found = []
    for arm in arms:
        if arm.diverged is not None:
            epoch, reason = arm.diverged
            found.append(f"{arm.arm_id} at epoch {epoch} ({reason})")
            continue
        bad = arm.first_non_finite()
        if bad is not None:
            found.append(f"{arm.arm_id} at epoch {bad[0]} ({'; '.join(bad[1])})")
    return found


def compute_entries(run_dir: Path, *, scorable_only: bool = False) -> list[Entry]:
    """Every complete arm's entry, from `run_dir/run.h5` alone.

    Refused (`DivergedError`) while an arm of the run has diverged: its numbers mean nothing,
    and β or a UD computed beside them would be taken for results. A complete arm whose clean
    reference is not is refused too, or with `scorable_only` (a run still training, whose arms
    finish in any order on a cluster) left out until it is.
    """
    folder = RunFolder(run_dir)
    folder.check_unlocked()
    store = folder.readable_store()
    path = store.path
    root = store.root_attrs()
    name = root.get("spec_name")
    if not isinstance(name, str) or not re.match(SLUG, name):
        raise RunStateError(
            f"{path}: the run's name {name!r} is not a run name (letters, digits, '.', '_', '-'); "
            "the file was edited"
        )
    arms = {a: store.read_arm(a) for a in store.arm_ids()}
    diverged = diverged_arms(list(arms.values()))
    if diverged:
        raise DivergedError(
            f"{path}: training diverged in arm " + "; arm ".join(diverged) + ". A run with a "
            "diverged arm has no entries: change the recipe (e.g. a lower "
            "training.optimizer.lr) and run it again with --fresh"
        )
    h5 = HDF5Ref(path=RUN_FILE, sha256=sha256_file(path))
    adopted = folder.adopted_clean_arms()
    entries = []
    for arm in arms.values():
        if not arm.complete:
            continue
        seed = arm.config.seed
        clean = arms.get(clean_arm_id(seed))
        if clean is None or not clean.complete:
            if scorable_only:
                continue
            raise RunStateError(
                f"{path}: arm {arm.arm_id} has no complete clean reference {clean_arm_id(seed)}"
            )
        undefended = None
        if arm.config.defence.name != UNDEFENDED:
            undefended = arms.get(arm_id(arm.config.poison_key, UNDEFENDED, seed))
            if undefended is not None and not undefended.complete:
                undefended = None
        source = adopted.get(clean.arm_id)
        reference = CleanReference(
            run=source["run"] if source else name,
            spec_hash=source["spec_hash"] if source else str(root["spec_hash"]),
            arm_id=clean.arm_id,
        )
        if arm.task_sal:
            found = [_entry(arm, clean, undefended, root, h5, task) for task in arm.task_sal]
        else:
            found = [_entry(arm, clean, undefended, root, h5)]
        entries += [e.model_copy(update={"clean_reference": reference}) for e in found]
    return entries


def write_entries(run_dir: Path, entries: list[Entry]) -> list[Path]:
    """Write `entries/<arm>.json`, holding the run folder's lock (no run may be writing it)."""
    folder = RunFolder(run_dir)
    paths = []
    with folder.locked("score"):
        folder.refuse_links()
        for entry in entries:
            path = folder.entries_dir / f"{entry.entry_id}.json"
            folder.write_text(path, entry.model_dump_json(indent=2) + "\n")
            paths.append(path)
    return paths


def write_entries_so_far(run_dir: Path) -> None:
    """Score the complete arms of a run still training, after each arm it finishes, so a long
    run's results can be read (or copied elsewhere) before its end. None while an arm has
    diverged: the run's end refuses its entries with the reason."""
    try:
        entries = compute_entries(run_dir, scorable_only=True)
    except DivergedError:
        return
    write_entries(run_dir, entries)


def read_entries(run_dir: Path) -> list[Entry]:
    return [
        Entry.model_validate_json(p.read_text())
        for p in sorted(RunFolder(run_dir).entries_dir.glob("*.json"))
    ]
