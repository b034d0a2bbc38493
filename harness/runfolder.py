"""A run folder: the one owner of its layout and of the order in which it is written.

    <output>/<name>/
        spec.yaml              the spec as given
        spec.resolved.json     the spec with every default filled in, and its hash
        run.h5                 SAL and metrics, streamed per epoch (`harness.store`)
        checkpoints/<arm>.pt   each arm's state after its last complete epoch (`harness.checkpoint`)
        entries/<arm>.json     one leaderboard entry per arm (or per task), computed from run.h5
        results.md             the results table
        figures/, report.html  written by `harness report`

Crash safety lives here: per epoch, the trajectory's snapshots go into run.h5, then the
checkpoint is written atomically, then the epoch's row; on resume the checkpoint's rows are the
truth and run.h5 is brought back to them (`resume_arm`), so a kill at any moment loses at most
the epoch in flight.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_write_text
from harness.checkpoint import ArmState, load_state, save_state
from harness.errors import RunStateError
from harness.store import EpochRow, RunStore
from harness.sysinfo import git_revision, harness_version

RUN_FILE = "run.h5"
SPEC_FILE = "spec.yaml"
RESOLVED_SPEC_FILE = "spec.resolved.json"
ENTRIES_DIR = "entries"
CHECKPOINTS_DIR = "checkpoints"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
RESULTS_FILE = "results.md"


class RunFolder:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def for_spec(cls, name: str, output: Path | str) -> RunFolder:
        return cls(Path(output) / name)

    # --- the layout ------------------------------------------------------------------------------
    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def spec_file(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def resolved_spec_file(self) -> Path:
        return self.path / RESOLVED_SPEC_FILE

    @property
    def entries_dir(self) -> Path:
        return self.path / ENTRIES_DIR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    def checkpoint(self, arm_id: str) -> Path:
        return self.checkpoints_dir / f"{arm_id}.pt"

    # --- reading ------------------------------------------------------------------------------------
    def store(self) -> RunStore:
        return RunStore(self.run_file)

    def readable_store(self) -> RunStore:
        """The run file, or a clear error when there is none that can be read."""
        store = self.store()
        if not store.path.exists() or not store.readable():
            raise RunStateError(f"{store.path}: no readable run file")
        return store

    def stored_spec(self) -> dict[str, Any]:
        """The resolved spec the run was computed from, as stored in its run file."""
        return json.loads(self.readable_store().root_attrs()["spec"])

    # --- before a run ------------------------------------------------------------------------------
    def check_target(self, spec_hash: str, fresh: bool) -> None:
        """Refuse, before anything is written, a folder that holds something else than this spec's run."""
        if not self.resolved_spec_file.exists():
            if self.path.exists() and any(self.path.iterdir()):
                raise RunStateError(
                    f"{self.path} exists and is not a harness run; choose another "
                    "name or output folder"
                )
            return
        stored = json.loads(self.resolved_spec_file.read_text())
        if stored.get("spec_hash") == spec_hash or fresh:
            return
        raise RunStateError(
            f"{self.path} holds a run of a different spec (hash {stored.get('spec_hash', '?')[:12]}, "
            f"this spec {spec_hash[:12]}). Rerun with --fresh to start a new run (the old one "
            "is kept, renamed), or change `name`."
        )

    def open(
        self,
        spec_text: str,
        resolved: dict[str, Any],
        spec_hash: str,
        name: str,
        stage=lambda message: None,
    ) -> RunStore:
        """Create the folder, or reopen it for resuming: the spec files, and a readable run file.

        A folder holding another spec's run (reachable only with --fresh) is moved aside first.
        A run file damaged by a kill in the middle of a write is set aside and recreated; the
        arms' checkpoints then refill it.
        """
        if self.resolved_spec_file.exists():
            stored = json.loads(self.resolved_spec_file.read_text())
            if stored.get("spec_hash") != spec_hash:
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                moved = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
                shutil.move(str(self.path), str(moved))
                stage(f"previous run moved to {moved}")
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.resolved_spec_file.exists():
            atomic_write_text(self.spec_file, spec_text)
            atomic_write_text(
                self.resolved_spec_file,
                json.dumps({"spec_hash": spec_hash, "spec": resolved}, indent=2),
            )
        store = self.store()
        if not store.path.exists() or not store.intact():
            if store.path.exists():
                store.path.replace(store.path.with_suffix(".h5.damaged"))
                stage("run.h5 was damaged by an interrupted write; rebuilding it from checkpoints")
            store.create(
                {
                    "spec": resolved,
                    "spec_hash": spec_hash,
                    "spec_name": name,
                    "harness_version": harness_version(),
                    "git_revision": git_revision() or "",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
        return store

    # --- one arm --------------------------------------------------------------------------------------
    def resume_arm(self, arm_id: str) -> ArmState | None:
        """The arm's checkpointed state, with run.h5 brought back to exactly its rows; None if new."""
        state = load_state(self.checkpoint(arm_id))
        if state is not None:
            self._sync_store(arm_id, state)
        return state

    def begin_arm(self, arm_id: str, state: ArmState) -> None:
        """A new arm's (empty) group in run.h5."""
        self.store().init_arm(
            arm_id,
            state.config,
            state.hardware,
            state.layers,
            state.epochs,
            state.task_labels or None,
            state.task_layers or None,
        )

    def record_epoch(
        self,
        arm_id: str,
        state: ArmState,
        row: EpochRow,
        snapshots: tuple[list[int], list[np.ndarray]],
        every_steps: int,
    ) -> None:
        """One finished epoch: trajectory snapshots, then the checkpoint, then the row.

        The snapshots go in before the checkpoint: a resume cuts the trajectory back to the
        checkpoint's step count, so rows of an epoch that never got its checkpoint go, while
        writing them after the checkpoint would lose them to a kill between the two.
        """
        store = self.store()
        store.append_trajectory(arm_id, *snapshots, every_steps)
        save_state(self.checkpoint(arm_id), state)
        store.append_epoch(arm_id, state.epochs_done, row)

    def finish_arm(self, arm_id: str) -> None:
        self.store().mark_complete(arm_id)

    def _sync_store(self, arm_id: str, state: ArmState) -> None:
        """Make the HDF5 arm hold exactly the checkpoint's rows (after a kill at any point).

        The checkpoint's rows are the truth: when the file's differ in number, they are all
        rewritten from it. The parameter trajectory lives in the file alone, so the arm's group
        is kept (not recreated) whenever it exists, and its trajectory is cut back to the
        checkpoint's optimisation step.
        """
        store = self.store()
        rows = state.rows
        if store.has_arm(arm_id):
            data = store.read_arm(arm_id)
            if data.layer_names == list(state.layers):
                complete = data.complete
                if data.last_complete_epoch != len(rows) or data.sal.shape[0] != len(rows):
                    store.truncate_arm(arm_id, 0)
                    for epoch, row in enumerate(rows, start=1):
                        store.append_epoch(arm_id, epoch, row)
                    complete = False
                if state.complete and not complete:
                    store.mark_complete(arm_id)
                store.truncate_trajectory(arm_id, state.steps)
                return
        self.begin_arm(arm_id, state)
        for epoch, row in enumerate(rows, start=1):
            store.append_epoch(arm_id, epoch, row)
        if state.complete:
            store.mark_complete(arm_id)
