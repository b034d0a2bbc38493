"""Reusing another run's clean arms: a leaderboard track trains its clean reference once.

Every submission to a track is scored against the track's clean arms (β and the UD denominator
come from them). Rather than retrain them per submission, the scoring queue runs them once and
each submission's run adopts their checkpoints: an arm whose checkpoint is complete is never
retrained, and its rows are written into the new run's `run.h5` from the checkpoint, exactly as a
resumed run does. An arm is adopted only if its configuration (track, defence, seed, plugin
versions) and scored layers are those this run would train, so it is the same computation.
"""

from __future__ import annotations

import json
import shutil

from harness.assembly import Assembly
from harness.atomic import atomic_write_text
from harness.checkpoint import load_state
from harness.errors import RunStateError
from harness.plan import Arm
from harness.runfolder import RunFolder

REUSED_FILE = "clean_reference.json"


def adopt_clean_arms(
    folder: RunFolder, source: RunFolder, assembly: Assembly, arms: list[Arm]
) -> list[str]:
    """Copy `source`'s complete clean arms that match this run's into `folder`; their ids."""
    if not source.run_file.exists():
        raise RunStateError(f"{source.path}: no run to reuse clean arms from")
    adopted = []
    for arm in arms:
        if arm.poison is not None or folder.checkpoint(arm.id).exists():
            continue
        state = load_state(source.checkpoint(arm.id))
        if state is None or not state.complete:
            continue
        if state.config != assembly.arm_config(arm) or list(state.layers) != list(assembly.layers):
            raise RunStateError(
                f"{source.checkpoint(arm.id)}: the clean arm {arm.id} there is not the one this spec "
                "trains (another track, recipe or plugin version); it cannot be reused"
            )
        folder.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        partial = folder.checkpoint(arm.id).with_suffix(".pt.partial")
        shutil.copyfile(source.checkpoint(arm.id), partial)
        partial.replace(folder.checkpoint(arm.id))
        adopted.append(arm.id)
    if adopted:
        root = source.store().root_attrs()
        record = {
            "run": str(root.get("spec_name")),
            "spec_hash": str(root.get("spec_hash")),
            "folder": str(source.path),
            "arms": adopted,
        }
        previous = folder.clean_reference_file
        if previous.exists():
            old = json.loads(previous.read_text(encoding="utf-8"))
            record["arms"] = sorted(set(old.get("arms", [])) | set(adopted))
        atomic_write_text(previous, json.dumps(record, indent=2) + "\n")
    return adopted
