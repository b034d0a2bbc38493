"""Reusing another run's arms instead of training them again.

`--reuse-clean RUN`: a leaderboard track trains its clean reference once. Every submission to a
track is scored against the track's clean arms (β and the UD denominator come from them). Rather
than retrain them per submission, the scoring queue runs them once and each submission's run
adopts their checkpoints: an arm whose checkpoint is complete is never retrained, and its rows
are written into the new run's `run.h5` from the checkpoint, exactly as a resumed run does. An arm is adopted only if its configuration (track, defence, seed, plugin
versions) and scored layers are those this run would train, so it is the same computation.

`--reuse-arms RUN`: every complete arm, clean or poisoned, that this run would train identically
(same configuration: track, poison and its parameters and code, defence, seed, versions; same
scored layers). Specs that share arms (Table 2's undefended arms are Table 1's) then train them
once. Arms that differ are trained, and said so; what was adopted from where is recorded in the
run folder (`clean_reference.json` for clean arms, `reused_arms.json` for the others).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from harness.assembly import Assembly
from harness.atomic import atomic_write_text
from harness.checkpoint import load_state
from harness.errors import RunStateError
from harness.plan import Arm
from harness.runfolder import RunFolder

REUSED_FILE = "clean_reference.json"
#: which poisoned arms were adopted from which run (`--reuse-arms`)
REUSED_ARMS_FILE = "reused_arms.json"


def _adoptable(
    folder: RunFolder | None, source: RunFolder, assembly: Assembly, arm: Arm
) -> Literal["yes", "missing", "differs"]:
    """Whether `source`'s arm can be adopted: "missing" when it is not complete there or has
    begun here (`folder`; None for a run folder still to be made), "differs" when this run would
    train it otherwise."""
    if folder is not None and folder.checkpoint(arm.id).exists():
        return "missing"
    state = load_state(source.checkpoint(arm.id))
    if state is None or not state.complete:
        return "missing"
    if state.config != assembly.arm_config(arm) or list(state.layers) != list(assembly.layers):
        return "differs"
    return "yes"


def _copy_checkpoint(folder: RunFolder, source: RunFolder, arm_id: str) -> None:
    folder.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    partial = folder.checkpoint(arm_id).with_suffix(".pt.partial")
    shutil.copyfile(source.checkpoint(arm_id), partial)
    partial.replace(folder.checkpoint(arm_id))


def _source_record(source: RunFolder) -> dict[str, str]:
    root = source.store().root_attrs()
    return {
        "run": str(root.get("spec_name")),
        "spec_hash": str(root.get("spec_hash")),
        "folder": str(source.path),
    }


def _check_source(source: RunFolder) -> None:
    if not source.run_file.exists():
        raise RunStateError(f"{source.path}: no run to reuse arms from")


def _record_clean(folder: RunFolder, source: RunFolder, adopted: list[str]) -> None:
    record = {**_source_record(source), "arms": adopted}
    previous = folder.clean_reference_file
    if previous.exists():
        old = json.loads(previous.read_text(encoding="utf-8"))
        record["arms"] = sorted(set(old.get("arms", [])) | set(adopted))
    atomic_write_text(previous, json.dumps(record, indent=2) + "\n")


def _record_poisoned(folder: RunFolder, source: RunFolder, adopted: list[str]) -> None:
    path = folder.path / REUSED_ARMS_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    record.update({arm_id: _source_record(source) for arm_id in adopted})
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


@dataclass
class ReusePlan:
    """What `ArmSources.adopt` will copy in, worked out before anything is copied, so that a
    dry run can say it and a real run does exactly that."""

    #: arm id -> the run folder its complete checkpoint comes from
    adopted: dict[str, RunFolder] = field(default_factory=dict)
    #: arms complete in the `--reuse-arms` run but configured otherwise there (trained here)
    differing: list[str] = field(default_factory=list)

    def source_of(self, arm_id: str) -> Path | None:
        source = self.adopted.get(arm_id)
        return None if source is None else source.path


@dataclass(frozen=True)
class ArmSources:
    """Other run folders whose complete arms a run adopts instead of training them:
    `clean` (`--reuse-clean`) its clean arms, `any` (`--reuse-arms`) every arm it would train
    identically."""

    clean: Path | None = None
    any: Path | None = None

    def plan(self, folder: RunFolder | None, assembly: Assembly, arms: list[Arm]) -> ReusePlan:
        """Which arms would be adopted into `folder` (None: one still to be made, as after
        `--fresh`), and from where; copies nothing. A clean arm that `--reuse-clean`'s run
        trained otherwise is an error: the track's reference must be this one."""
        plan = ReusePlan()
        if self.clean is not None:
            source = RunFolder(self.clean)
            _check_source(source)
            for arm in arms:
                if arm.poison is not None:
                    continue
                verdict = _adoptable(folder, source, assembly, arm)
                if verdict == "differs":
                    raise RunStateError(
                        f"{source.checkpoint(arm.id)}: the clean arm {arm.id} there is not the "
                        "one this spec trains (another track, recipe or plugin version); it "
                        "cannot be reused"
                    )
                if verdict == "yes":
                    plan.adopted[arm.id] = source
        if self.any is not None:
            source = RunFolder(self.any)
            _check_source(source)
            for arm in arms:
                if arm.id in plan.adopted:
                    continue
                verdict = _adoptable(folder, source, assembly, arm)
                if verdict == "yes":
                    plan.adopted[arm.id] = source
                elif verdict == "differs":
                    plan.differing.append(arm.id)
        return plan

    def adopt(
        self, folder: RunFolder, assembly: Assembly, arms: list[Arm], stage: Callable[[str], None]
    ) -> ReusePlan:
        """Copy the arms in before any is trained, saying which (and which could not be), and
        record where each came from (`clean_reference.json`, `reused_arms.json`)."""
        plan = self.plan(folder, assembly, arms)
        poison_of = {arm.id: arm.poison for arm in arms}
        for source_path in dict.fromkeys(s.path for s in plan.adopted.values()):
            source = RunFolder(source_path)
            ids = [a for a, s in plan.adopted.items() if s.path == source_path]
            for arm_id in ids:
                _copy_checkpoint(folder, source, arm_id)
            clean = [a for a in ids if poison_of[a] is None]
            poisoned = [a for a in ids if poison_of[a] is not None]
            if clean:
                _record_clean(folder, source, clean)
            if poisoned:
                _record_poisoned(folder, source, poisoned)
            clean_flag = self.clean is not None and source_path == Path(self.clean)
            what = "clean arms" if clean_flag else "arms"
            stage(f"{what} from {source_path}: {', '.join(ids)}")
        if plan.differing:
            stage(
                f"not reused from {self.any} (configured otherwise there; trained here): "
                + ", ".join(plan.differing)
            )
        return plan
