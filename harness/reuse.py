"""Reusing another run's arms instead of training them again.

`--reuse-clean RUN`: a leaderboard track trains its clean reference once. Every submission to a
track is scored against the track's clean arms (β and the UD denominator come from them). Rather than retrain them per submission, the scoring queue runs them once and
each submission's run adopts their checkpoints: an arm whose checkpoint is complete is never
retrained, and its rows are written into the new run's `run.h5` from the checkpoint, exactly as a
resumed run does. An arm is adopted only if its configuration (track, defence, seed, plugin
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
from dataclasses import dataclass
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
    folder: RunFolder, source: RunFolder, assembly: Assembly, arm: Arm
) -> Literal["yes", "missing", "differs"]:
    """Whether `source`'s arm can be adopted: "missing" when it is not complete there or has
    begun here, "differs" when this run would train it otherwise."""
    if folder.checkpoint(arm.id).exists():
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


def adopt_clean_arms(
    folder: RunFolder, source: RunFolder, assembly: Assembly, arms: list[Arm]
) -> list[str]:
    """Copy `source`'s complete clean arms that match this run's into `folder`; their ids. A
    clean arm configured otherwise there is an error: the track's reference must be this one."""
    _check_source(source)
    adopted = []
    for arm in arms:
        if arm.poison is not None:
            continue
        verdict = _adoptable(folder, source, assembly, arm)
        if verdict == "differs":
            raise RunStateError(
                f"{source.checkpoint(arm.id)}: the clean arm {arm.id} there is not the one this spec "
                "trains (another track, recipe or plugin version); it cannot be reused"
            )
        if verdict == "yes":
            _copy_checkpoint(folder, source, arm.id)
            adopted.append(arm.id)
    if adopted:
        _record_clean(folder, source, adopted)
    return adopted


def adopt_matching_arms(
    folder: RunFolder, source: RunFolder, assembly: Assembly, arms: list[Arm]
) -> tuple[list[str], list[str]]:
    """Copy every complete arm of `source` that this run would train identically into `folder`;
    (the adopted ids, the ids complete there but configured otherwise, which are trained)."""
    _check_source(source)
    adopted, differing = [], []
    for arm in arms:
        verdict = _adoptable(folder, source, assembly, arm)
        if verdict == "yes":
            _copy_checkpoint(folder, source, arm.id)
            adopted.append(arm)
        elif verdict == "differs":
            differing.append(arm.id)
    clean = [arm.id for arm in adopted if arm.poison is None]
    poisoned = [arm.id for arm in adopted if arm.poison is not None]
    if clean:
        _record_clean(folder, source, clean)
    if poisoned:
        _record_poisoned(folder, source, poisoned)
    return [arm.id for arm in adopted], differing


@dataclass(frozen=True)
class ArmSources:
    """Other run folders whose complete arms a run adopts instead of training them:
    `clean` (`--reuse-clean`) its clean arms, `any` (`--reuse-arms`) every arm it would train
    identically."""

    clean: Path | None = None
    any: Path | None = None

    def adopt(
        self, folder: RunFolder, assembly: Assembly, arms: list[Arm], stage: Callable[[str], None]
    ) -> None:
        """Copy the arms in before any is trained, saying which (and which could not be)."""
        if self.clean is not None:
            adopted = adopt_clean_arms(folder, RunFolder(self.clean), assembly, arms)
            if adopted:
                stage(f"clean arms from {self.clean}: {', '.join(adopted)}")
        if self.any is not None:
            adopted, differing = adopt_matching_arms(folder, RunFolder(self.any), assembly, arms)
            if adopted:
                stage(f"arms from {self.any}: {', '.join(adopted)}")
            if differing:
                stage(
                    f"not reused from {self.any} (configured otherwise there; trained here): "
                    + ", ".join(differing)
                )
