"""`harness submit RUN --leaderboard DIR`: check a finished run, then file its entries.

A leaderboard takes entries from third parties, so an entry is accepted only if everything it
claims can be checked against the run it came from:

1. every arm the spec plans is in `run.h5` and complete;
2. the spec hash agrees everywhere: the one stored in `run.h5`, the hash of the resolved spec
   stored there, `spec.resolved.json` (its stored hash and the hash of its spec), every entry's;
3. every entry names the SHA-256 of `run.h5` as it is now;
4. the entries recomputed from `run.h5` alone (`compute_entries`) equal the stored ones, field
   for field, and there are no more and no fewer of them;
5. every component (data set, task, backbone, poison, defence) records the distribution and
   version it came from, so the run can be repeated with the same plugins.

Only then are the entries copied to `DIR/entries/<run>__<arm>.json`, and the leaderboard pages
in `DIR` rebuilt. An existing different entry of the same name is never overwritten without
`--replace`. Any failed check refuses the whole submission, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.atomic import atomic_write_text
from harness.entries import Entry, compute_entries, sha256_file
from harness.errors import HarnessError
from harness.plan import plan_arms
from harness.runfolder import ENTRIES_DIR, RUN_FILE, RunFolder
from harness.spec import Spec
from harness.specfile import spec_hash
from harness.store import RunStore

UNRECORDED = {"", "?", "<unknown>", "<local>"}


class SubmissionError(HarnessError):
    """A run or entry that a leaderboard must not accept, with the reason."""


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths where two JSON-like values differ (the fields an edit touched)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [f"{path} (stored {json.dumps(a)}, recomputed {json.dumps(b)})"]


def _read_stored_entries(run_dir: Path) -> list[Entry]:
    entries = []
    for path in sorted(RunFolder(run_dir).entries_dir.glob("*.json")):
        try:
            entries.append(Entry.model_validate_json(path.read_text(encoding="utf-8")))
        except (ValidationError, UnicodeDecodeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SubmissionError(f"{path}: not a valid entry: {first}") from None
        if path.stem != entries[-1].entry_id:
            raise SubmissionError(
                f"{path}: the file is named for arm {path.stem!r} but holds arm "
                f"{entries[-1].entry_id!r}"
            )
    return entries


def _check_complete(run_dir: Path, store: RunStore, spec: Spec) -> None:
    present = set(store.arm_ids())
    problems = []
    for arm in plan_arms(spec):
        if arm.id not in present:
            problems.append(f"arm {arm.id} never started")
            continue
        data = store.read_arm(arm.id)
        if not data.complete:
            problems.append(
                f"arm {arm.id} is not complete ({data.last_complete_epoch} of "
                f"{data.epochs_planned} epochs)"
            )
    if problems:
        raise SubmissionError(
            f"{run_dir}: the run is incomplete: "
            + "; ".join(problems)
            + ". Finish it with `harness eval` (it resumes) before submitting"
        )


def _check_spec_hash(run_dir: Path, root: dict[str, Any], entries: list[Entry]) -> None:
    stored = root.get("spec_hash")
    resolved = json.loads(root["spec"])
    if spec_hash(resolved) != stored:
        raise SubmissionError(
            f"{run_dir / RUN_FILE}: spec hash mismatch: the resolved spec in the file hashes "
            f"to {spec_hash(resolved)[:12]}, the file records {str(stored)[:12]}"
        )
    spec_file = RunFolder(run_dir).resolved_spec_file
    if not spec_file.exists():
        raise SubmissionError(f"{spec_file}: missing; the run folder is incomplete")
    try:
        on_disk = json.loads(spec_file.read_text(encoding="utf-8"))
        disk_hash, disk_spec = on_disk["spec_hash"], on_disk["spec"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SubmissionError(f"{spec_file}: unreadable ({exc})") from None
    if disk_hash != stored or spec_hash(disk_spec) != stored:
        raise SubmissionError(
            f"{spec_file}: spec hash mismatch: it records {str(disk_hash)[:12]} and its spec hashes to "
            f"{spec_hash(disk_spec)[:12]}, but run.h5 was computed from {str(stored)[:12]}"
        )
    for e in entries:
        if e.spec_hash != stored:
            raise SubmissionError(
                f"entry {e.arm_id}: spec hash mismatch: the entry records {e.spec_hash[:12]}, "
                f"run.h5 was computed from {str(stored)[:12]}"
            )


def _check_versions(entries: list[Entry]) -> None:
    for e in entries:
        components = {
            "task": e.track.task.model_dump(),
            "backbone": e.track.backbone.model_dump(),
            "defence": e.defence.model_dump(),
            "dataset": e.track.dataset,
        }
        if e.poison is not None:
            components["poison"] = e.poison.model_dump()
        for kind, info in components.items():
            dist, version = str(info.get("distribution", "")), str(info.get("version", ""))
            if dist in UNRECORDED or version in UNRECORDED:
                raise SubmissionError(
                    f"entry {e.arm_id}: the {kind} {info.get('name')!r} records no installable plugin "
                    f"(distribution {dist or 'none'!r}, version {version or 'none'!r}); components must come "
                    "from an installed package so that others can run them"
                )


def verify_run(run_dir: Path) -> list[Entry]:
    """The run's entries, once every check passes; raises SubmissionError with the first failure."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    path = folder.run_file
    store = folder.store()
    if not path.exists() or not store.readable():
        raise SubmissionError(f"{path}: no readable run file")
    root = store.root_attrs()
    try:
        spec = Spec.model_validate(json.loads(root["spec"]))
    except (KeyError, json.JSONDecodeError, ValidationError) as exc:
        raise SubmissionError(
            f"{path}: the stored spec is not a valid spec ({str(exc).splitlines()[0]})"
        ) from None
    _check_complete(run_dir, store, spec)
    stored = _read_stored_entries(run_dir)
    _check_spec_hash(run_dir, root, stored)
    digest = sha256_file(path)
    for e in stored:
        if e.hdf5.sha256 != digest:
            raise SubmissionError(
                f"entry {e.arm_id}: names run.h5 with SHA-256 {e.hdf5.sha256[:12]}, but the "
                f"file's is {digest[:12]}: the file changed after the entries were written"
            )
    recomputed = {e.entry_id: e for e in compute_entries(run_dir)}
    by_arm = {e.entry_id: e for e in stored}
    missing, extra = sorted(set(recomputed) - set(by_arm)), sorted(set(by_arm) - set(recomputed))
    if missing or extra:
        raise SubmissionError(
            f"{run_dir / ENTRIES_DIR}: entries do not match the run's arms"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not in run.h5: {', '.join(extra)}" if extra else "")
        )
    for arm_id, entry in sorted(by_arm.items()):
        if entry != recomputed[arm_id]:
            fields = _diff(
                entry.model_dump(mode="json"), recomputed[arm_id].model_dump(mode="json")
            )
            raise SubmissionError(
                f"entry {arm_id} disagrees with the one recomputed from run.h5: "
                + "; ".join(fields[:5])
                + (" …" if len(fields) > 5 else "")
            )
    _check_versions(stored)
    return stored


def entry_file_name(entry: Entry) -> str:
    return f"{entry.run}__{entry.entry_id}.json"


def submit(
    run_dir: Path,
    leaderboard_dir: Path,
    *,
    replace: bool = False,
    exclude_arms: frozenset[str] = frozenset(),
) -> tuple[list[Path], list[Path]]:
    """Verify the run, file its entries, rebuild the pages; returns (entry files written, unchanged).

    `exclude_arms`: arms verified with the run but not filed (a track's clean arms, adopted from
    the track's clean run, which is filed once by itself).
    """
    from harness import leaderboard

    entries = [e for e in verify_run(run_dir) if e.arm_id not in exclude_arms]
    target = Path(leaderboard_dir) / ENTRIES_DIR
    plan = []
    for e in entries:
        path = target / entry_file_name(e)
        text = e.model_dump_json(indent=2) + "\n"
        if path.exists():
            try:
                same = Entry.model_validate_json(path.read_text(encoding="utf-8")) == e
            except (ValidationError, UnicodeDecodeError):
                same = False
            if same:
                plan.append((path, None))
                continue
            if not replace:
                raise SubmissionError(
                    f"{path} already holds a different entry of the same name (another run "
                    f"called {e.run!r}?); rename the run, or pass --replace to overwrite it"
                )
        plan.append((path, text))
    written, unchanged = [], []
    for path, text in plan:  # every check passed for every entry before anything is written
        if text is None:
            unchanged.append(path)
        else:
            atomic_write_text(path, text)
            written.append(path)
    leaderboard.write(leaderboard.gather([Path(leaderboard_dir)]), Path(leaderboard_dir))
    return written, unchanged
