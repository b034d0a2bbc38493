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

So does the rest of what a run folder must withstand:

- **one writer**: `open` takes an exclusive lock (`fcntl.flock` on `.lock`, which names the
  holder's pid, host and command); a second `harness eval` of the same folder is refused with
  who holds it. The lock goes with the process, so a killed run never leaves it held;
- **no links**: a run folder holds only its own files and folders. Resuming, scoring or
  submitting refuses a folder with a symbolic link anywhere inside it (or that is one), and
  every file is written through `harness.atomic` with the folder as root;
- **rows that agree with the checkpoints**: a resume compares run.h5's rows with the digests in
  the arm's checkpoint and refuses an edited file; an arm whose plugins changed since it
  started is refused (`harness.armconfig.plugin_changes`);
- **divergence**: an epoch with a non-finite loss or SAL value is never recorded; the arm stops
  at its last good epoch with `DivergedError`, marked `diverged` in run.h5.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.armconfig import ArmConfig, plugin_changes
from harness.atomic import atomic_write, atomic_write_text, open_folder
from harness.checkpoint import ArmState, load_state, save_state
from harness.errors import DivergedError, RunStateError, UnsafePathError
from harness.store import EpochRow, RunStore
from harness.sysinfo import git_revision, hardware_differs, harness_version

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.h5"
SPEC_FILE = "spec.yaml"
RESOLVED_SPEC_FILE = "spec.resolved.json"
ENTRIES_DIR = "entries"
CHECKPOINTS_DIR = "checkpoints"
FIGURES_DIR = "figures"
REPORT_FILE = "report.html"
RESULTS_FILE = "results.md"
LOCK_FILE = ".lock"

#: run folders this process holds the lock of: their path -> the lock file's descriptor
_HELD: dict[str, int] = {}


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

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def checkpoint(self, arm_id: str) -> Path:
        return self.checkpoints_dir / f"{arm_id}.pt"

    @property
    def clean_reference_file(self) -> Path:
        """Which clean arms were adopted from another run (`harness eval --reuse-clean`)."""
        return self.path / "clean_reference.json"

    def adopted_clean_arms(self) -> dict[str, dict[str, str]]:
        """arm id -> {run, spec_hash} of each clean arm adopted from another run; {} if none."""
        path = self.clean_reference_file
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            source = {"run": str(record["run"]), "spec_hash": str(record["spec_hash"])}
            return {str(arm): source for arm in record.get("arms", [])}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunStateError(
                f"{path}: cannot be read ({type(exc).__name__}); it names the run whose clean "
                "arms this run adopted. Restore it, or rerun with --fresh"
            ) from None

    @property
    def snapshots_dir(self) -> Path:
        return self.path / "snapshots"

    def snapshot(self, arm_id: str, epoch: int) -> Path:
        return self.snapshots_dir / arm_id / f"epoch-{epoch:04d}.pt"

    def snapshot_epochs(self, arm_id: str) -> list[int]:
        """The epochs of the arm whose model snapshot is kept (`harness eval --save-snapshots`)."""
        folder = self.snapshots_dir / arm_id
        if not folder.is_dir():
            return []
        return sorted(
            int(p.stem.removeprefix("epoch-"))
            for p in folder.glob("epoch-*.pt")
            if p.stem.removeprefix("epoch-").isdigit()
        )

    def snapshots(self, every: int) -> ModelSnapshots:
        return ModelSnapshots(self, every)

    # --- writing ------------------------------------------------------------------------------------
    def write_text(self, path: Path, text: str) -> None:
        """Write a file of this folder: atomically, through real folders only, umask's mode."""
        atomic_write_text(path, text, root=self.path)

    # --- what a run folder must be --------------------------------------------------------------
    def refuse_links(self) -> None:
        """Refuse a folder that is, or holds anywhere inside, a symbolic link.

        The harness writes only files it created, in folders it created: a link (planted, or
        left by a copy) could make it overwrite a file elsewhere, or read another run's data.
        `run.h5` is written in place, so it must not be a hard link to another file either.
        """
        if self.path.is_symlink():
            raise UnsafePathError(
                f"{self.path} is a symbolic link (to {os.readlink(self.path)}); a run folder "
                "must be a real folder: move the run there, or choose another name or output"
            )
        if not self.path.is_dir():
            return
        for folder, dirs, files in os.walk(self.path):
            for name in sorted(dirs + files):
                path = Path(folder) / name
                if path.is_symlink():
                    raise UnsafePathError(
                        f"{path} is a symbolic link (to {os.readlink(path)}); a run folder holds "
                        "only its own files and folders: remove the link"
                    )
        with contextlib.suppress(FileNotFoundError):
            if self.run_file.stat().st_nlink > 1:
                raise UnsafePathError(
                    f"{self.run_file} is a hard link shared with another file; copy it instead"
                )

    # --- the lock ---------------------------------------------------------------------------------
    def lock(self, command: str = "eval") -> None:
        """Hold this folder's lock until the process ends (or `unlock`); refuse when it is held.

        Re-entrant within a process. The lock file names the holder for whoever finds it held.
        """
        key = os.path.abspath(self.path)
        if key in _HELD or fcntl is None:
            return
        dir_fd = open_folder(self.path, self.path)
        try:
            fd = os.open(
                LOCK_FILE,
                os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                0o666,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise UnsafePathError(f"{self.lock_file}: cannot be opened ({exc.strerror})") from None
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            raise self._in_use(holder) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": f"harness {command}",
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _HELD[key] = fd

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the lock for a block (released after it, unless it was held before)."""
        held = os.path.abspath(self.path) in _HELD
        self.lock(command)
        try:
            yield
        finally:
            if not held:
                self.unlock()

    def unlock(self) -> None:
        fd = _HELD.pop(os.path.abspath(self.path), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def check_unlocked(self) -> None:
        """Refuse (without writing anything) a folder whose lock another process holds."""
        holder = self.holder()
        if holder is not None:
            raise self._in_use(holder)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the folder's lock (pid, host, command, since; {} when unreadable) when
        another process does, as while a run is training into it; None when none does."""
        if fcntl is None or os.path.abspath(self.path) in _HELD:
            return None
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None  # no lock file: nobody has held it yet
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _holder(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _in_use(self, holder: dict[str, Any]) -> RunStateError:
        who = (
            f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"({holder.get('command', 'harness')}, since {holder.get('since', '?')})"
            if holder
            else "another process"
        )
        return RunStateError(
            f"{self.path} is in use by {who}; wait for it to finish, or stop it (a stopped run "
            "resumes where it was) and run this command again"
        )

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
        attrs = self.readable_store().root_attrs()
        try:
            spec = json.loads(attrs["spec"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise RunStateError(
                f"{self.run_file}: the stored spec cannot be read ({type(exc).__name__})"
            ) from None
        if not isinstance(spec, dict):
            raise RunStateError(f"{self.run_file}: the stored spec is not a mapping")
        return spec

    def resolved_spec(self) -> tuple[dict[str, Any] | None, str]:
        """`spec.resolved.json` as {spec_hash, spec}, or (None, why it cannot be used)."""
        try:
            stored = json.loads(self.resolved_spec_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "missing"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"unreadable: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        if (
            not isinstance(stored, dict)
            or not isinstance(stored.get("spec_hash"), str)
            or not isinstance(stored.get("spec"), dict)
        ):
            return None, "not a resolved spec (it needs `spec_hash` and `spec`)"
        return stored, ""

    # --- before a run ------------------------------------------------------------------------------
    def check_target(self, spec_hash: str, fresh: bool) -> None:
        """Refuse, before anything is written, a folder that holds something else than this spec's run.

        Nothing is written: a folder in use by another process, a link, or a damaged
        `spec.resolved.json` are refused here (the latter two unless `fresh` sets the folder
        aside).
        """
        if self.path.is_symlink():
            self.refuse_links()
        if not self.resolved_spec_file.exists() and not self.resolved_spec_file.is_symlink():
            if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise RunStateError(
                    f"{self.path} exists and is not a harness run; choose another "
                    "name or output folder"
                )
            return
        self.check_unlocked()
        stored, why = self.resolved_spec()
        if stored is not None and holds_spec(stored, spec_hash):
            self.refuse_links()  # this run is resumed: only its own files may be in it
            return
        if fresh:
            return  # set aside whole, links and all
        self.refuse_links()  # a link is named first: it may be why nothing can be read
        if stored is None:
            raise RunStateError(
                f"{self.resolved_spec_file}: {why}, so which spec this run is of cannot be told. "
                "Rerun with --fresh to start a new run (the old folder is kept, renamed), or "
                "restore the file"
            )
        raise RunStateError(
            f"{self.path} holds a run of a different spec (hash {stored['spec_hash'][:12]}, "
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
        """Lock and create the folder, or reopen it for resuming: the spec files, a readable run file.

        A folder holding another spec's run (reachable only with --fresh) is moved aside first.
        A run file damaged by a kill in the middle of a write is set aside and recreated; the
        arms' checkpoints then refill it. A resumed run keeps its own resolved spec and hash
        (of the first start: a later `training.device` changes neither).
        """
        if self.path.is_symlink():
            self.refuse_links()
        if self.path.exists():
            self.lock()
        if self.resolved_spec_file.exists() or self.resolved_spec_file.is_symlink():
            stored, _ = self.resolved_spec()
            if stored is None or not holds_spec(stored, spec_hash):
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
                moved = self.path.with_name(f"{self.path.name}.replaced-{stamp}")
                shutil.move(str(self.path), str(moved))
                self.unlock()
                stage(f"previous run moved to {moved}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock()
        self.refuse_links()
        stored, _ = self.resolved_spec()
        if stored is None:
            self.write_text(self.spec_file, spec_text)
            stored = {"spec_hash": spec_hash, "spec": resolved}
            self.write_text(self.resolved_spec_file, json.dumps(stored, indent=2))
        store = self.store()
        if not store.path.exists() or not store.intact():
            if store.path.exists():
                store.path.replace(store.path.with_suffix(".h5.damaged"))
                stage("run.h5 was damaged by an interrupted write; rebuilding it from checkpoints")
            store.create(
                {
                    "spec": stored["spec"],
                    "spec_hash": stored["spec_hash"],
                    "spec_name": name,
                    "harness_version": harness_version(),
                    "git_revision": git_revision() or "",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )
        return store

    # --- one arm --------------------------------------------------------------------------------------
    def load_arm_state(self, arm_id: str, *, mmap: bool = False) -> ArmState | None:
        return load_state(self.checkpoint(arm_id), mmap=mmap)

    def check_resumable(self, arm_id: str, config: ArmConfig, state: ArmState | None) -> None:
        """Refuse to continue an arm whose plugins (or data) changed since it started."""
        if state is None or state.complete:
            return
        changes = plugin_changes(state.config, config)
        if changes:
            raise RunStateError(
                f"arm {arm_id} cannot resume: it started with other plugins or data than now ("
                + "; ".join(changes)
                + f"), and would continue on them mid-run. Reinstall what it started with, or "
                f"delete {self.checkpoint(arm_id)} to train this arm again from its first epoch"
            )

    def resume_arm(
        self,
        arm_id: str,
        config: ArmConfig | None = None,
        hardware: dict[str, Any] | None = None,
    ) -> ArmState | None:
        """The arm's checkpointed state, with run.h5 brought back to exactly its rows; None if new.

        With `config` (the arm's configuration as it would start now), an arm whose plugins
        changed is refused; with `hardware` (this machine's facts), a resume on a machine that
        differs is recorded in the state and in the arm's `hardware` in run.h5.
        """
        state = load_state(self.checkpoint(arm_id))
        if state is None:
            return None
        if config is not None:
            self.check_resumable(arm_id, config, state)
        if (
            hardware is not None
            and not state.complete
            and hardware_differs(state.current_hardware, hardware)
        ):
            state.resumes.append({"epoch": state.epochs_done + 1, "hardware": dict(hardware)})
        self._sync_store(arm_id, state)
        return state

    def begin_arm(self, arm_id: str, state: ArmState) -> None:
        """A new arm's (empty) group in run.h5."""
        self.store().init_arm(
            arm_id,
            state.config,
            state.recorded_hardware(),
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

        An epoch whose losses or SAL are not finite is not recorded: the arm is marked as
        diverged at that epoch and `DivergedError` stops it, its last good epoch checkpointed.
        """
        store = self.store()
        bad = row.non_finite()
        if bad:
            epoch = state.epochs_done
            reason = "; ".join(bad)
            store.mark_diverged(arm_id, epoch, reason)
            raise DivergedError(
                f"arm {arm_id} diverged at epoch {epoch}: {reason}. The arm stopped there; "
                f"its {epoch - 1} earlier epoch(s) are kept in run.h5 and "
                f"{self.checkpoint(arm_id)}. The same recipe would diverge again: lower "
                "training.optimizer.lr (or set training.grad_clip) and run the changed spec "
                "with --fresh"
            )
        state.seal()
        store.append_trajectory(arm_id, *snapshots, every_steps)
        save_state(self.checkpoint(arm_id), state, root=self.path)
        store.append_epoch(arm_id, state.epochs_done, row)

    def finish_arm(self, arm_id: str) -> None:
        self.store().mark_complete(arm_id)

    def _sync_store(self, arm_id: str, state: ArmState) -> None:
        """Make the HDF5 arm hold exactly the checkpoint's rows (after a kill at any point).

        The checkpoint's rows are the truth. The file's complete rows must match their digests
        (else the file was edited, and is refused); rows the file lacks, or holds half-written,
        are written again from the checkpoint. The parameter trajectory lives in the file alone,
        so the arm's group is kept (not recreated) whenever it exists, and its trajectory is cut
        back to the checkpoint's optimisation step.
        """
        store = self.store()
        rows = state.rows
        if store.has_arm(arm_id):
            data = store.read_arm(arm_id)
            if data.layer_names == list(state.layers):
                if data.config.as_dict() != state.config.as_dict():
                    raise self._disagrees(arm_id, "its configuration")
                good = min(data.last_complete_epoch, data.rows_recorded, len(rows))
                theirs = data.digests(good)
                if theirs != state.row_digests[:good]:
                    epoch = next(
                        i
                        for i, (a, b) in enumerate(
                            zip(theirs, state.row_digests[:good], strict=True)
                        )
                        if a != b
                    )
                    raise self._disagrees(arm_id, f"epoch {epoch + 1}")
                complete = data.complete
                if (
                    good != len(rows)
                    or data.last_complete_epoch != len(rows)
                    or data.rows_recorded != len(rows)
                ):
                    store.truncate_arm(arm_id, good)
                    for epoch, row in enumerate(rows[good:], start=good + 1):
                        store.append_epoch(arm_id, epoch, row)
                    complete = False
                if state.complete and not complete:
                    store.mark_complete(arm_id)
                if data.hardware != state.recorded_hardware():
                    store.set_hardware(arm_id, state.recorded_hardware())
                if data.diverged is not None:
                    store.mark_diverged(arm_id, None)
                store.truncate_trajectory(arm_id, state.steps)
                return
        self.begin_arm(arm_id, state)
        for epoch, row in enumerate(rows, start=1):
            store.append_epoch(arm_id, epoch, row)
        if state.complete:
            store.mark_complete(arm_id)

    def _disagrees(self, arm_id: str, what: str) -> RunStateError:
        return RunStateError(
            f"{self.run_file}: {what} of arm {arm_id} differs from what "
            f"{self.checkpoint(arm_id)} records: the file was edited or damaged. Delete run.h5 "
            "to rebuild it from the checkpoints (a saved parameter trajectory is lost with it), "
            "or start over with --fresh"
        )


def holds_spec(stored: dict[str, Any], spec_hash: str) -> bool:
    """Whether a stored resolved spec is the spec of this hash.

    Compared by hashing the stored spec again, so a run whose hash was computed by an older
    harness (which also hashed `training.device`) is still recognised, and resumes.
    """
    from harness.specfile import spec_hash as hash_of

    if stored.get("spec_hash") == spec_hash:
        return True
    try:
        return hash_of(stored["spec"]) == spec_hash
    except (KeyError, TypeError, ValueError):
        return False


def _holder(fd: int) -> dict[str, Any]:
    try:
        found = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


@dataclass
class ModelSnapshots:
    """Writes the model after every `every`-th epoch into the run folder, atomically.

    A snapshot goes in before its epoch is recorded; one of an epoch a kill left unrecorded is
    written again when the resumed arm reaches that epoch.
    """

    folder: RunFolder
    every: int

    def save(self, arm_id: str, epoch: int, model_state: dict[str, Any]) -> None:
        path = self.folder.snapshot(arm_id, epoch)
        state = {k: v.detach().cpu() for k, v in model_state.items()}
        atomic_write(path, lambda f: torch.save(state, f), root=self.folder.path)
