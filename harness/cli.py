"""`harness`: eval, validate, schema, plugins, score, report, landscape, leaderboard, submit."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from harness._version import __version__
from harness.errors import HarnessError


def _components(strict: bool):
    from harness.pluginmanager import PluginWarning, get_components

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        components = get_components(strict=strict)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return components


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.preflight import preflight
    from harness.specfile import load_spec

    components = _components(args.strict)
    loaded = load_spec(args.spec, components)
    preflight(loaded, components)
    print(f"{args.spec}: valid (spec hash {loaded.hash[:12]})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.spec import Spec

    print(json.dumps(Spec.model_json_schema(), indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    components = _components(args.strict)
    if args.json:
        out = {
            kind: [
                {
                    "name": r.name,
                    "description": r.record.description,
                    **r.provenance(),
                    "paper": getattr(r.record, "paper", None),
                }
                for r in reg
            ]
            for kind, reg in components.registries.items()
        }
        out["broken"] = [vars(f) for f in components.failures]
        print(json.dumps(out, indent=2))
        return 0
    for kind, reg in components.registries.items():
        print(f"{kind}s:")
        for r in reg:
            print(f"  {r.name:<22} {r.distribution} {r.version}  {r.record.description}")
            paper = getattr(r.record, "paper", "")
            if paper:
                print(f"  {'':<22} follows: {paper}")
            for deviation in getattr(r.record, "deviations", ()):
                print(f"  {'':<22} differs: {deviation}")
        if not len(reg):
            print("  (none)")
    if components.failures:
        print("broken plugins:")
        for f in components.failures:
            print(f"  {f.plugin} ({f.distribution} {f.version}): {f.error}")
    return 0


def _apply_execution_options(args: argparse.Namespace, loaded) -> None:
    """`harness eval`'s execution options over the spec's `execution` section (never its hash)."""
    from pydantic import ValidationError

    from harness.errors import SpecError
    from harness.spec import ExecutionSpec

    options = {
        "executor": ("--executor", args.executor),
        "address": ("--address", args.address),
        "cpus_per_arm": ("--cpus-per-arm", args.cpus_per_arm),
        "gpus_per_arm": ("--gpus-per-arm", args.gpus_per_arm),
        "max_attempts": ("--max-attempts", args.max_attempts),
        "memory_budget_mb": ("--memory-budget", args.memory_budget),
        "data_workers": ("--data-workers", args.data_workers),
    }
    given = {field: value for field, (_, value) in options.items() if value is not None}
    try:
        execution = ExecutionSpec.model_validate(loaded.spec.execution.model_dump() | given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            option = options.get(field, (field, None))[0]
            problems.append(f"{option}: {err['msg']}")
        raise SpecError("\n".join(problems)) from None
    if execution.executor != "ray" and args.address is not None:
        raise SpecError("--address: a Ray cluster's address is for --executor ray")
    loaded.spec.execution = execution


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.atomic import atomic_write_text
    from harness.executors import make_runner
    from harness.progress import make_reporter
    from harness.specfile import load_spec
    from harness.table import markdown, print_table

    started = time.perf_counter()
    components = _components(args.strict)
    loaded = load_spec(args.spec, components)
    _apply_execution_options(args, loaded)
    if args.dry_run:
        from harness.executors.dryrun import dry_run

        plan = dry_run(
            loaded,
            components,
            output_root=args.output,
            fresh=args.fresh,
            reporter=make_reporter(args.quiet),
        )
        print(plan.text())
        return 0
    runner = make_runner(
        loaded,
        components,
        output_root=args.output,
        fresh=args.fresh,
        reporter=make_reporter(args.quiet),
    )
    runner.prepare()
    entries = runner.run()
    atomic_write_text(runner.folder.results_file, markdown(entries))
    print_table(entries, f"{loaded.spec.name}: {_count(entries)}")
    print(
        f"run folder: {runner.run_dir}  (entries in {runner.run_dir / 'entries'}, "
        f"SAL in {runner.run_dir / 'run.h5'}); {time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from harness.entries import compute_entries, write_entries
    from harness.table import print_table

    entries = compute_entries(Path(args.run))
    if not args.no_write:
        write_entries(Path(args.run), entries)
    print_table(entries, f"{args.run}: {_count(entries)} (recomputed from run.h5)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report

    if args.landscape:
        cmd_landscape(args)
    page, figures = build_report(Path(args.run))
    for path in figures:
        print(path)
    print(f"report: {page}")
    return 0


def cmd_landscape(args: argparse.Namespace) -> int:
    from harness.landscape import LandscapeSettings, parse_components
    from harness.report import draw_landscape

    settings = LandscapeSettings(
        components=parse_components(args.components), grid=args.grid, samples=args.samples
    )
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else None
    path = draw_landscape(
        Path(args.run),
        _components(False),
        arms,
        settings,
        log=lambda message: print(message, file=sys.stderr),
    )
    print(path)
    return 0


def _count(entries: list) -> str:
    arms = len({e.arm_id for e in entries})
    return (
        f"{arms} arms"
        if arms == len(entries)
        else f"{arms} arms, {len(entries)} entries (one per task)"
    )


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness import leaderboard

    entries = leaderboard.gather(args.sources)
    for path in leaderboard.write(entries, args.out):
        print(path)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from harness.submit import submit

    written, unchanged = submit(Path(args.run), args.leaderboard, replace=args.replace)
    for path in written:
        print(f"added {path}")
    for path in unchanged:
        print(f"unchanged {path}")
    print(f"leaderboard: {args.leaderboard / 'leaderboard.md'}, {args.leaderboard / 'index.html'}")
    return 0


def cmd_data_extract(args: argparse.Namespace) -> int:
    from harness.archive import default_destination, extract_archive

    dest = extract_archive(
        Path(args.archive), Path(args.dest) if args.dest else default_destination(args.archive)
    )
    print(dest)
    return 0


def _landscape_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms: ids, poison labels or 'clean' (default: every traced arm)",
    )
    p.add_argument(
        "--components",
        default="1,2",
        help="the two principal components of the plane, e.g. 1,2 or 3,4",
    )
    p.add_argument("--grid", type=int, default=21, help="grid points per axis")
    p.add_argument(
        "--samples", type=int, default=1024, help="training samples the loss is evaluated on"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "eval", help="run a spec: train every arm, stream SAL to HDF5, write entries"
    )
    p.add_argument("spec", help="spec file (YAML)")
    p.add_argument(
        "--output", type=Path, default=None, help="folder for runs (overrides the spec's `output`)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over when the run folder holds a different spec (the old run is renamed)",
    )
    p.add_argument("--strict", action="store_true", help="fail on any broken plugin")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the arms, the poison generations they wait on and an estimated cost per arm "
        "from a few timed steps; train nothing, write nothing",
    )
    x = p.add_argument_group(
        "execution",
        "where the arms run; over the spec's `execution` section, never part of its hash",
    )
    x.add_argument(
        "--executor",
        choices=["local", "ray"],
        default=None,
        help="local: every arm in this process (default); ray: each poison generation and arm a "
        "Ray task",
    )
    x.add_argument(
        "--address",
        default=None,
        help="Ray cluster (host:port, ray://host:port, auto); default: RAY_ADDRESS, else a local "
        "Ray instance for this run",
    )
    x.add_argument("--cpus-per-arm", type=float, default=None, help="CPUs per arm (Ray; default 1)")
    x.add_argument("--gpus-per-arm", type=float, default=None, help="GPUs per arm (Ray; default 0)")
    x.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        help="attempts per arm when a worker or node is lost (Ray; default 3)",
    )
    x.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="MB",
        help="largest split held in memory; larger ones stream from a uint8 file in the cache "
        "(default: no limit)",
    )
    x.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="worker processes reading streamed batches (default 2)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("validate", help="check a spec without running it")
    p.add_argument("spec")
    p.add_argument("--strict", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON schema of spec files")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("plugins", help="list every component by kind, and broken plugins")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("score", help="recompute a run's entries from its run.h5 alone")
    p.add_argument("run", help="run folder (holding run.h5)")
    p.add_argument("--no-write", action="store_true", help="print only; leave entries/ as it is")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("report", help="a run's figures (RUN/figures/*.png) and RUN/report.html")
    p.add_argument("run", help="run folder (holding run.h5)")
    p.add_argument(
        "--landscape",
        action="store_true",
        help="draw the loss landscape first (needs a saved trajectory; see `harness landscape`)",
    )
    _landscape_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "landscape", help="loss landscape over the PCA plane of saved parameter trajectories"
    )
    p.add_argument("run", help="run folder (holding run.h5)")
    _landscape_options(p)
    p.set_defaults(func=cmd_landscape)

    p = sub.add_parser(
        "leaderboard", help="gather entries into leaderboard.md and a static index.html"
    )
    p.add_argument(
        "sources",
        nargs="+",
        type=Path,
        help="run folders, leaderboard folders, folders of entry files, or entry files",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for leaderboard.md, index.html, entries.json",
    )
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser(
        "submit", help="check a finished run and file its entries into a leaderboard folder"
    )
    p.add_argument("run", help="run folder (holding run.h5)")
    p.add_argument("--leaderboard", type=Path, required=True, help="the leaderboard folder")
    p.add_argument(
        "--replace", action="store_true", help="overwrite a different entry of the same name"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("data", help="data-set utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "extract", help="unpack a data-set archive into the cache (~/.cache/harness/data)"
    )
    p.add_argument("archive", type=Path)
    p.add_argument("--dest", type=Path, default=None, help="target folder (default: the cache)")
    p.set_defaults(func=cmd_data_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted; rerun the same command to resume from the last complete epoch",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
