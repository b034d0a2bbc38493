"""`harness submit RUN --leaderboard DIR`: check a finished run as a whole, then file its entries.

A leaderboard takes entries from third parties, so an entry is accepted only if everything it
claims can be checked against the run it came from, and the run against itself:

1. the run folder holds no link and is not in use; every name read from its files (the run's
   name, arm ids, entry file names) is a valid name before it becomes part of a path;
2. the spec hash agrees everywhere: the one stored in `run.h5`, the hash of the resolved spec
   stored there, `spec.resolved.json` (its stored hash and the hash of its spec), every entry's;
   the run's name is the spec's;
3. the arms in `run.h5` are exactly the spec's plan (none missing, none added), each complete,
   with as many rows in every array as the spec's epochs, and a configuration that is the one
   the spec plans (poison, defence, seed, data, backbone, task, recipe, SAL settings);
4. each arm's checkpoint agrees with `run.h5`: the same configuration, layers and hardware, and
   the rows of `run.h5` hash to the digests the checkpoint recorded epoch by epoch, so an edited
   value is found even after `harness score` rewrote the entries;
5. no arm diverged, and every number in the entries is finite;
6. every entry names the SHA-256 of `run.h5` as it is now, and the entries recomputed from
   `run.h5` alone (`compute_entries`) equal the stored ones, field for field, no more, no fewer;
7. every component (data set, task, backbone, poison, defence) records the distribution and
   version it came from, so the run can be repeated with the same plugins.

Only then are the entries copied to `DIR/entries/<run>__<arm>.json` (through real folders
only), and the leaderboard pages in `DIR` rebuilt; a file there that is not a valid entry is
reported and skipped, never blocking the pages. An existing different entry of the same name is
never overwritten without `--replace`. Any failed check refuses the whole submission, with the
reason.

What this cannot prove: that the files came from training at all. A run folder whose `run.h5`
and checkpoints were rewritten consistently (a script that recomputes the digests), or a run
made with a modified harness, passes. The README's "What submission checks" says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.armconfig import ArmConfig, is_path_param, recipe
from harness.atomic import atomic_write_text
from harness.entries import Entry, compute_entries, sha256_file
from harness.errors import HarnessError
from harness.names import SLUG
from harness.plan import Arm, plan_arms
from harness.runfolder import ENTRIES_DIR, RUN_FILE, RunFolder
from harness.spec import ComponentRef, Spec
from harness.specfile import spec_hash
from harness.store import ArmData, RunStore

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
        except (ValidationError, UnicodeDecodeError, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SubmissionError(f"{path}: not a valid entry: {first}") from None
        if path.stem != entries[-1].entry_id:
            raise SubmissionError(
                f"{path}: the file is named for arm {path.stem!r} but holds arm "
                f"{entries[-1].entry_id!r}"
            )
    return entries


def _check_arms(run_dir: Path, store: RunStore, spec: Spec) -> dict[str, ArmData]:
    """The arms of run.h5, once they are exactly the spec's plan, complete and as planned."""
    plan = {arm.id: arm for arm in plan_arms(spec)}
    present = store.arm_ids()
    extra = sorted(set(present) - set(plan))
    if extra:
        shown = ", ".join(repr(a) if re.match(r"^[\w.-]+$", a) else "<a bad name>" for a in extra)
        raise SubmissionError(
            f"{run_dir / RUN_FILE}: arm(s) {shown} are not in the spec's plan; a run holds "
            "exactly the arms its spec trains"
        )
    problems = []
    arms: dict[str, ArmData] = {}
    for arm_id in plan:
        if arm_id not in present:
            problems.append(f"arm {arm_id} never started")
            continue
        data = arms[arm_id] = store.read_arm(arm_id)
        if data.diverged is not None:
            problems.append(
                f"arm {arm_id} diverged at epoch {data.diverged[0]} ({data.diverged[1]})"
            )
        elif not data.complete:
            problems.append(
                f"arm {arm_id} is not complete ({data.last_complete_epoch} of "
                f"{data.epochs_planned} epochs)"
            )
    if problems:
        raise SubmissionError(
            f"{run_dir}: the run is incomplete: "
            + "; ".join(problems)
            + ". Finish it with `harness eval` (it resumes) before submitting"
        )
    epochs = spec.training.epochs
    for arm_id, data in arms.items():
        lengths = {name: a.shape[0] for name, a in data.arrays.items()}
        lengths |= {f"metrics/{name}": m.shape[0] for name, m in data.metrics.items()}
        lengths |= {f"tasks/{label}/sal": t.shape[0] for label, t in data.task_sal.items()}
        wrong = sorted(name for name, n in lengths.items() if n != epochs)
        if wrong or data.epochs_planned != epochs or data.last_complete_epoch != epochs:
            raise SubmissionError(
                f"arm {arm_id}: the spec trains {epochs} epochs, but run.h5 records "
                f"{data.last_complete_epoch} of {data.epochs_planned}"
                + (
                    f" and {', '.join(f'{w} has {lengths[w]} rows' for w in wrong[:3])}"
                    if wrong
                    else ""
                )
            )
        differences = _config_differences(data.config, plan[arm_id], spec)
        if differences:
            raise SubmissionError(
                f"arm {arm_id}: its configuration in run.h5 is not the one the spec plans: "
                + "; ".join(differences[:5])
            )
    return arms


def _config_differences(config: ArmConfig, arm: Arm, spec: Spec) -> list[str]:
    """Where an arm's recorded configuration departs from what the spec plans for it."""
    found: list[str] = []

    def same(what: str, recorded: Any, planned: Any) -> None:
        if recorded != planned:
            found.append(
                f"{what} is {json.dumps(recorded, default=str)[:80]}, the spec plans "
                f"{json.dumps(planned, default=str)[:80]}"
            )

    def component(what: str, info: Any, ref: ComponentRef | None, label: str | None) -> None:
        if ref is None or info is None:
            same(what, None if info is None else info.name, None if ref is None else ref.name)
            return
        same(f"{what}.name", info.name, ref.name)
        same(f"{what}.params", info.params, ref.params)
        if label is not None:
            same(f"{what}.label", info.label, label)

    same("arm_id", config.arm_id, arm.id)
    same("seed", config.seed, arm.seed)
    same("poison_key", config.poison_key, arm.poison_key)
    same("defence_key", config.defence_key, arm.defence_key)
    component("poison", config.poison, arm.poison, arm.poison.key if arm.poison else None)
    component("defence", config.defence, arm.defence, arm.defence.key)
    track = config.track
    same("track.dataset.name", track.dataset.name, spec.data.name)
    same(
        "track.dataset.params",
        {k: v for k, v in track.dataset.params.items() if not is_path_param(k)},
        {k: v for k, v in spec.data.params.items() if not is_path_param(k)},
    )
    same("track.dataset.subset", track.dataset.subset, spec.data.subset.model_dump(mode="json"))
    component("track.backbone", track.backbone, spec.backbone, None)
    same(
        "track.training",
        {k: v for k, v in track.training.items() if k != "device"},
        recipe(spec),
    )
    same("track.sal", track.sal, spec.sal.model_dump(mode="json"))
    if spec.tasks:
        recorded = [(t.label, t.name, t.params, t.weight) for t in track.tasks or []]
        same("track.tasks", recorded, [(r.key, r.name, r.params, r.weight) for r in spec.tasks])
    else:
        component("track.task", track.task, spec.task, None)
    return found


def _check_checkpoints(folder: RunFolder, arms: dict[str, ArmData]) -> None:
    """Each arm's checkpoint: present, readable, and agreeing with run.h5 row for row."""
    for arm_id, data in arms.items():
        path = folder.checkpoint(arm_id)
        try:
            state = folder.load_arm_state(arm_id, mmap=True)
        except HarnessError as exc:
            raise SubmissionError(str(exc)) from None
        if state is None:
            raise SubmissionError(
                f"{path}: missing; the rows of run.h5 are checked against the arms' checkpoints, "
                "so a run is submitted with its checkpoints folder"
            )
        if not state.complete or state.epochs_done != data.last_complete_epoch:
            raise SubmissionError(
                f"{path}: records {state.epochs_done} epochs{'' if state.complete else ' (not complete)'}, "
                f"run.h5 {data.last_complete_epoch}: they are not of one run"
            )
        if (
            state.config.as_dict() != data.config.as_dict()
            or list(state.layers) != data.layer_names
        ):
            raise SubmissionError(
                f"{folder.run_file}: arm {arm_id}'s configuration differs from its checkpoint's: "
                "the file was edited"
            )
        digests = data.digests()
        if digests != state.row_digests:
            epoch = next(
                i + 1
                for i, (a, b) in enumerate(zip(digests, state.row_digests, strict=True))
                if a != b
            )
            raise SubmissionError(
                f"{folder.run_file}: epoch {epoch} of arm {arm_id} differs from what {path} "
                "recorded (its SAL, losses or metrics were edited after training)"
            )
        if data.hardware != state.recorded_hardware():
            raise SubmissionError(
                f"{folder.run_file}: arm {arm_id}'s hardware differs from what {path} recorded"
            )


def _check_spec_hash(run_dir: Path, root: dict[str, Any], entries: list[Entry]) -> None:
    stored = root.get("spec_hash")
    resolved = json.loads(root["spec"])
    if stored not in _hashes(resolved):
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
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{spec_file}: unreadable ({type(exc).__name__}: {exc})") from None
    if disk_hash != stored or stored not in _hashes(disk_spec):
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


def _hashes(resolved: Any) -> tuple[str, ...]:
    """The hashes a resolved spec may carry: today's, and that of runs started before
    `training.device` left the hash."""
    try:
        return spec_hash(resolved), spec_hash(resolved, with_device=True)
    except (TypeError, ValueError, AttributeError):
        return ()


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
    try:
        folder.refuse_links()
        folder.check_unlocked()
    except HarnessError as exc:
        raise SubmissionError(str(exc)) from None
    path = folder.run_file
    store = folder.store()
    if not path.exists() or not store.readable():
        raise SubmissionError(f"{path}: no readable run file")
    root = store.root_attrs()
    try:
        spec = Spec.model_validate(json.loads(root["spec"]))
    except (KeyError, TypeError, json.JSONDecodeError, ValidationError) as exc:
        raise SubmissionError(
            f"{path}: the stored spec is not a valid spec ({str(exc).splitlines()[0]})"
        ) from None
    name = root.get("spec_name")
    if not isinstance(name, str) or not re.match(SLUG, name) or name != spec.name:
        raise SubmissionError(
            f"{path}: the run is named {str(name)[:80]!r} but its spec is {spec.name!r}; "
            "the file was edited"
        )
    arms = _check_arms(run_dir, store, spec)
    _check_checkpoints(folder, arms)
    stored = _read_stored_entries(run_dir)
    _check_spec_hash(run_dir, root, stored)
    digest = sha256_file(path)
    for e in stored:
        if e.hdf5.sha256 != digest:
            raise SubmissionError(
                f"entry {e.arm_id}: names run.h5 with SHA-256 {e.hdf5.sha256[:12]}, but the "
                f"file's is {digest[:12]}: the file changed after the entries were written"
            )
    try:
        recomputed = {e.entry_id: e for e in compute_entries(run_dir)}
    except HarnessError as exc:
        raise SubmissionError(str(exc)) from None
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
        try:
            json.dumps(entry.model_dump(mode="json"), allow_nan=False)
        except ValueError:
            raise SubmissionError(
                f"entry {arm_id} holds a number that is not finite (NaN or infinity)"
            ) from None
        if entry.run != spec.name:
            raise SubmissionError(f"entry {arm_id} names run {entry.run!r}, not {spec.name!r}")
    _check_versions(stored)
    return stored


def entry_file_name(entry: Entry) -> str:
    """`<run>__<arm>[__<task>].json`; the parts are checked names, so it is one plain file name."""
    name = f"{entry.run}__{entry.entry_id}.json"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.json$", name) or ".." in name:
        raise SubmissionError(f"entry {entry.entry_id!r}: {name!r} is not a plain file name")
    return name


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
    board = Path(leaderboard_dir)
    target = board / ENTRIES_DIR
    plan = []
    for e in entries:
        path = target / entry_file_name(e)
        text = e.model_dump_json(indent=2) + "\n"
        if path.exists() or path.is_symlink():
            try:
                same = not path.is_symlink() and (
                    Entry.model_validate_json(path.read_text(encoding="utf-8")) == e
                )
            except (ValidationError, UnicodeDecodeError, OSError):
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
            atomic_write_text(path, text, root=board)
            written.append(path)
    leaderboard.write(leaderboard.gather([board]), board)
    return written, unchanged
