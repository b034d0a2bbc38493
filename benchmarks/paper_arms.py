"""The paper campaign's arms kept between machines: a session that ends on a machine the next one
does not get back would otherwise lose every arm it finished (a spec of 24 arms takes ~13 h on
two cores; a session is ~3 h).

    python benchmarks/paper_arms.py keep RUNS/NAME...   # each run's complete arms
    python benchmarks/paper_arms.py todo specs/NAME.yaml  # the arms not kept yet: --arms for it

`keep` copies each complete arm's entry of a run folder into docs/paper-arms/NAME/ARM.json unless
one is kept already: scored here when the run is stopped, else those the run wrote as each of
its arms finished (so the arms can be kept, and committed, while the lanes go on). Every arm is
scored against the clean reference of its own run, which each session trains again (β needs
it). Machines of this workplace do not all round alike (the quickstart's numbers differ between
two of them at the same code, torch build and thread count; Table 2's clean arm once equalled
Table 1's to the bit on another), so a session's clean arm may differ from the one kept: it is
then kept beside it (ARM~2.json, ...) and the session's arms keep their own β and UD
denominator, which their entries record. docs/results.md says how the machines' clean arms
compare.

`todo` prints the arms of a spec neither kept nor filed in leaderboard/entries by `harness submit`
(comma-separated, clean references left out: `harness eval --arms` trains them anyway); nothing
when every arm is. With --defended-only it leaves out the undefended poisoned arms: Table 2's
are Table 1's (its spec adopts them with --reuse-arms where Table 1's run folder is here), read
from Table 1's filed entries. benchmarks/paper_runs.sh passes it to `harness eval --arms`, and
benchmarks/paper_results.py reads the kept entries for the arms no run folder holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ruamel.yaml import YAML

from harness.atomic import atomic_write_text
from harness.entries import Entry, compute_entries, read_entries
from harness.errors import HarnessError
from harness.plan import plan_arms
from harness.runfolder import RunFolder
from harness.spec import Spec

KEPT = Path(__file__).resolve().parents[1] / "docs" / "paper-arms"
FILED = Path(__file__).resolve().parents[1] / "leaderboard" / "entries"
#: what must be equal for two entries to be the same arm's result (not timings, machine, file;
#: not the UD change either, which needs the undefended arm scored in the same session)
SAME = {"results", "spec_hash", "track", "poison", "defence", "epochs", "seed"}
SESSION = {"ud_undefended", "ud_change"}
#: clean__none__s0~2.json: the clean arm as a second machine trained it, where it differed
REPLICA = "~"


def kept_entries(kept: Path, name: str) -> dict[str, Entry]:
    """The entries kept for run `name`, by arm id; a clean arm as the first machine trained it
    (its replicas from other machines apart: `clean_replicas`)."""
    folder = kept / name
    if not folder.is_dir():
        return {}
    paths = (p for p in sorted(folder.glob("*.json")) if REPLICA not in p.stem)
    found = (Entry.model_validate_json(p.read_text()) for p in paths)
    return {e.arm_id: e for e in found}


def clean_replicas(kept: Path, name: str, arm_id: str) -> list[Entry]:
    """The clean arm `arm_id` as other sessions' machines trained it, where it differed."""
    paths = sorted((kept / name).glob(f"{arm_id}{REPLICA}*.json"), key=_replica_number)
    return [Entry.model_validate_json(p.read_text()) for p in paths]


def _replica_number(path: Path) -> int:
    return int(path.stem.rsplit(REPLICA, 1)[1])


def same(a: Entry, b: Entry) -> bool:
    def result(entry: Entry) -> dict:
        dump = entry.model_dump(include=SAME)
        return dump | {"results": {k: v for k, v in dump["results"].items() if k not in SESSION}}

    return result(a) == result(b)


def keep(run_dir: Path, kept: Path = KEPT) -> list[str]:
    """Copy the complete arms of `run_dir` not kept yet; returns what was done, line by line.

    A stopped run is scored here from its run.h5; a run still training, from the entries it
    wrote as each of its arms finished."""
    if RunFolder(run_dir).holder() is None:
        entries = compute_entries(run_dir)
    else:
        entries = read_entries(run_dir) if (run_dir / "entries").is_dir() else []
    if not entries:
        return [f"{run_dir}: no complete arm"]
    name = entries[0].run
    have = kept_entries(kept, name)
    said = []
    for entry in entries:
        old = have.get(entry.arm_id)
        if old is None:
            atomic_write_text(kept / name / f"{entry.arm_id}.json", entry.model_dump_json(indent=1))
            said.append(f"{name}: kept {entry.arm_id}")
        elif same(entry, old):
            continue
        elif entry.poison is None and entry.defence.name == "none":
            replicas = clean_replicas(kept, name, entry.arm_id)
            if any(same(entry, r) for r in replicas):
                continue
            replica = f"{entry.arm_id}{REPLICA}{len(replicas) + 2}"
            atomic_write_text(kept / name / f"{replica}.json", entry.model_dump_json(indent=1))
            said.append(
                f"{name}: {entry.arm_id} differs from the one kept (another CPU, torch build or "
                f"thread count): kept beside it as {replica}; this run's arms are scored against "
                "it (their entries hold its β and #LP)"
            )
        else:
            said.append(f"{name}: {entry.arm_id} differs from the one kept: left as it was")
    return said


def filed_arms(filed: Path, name: str) -> set[str]:
    """The arms of run `name` that `harness submit` filed in a leaderboard's entries folder."""
    found = (Entry.model_validate_json(p.read_text()) for p in sorted(filed.glob("*.json")))
    return {e.arm_id for e in found if e.run == name}


def todo(
    spec_file: Path, kept: Path = KEPT, filed: Path = FILED, *, defended_only: bool = False
) -> list[str]:
    """The planned arms of the spec neither kept nor filed in the leaderboard, clean references
    left out; with `defended_only` the undefended poisoned arms too (Table 2's are Table 1's)."""
    spec = Spec.model_validate(YAML(typ="safe", pure=True).load(spec_file.read_text()))
    have = kept_entries(kept, spec.name).keys() | filed_arms(filed, spec.name)
    return [
        a.id
        for a in plan_arms(spec)
        if not a.is_clean_reference
        and a.id not in have
        and not (defended_only and a.defence_key == "none")
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, default=KEPT, help="default: docs/paper-arms")
    parser.add_argument(
        "--filed",
        type=Path,
        default=FILED,
        help="todo: arms filed here are done too (default: leaderboard/entries)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keep", help="keep the complete arms of run folders")
    k.add_argument("runs", type=Path, nargs="+")
    t = sub.add_parser("todo", help="the arms of a spec not kept yet (for harness eval --arms)")
    t.add_argument("spec", type=Path)
    t.add_argument(
        "--defended-only",
        action="store_true",
        help="leave out the undefended poisoned arms (Table 2's: Table 1 trained them)",
    )
    args = parser.parse_args(argv)
    if args.command == "todo":
        print(",".join(todo(args.spec, args.kept, args.filed, defended_only=args.defended_only)))
        return 0
    status = 0
    for run in args.runs:
        try:
            print("\n".join(keep(run, args.kept)))
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
