"""`harness`: eval, validate, schema, plugins, score, report, landscape, sal-agreement, leaderboard,
submit, cache, data."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from harness import termination
from harness._version import __version__
from harness.errors import HarnessError, Terminated


def _components(strict: bool):
    from harness.pluginmanager import PluginWarning, get_components

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        components = get_components(strict=strict)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return components


def _load_spec(args: argparse.Namespace, components):
    """The spec file with the command line's overrides (`--seeds`, `--device`, then `--set`)."""
    from harness.overrides import shorthand
    from harness.specfile import load_spec

    return load_spec(args.spec, components, shorthand(args.seeds, args.device) + list(args.set))


def cmd_validate(args: argparse.Namespace) -> int:
    from harness.preflight import preflight
    from harness.specfile import read_spec_file
    from harness.tracks import is_submission

    components = _components(args.strict)
    if is_submission(read_spec_file(args.spec).data):
        return _validate_submission(args, components)
    loaded = _load_spec(args, components)
    preflight(loaded, components)
    print(f"{args.spec}: valid (spec hash {loaded.hash[:12]})")
    return 0


def _validate_submission(args: argparse.Namespace, components) -> int:
    """A submission: its own fields, then the spec it composes with its track, as the scorer will."""
    from harness.overrides import apply_overrides, shorthand
    from harness.preflight import preflight
    from harness.specfile import resolve_spec
    from harness.tracks import composed_source, read_submission, read_track

    overrides = shorthand(args.seeds, args.device) + list(args.set)
    if overrides:
        from harness.errors import SpecError

        raise SpecError(
            f"{args.spec}: a submission takes everything but its poisons from its track; "
            "--set, --seeds and --device do not apply"
        )
    submission, source = read_submission(Path(args.spec))
    track = read_track(args.tracks, submission.track)
    name = submission.name or Path(args.spec).resolve().parent.name
    loaded = resolve_spec(
        apply_overrides(composed_source(submission, source, track, name), []), components
    )
    preflight(loaded, components)
    print(
        f"{args.spec}: valid submission to track {submission.track} (spec hash {loaded.hash[:12]})"
    )
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.schema import spec_schema

    only = {d.strip() for d in args.only.split(",") if d.strip()} if args.only else None
    print(json.dumps(spec_schema(_components(False), only), indent=2))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    components = _components(args.strict)
    if args.name:
        return _describe_component(components, args.name, args.json)
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


def _describe_component(components, name: str, as_json: bool) -> int:
    from harness.errors import UnknownComponentError
    from harness.explain import describe, parameter_rows
    from harness.registry import did_you_mean

    found = []
    for registry in components.registries.values():
        try:
            found.append(registry.get(name))
        except UnknownComponentError:
            continue
    if not found:
        every = sorted({n for registry in components.registries.values() for n in registry.names()})
        raise UnknownComponentError(f"no component named {name!r}: {did_you_mean(name, every)}")
    if as_json:
        out = [
            {
                "name": r.name,
                "kind": r.kind,
                **r.provenance(),
                "description": r.record.description,
                "paper": getattr(r.record, "paper", None),
                "deviations": list(getattr(r.record, "deviations", ())),
                "derivation": getattr(r.record, "derivation", None),
                "biases": getattr(r.record, "biases", None),
                "params": [
                    dict(zip(("name", "type", "default", "description"), row, strict=True))
                    for row in parameter_rows(r.record.params)
                ],
            }
            for r in found
        ]
        print(json.dumps(out, indent=2))
    else:
        print("\n\n".join(describe(r) for r in found))
    return 0


def _comma_list(text: str) -> list[str]:
    """An option's comma-separated names, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


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
        "save_snapshots": ("--save-snapshots", args.save_snapshots),
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
    from harness.plan import plan_arms
    from harness.progress import make_reporter
    from harness.reuse import ArmSources
    from harness.table import markdown, print_table

    started = time.perf_counter()
    components = _components(args.strict)
    loaded = _load_spec(args, components)
    _apply_execution_options(args, loaded)
    reuse = ArmSources(clean=args.reuse_clean, any=args.reuse_arms)
    if args.dry_run:
        from harness.executors.dryrun import dry_run

        plan = dry_run(
            loaded,
            components,
            output_root=args.output,
            fresh=args.fresh,
            reporter=make_reporter(args.quiet),
            reuse=reuse,
            arms=args.arms,
        )
        print(plan.text())
        return 0
    runner = make_runner(
        loaded,
        components,
        output_root=args.output,
        fresh=args.fresh,
        reporter=make_reporter(args.quiet),
        log_to=[name.strip() for name in args.log_to.split(",") if name.strip()],
        reuse=reuse,
        arms=args.arms,
    )
    runner.prepare()
    entries = runner.run()
    atomic_write_text(runner.folder.results_file, markdown(entries))
    print_table(entries, f"{loaded.spec.name}: {_count(entries)}")
    print(
        f"run folder: {runner.run_dir}  (entries in {runner.run_dir / 'entries'}, "
        f"SAL in {runner.run_dir / 'run.h5'}); {time.perf_counter() - started:.1f}s"
    )
    if args.arms:
        print(
            f"trained only the arms asked (--arms): {len(runner.arms)} of "
            f"{len(plan_arms(loaded.spec))}; the same command without --arms completes the run"
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


def cmd_sal_agreement(args: argparse.Namespace) -> int:
    from harness.agreement_run import parse_estimator, sal_agreement

    asked = [parse_estimator(text) for text in args.estimator]
    stage = (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()] if args.arms else []
    report = sal_agreement(Path(args.run), _components(False), asked, stage, arms)
    print(report.markdown())
    print(f"written: {report.run / 'sal-agreement.md'} and sal-agreement.json")
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


def _execution_args(args: argparse.Namespace) -> list[str]:
    """`harness leaderboard score`'s execution options, as each evaluation's `harness eval` takes them."""
    from harness.errors import SpecError

    if args.address is not None and not args.no_sandbox:
        raise SpecError(
            "--address: submissions run in a sandbox without network, so they cannot reach a Ray "
            "cluster; add --no-sandbox, or leave --address out for a local Ray instance per "
            "evaluation"
        )
    if args.address is not None and args.executor != "ray":
        raise SpecError("--address: a Ray cluster's address is for --executor ray")
    pairs = [
        ("--executor", args.executor),
        ("--address", args.address),
        ("--cpus-per-arm", args.cpus_per_arm),
        ("--gpus-per-arm", args.gpus_per_arm),
    ]
    return [str(part) for option, value in pairs if value is not None for part in (option, value)]


def cmd_leaderboard_score(args: argparse.Namespace) -> int:
    from harness.scoring_queue import Limits, score_submissions

    limits = Limits(seconds=args.timeout, memory_gb=args.memory_gb, sandbox=not args.no_sandbox)
    tracks = args.tracks if args.tracks is not None else args.leaderboard / "tracks"
    statuses = score_submissions(
        args.submissions,
        args.leaderboard,
        tracks,
        limits=limits,
        eval_args=_execution_args(args),
        log=lambda message: print(message, file=sys.stderr),
    )
    for st in statuses:
        print(f"{st.id}: {st.status}" + (f" ({st.reason})" if st.reason else ""))
    print(f"leaderboard: {args.leaderboard / 'leaderboard.md'}, {args.leaderboard / 'index.html'}")
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


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _age(seconds: float) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f} {unit}"
    return f"{seconds:.0f} s"


def cmd_cache_list(args: argparse.Namespace) -> int:
    from harness.poison_cache import PoisonCache

    cache = PoisonCache()
    entries = list(cache.entries())
    print(f"poison cache: {cache.root}")
    now = time.time()
    for e in entries:
        m = e.meta
        label = m.get("label", "")
        method = e.method + (f" ({label})" if label and label != e.method else "")
        if e.partial:
            method += " (unfinished)"
        print(
            f"  {e.key[:12]}  {method:<28} seed {m.get('seed', '?')!s:<5} "
            f"{m.get('dataset', '?')!s:<14} {_size(e.size):>10}  {_age(now - e.modified)} old"
        )
    total = sum(e.size for e in entries)
    unfinished = sum(e.partial for e in entries)
    print(
        f"{len(entries) - unfinished} poison(s)"
        + (f" and {unfinished} unfinished generation(s)" if unfinished else "")
        + f", {_size(total)}"
    )
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from harness.poison_cache import PoisonCache

    cache = PoisonCache()
    older = args.older_than * 86400 if args.older_than is not None else None
    removed = cache.clear(method=args.method, older_than_s=older)
    print(
        f"removed {len(removed)} poison(s), {_size(sum(e.size for e in removed))}, "
        f"from {cache.root}"
    )
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


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default where it has one worth showing (not for flags or unset ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and default not in (None, False, [], argparse.SUPPRESS)
            and not isinstance(action, argparse._StoreConstAction)
            and action.option_strings
        ):
            text += f" (default: {default})"
        return text


def _spec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="the spec file (YAML)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set training.epochs=2 or "
        "--set poisons.0.params.epsilon=0.0314 (VALUE is YAML; repeatable; checked like the file "
        "and part of the spec hash)",
    )
    p.add_argument(
        "--seeds", default=None, metavar="S,S,...", help="shorthand for --set seeds=[S,S,...]"
    )
    p.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="shorthand for --set training.device=DEVICE (auto, cpu, cuda, cuda:N)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail when any installed plugin is broken (by default it is reported and skipped)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harness", description=__doc__)
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "eval",
        help="run a spec: train every arm, stream SAL to HDF5, write entries (resumable)",
        formatter_class=HelpFormatter,
    )
    _spec_options(p)
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for runs (default: the spec's `output`)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over when the run folder holds a different spec (the old run is renamed)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--log-to",
        default="",
        metavar="TRACKERS",
        help="comma-separated experiment trackers to send the run to, beside the spec's `trackers` "
        "(tensorboard, mlflow, or any installed; `harness plugins` lists them)",
    )
    p.add_argument(
        "--reuse-clean",
        type=Path,
        default=None,
        metavar="RUN",
        help="adopt the complete clean arms of another run folder of the same track instead of "
        "training them (the leaderboard's scoring queue does this)",
    )
    p.add_argument(
        "--reuse-arms",
        type=Path,
        default=None,
        metavar="RUN",
        help="adopt every complete arm, clean or poisoned, of another run folder that this spec "
        "would train identically (same track, poison, defence, seed and versions); the others "
        "are trained",
    )
    p.add_argument(
        "--arms",
        type=_comma_list,
        default=(),
        metavar="ARM,...",
        help="train only these arms: arm ids, poison or defence names (e.g. em__jpeg__s0 or "
        "tap,mixup), and each seed's clean reference, which every score needs; the other arms "
        "stay planned, and the same command without --arms completes the run",
    )
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
        "--save-snapshots",
        type=int,
        default=None,
        metavar="K",
        help="keep the model after every K-th epoch in the run folder (snapshots/), for "
        "`harness sal-agreement RUN`",
    )
    x.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="worker processes reading streamed batches (default 2)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "validate",
        help="check a spec without running it: every check eval makes before training",
        formatter_class=HelpFormatter,
    )
    _spec_options(p)
    p.add_argument(
        "--tracks",
        type=Path,
        default=Path("leaderboard/tracks"),
        help="where the official tracks are, for a submission file (one with `track:`)",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "schema",
        help="print the JSON schema of spec files, with every installed component and its parameters "
        "(for editors: `harness schema > spec.schema.json`, then the spec's first line "
        "`# yaml-language-server: $schema=spec.schema.json`)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="DISTRIBUTIONS",
        help="comma-separated distributions whose components the schema lists (default: all installed)",
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "plugins",
        help="list every component by kind, and broken plugins; with NAME, one component's kind, "
        "origin, paper, deviations and parameters",
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        help="a component name (e.g. em, small-cnn, timm:resnet18) to describe in full",
    )
    p.add_argument("--strict", action="store_true", help="exit 2 if any installed plugin is broken")
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
        "sal-agreement",
        help="each SAL estimator against the reference on a run's model snapshots "
        "(run with `harness eval SPEC --save-snapshots K` first)",
    )
    p.add_argument("run", help="run folder (holding run.h5 and snapshots/)")
    p.add_argument(
        "--estimator",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="an estimator to compare (repeatable), e.g. normalized-steps:steps=2; default: every "
        "registered estimator with its default params",
    )
    p.add_argument(
        "--arms",
        default=None,
        metavar="ARM,...",
        help="arm ids, poison or defence names to measure (e.g. em,ops,tap); the clean arms are "
        "always measured; default: every arm with snapshots",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_sal_agreement)

    p = sub.add_parser(
        "leaderboard",
        help="leaderboard pages (build) and the scoring queue for submitted specs (score)",
    )
    board = p.add_subparsers(dest="leaderboard_command", required=True)
    p = board.add_parser(
        "build",
        help="gather entries into leaderboard.md and a static index.html "
        "(`harness leaderboard SOURCES --out DIR` is short for it)",
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

    p = board.add_parser(
        "score",
        help="score every submission not yet scored on its official track: compose the spec, install "
        "its package in an environment of its own, run it confined, file the entries, record a status",
    )
    p.add_argument(
        "submissions", type=Path, help="folder of submissions, one folder each (submission.yaml)"
    )
    p.add_argument("--leaderboard", type=Path, required=True, help="the leaderboard folder")
    p.add_argument(
        "--tracks",
        type=Path,
        default=None,
        help="the official tracks (default: LEADERBOARD/tracks)",
    )
    p.add_argument("--timeout", type=int, default=3600, help="seconds one submission may run")
    p.add_argument(
        "--memory-gb", type=float, default=16.0, help="address space one submission may use"
    )
    p.add_argument(
        "--no-sandbox",
        action="store_true",
        help="run without bubblewrap's read-only file system and no network (limits still apply)",
    )
    x = p.add_argument_group(
        "execution", "where each evaluation's arms run (passed to its `harness eval`)"
    )
    x.add_argument("--executor", choices=["local", "ray"], default=None, help="default: local")
    x.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster (needs --no-sandbox: the sandbox has no network); default: "
        "a local Ray instance per evaluation",
    )
    x.add_argument("--cpus-per-arm", type=float, default=None, help="CPUs per arm (Ray)")
    x.add_argument("--gpus-per-arm", type=float, default=None, help="GPUs per arm (Ray)")
    p.set_defaults(func=cmd_leaderboard_score)

    p = sub.add_parser(
        "submit", help="check a finished run and file its entries into a leaderboard folder"
    )
    p.add_argument("run", help="run folder (holding run.h5)")
    p.add_argument("--leaderboard", type=Path, required=True, help="the leaderboard folder")
    p.add_argument(
        "--replace", action="store_true", help="overwrite a different entry of the same name"
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser(
        "cache", help="the poison cache ($HARNESS_CACHE/poisons): list or clear generated poisons"
    )
    cache_sub = p.add_subparsers(dest="cache_command", required=True)
    p = cache_sub.add_parser("list", help="every cached poison: method, seed, data set, size, age")
    p.set_defaults(func=cmd_cache_list)
    p = cache_sub.add_parser("clear", help="delete cached poisons (all, or those selected)")
    p.add_argument("--method", default=None, help="only this poison method (e.g. em)")
    p.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="only those older than this"
    )
    p.set_defaults(func=cmd_cache_clear)

    p = sub.add_parser("data", help="data-set utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "extract", help="unpack a data-set archive into the cache (~/.cache/harness/data)"
    )
    p.add_argument(
        "archive",
        type=Path,
        help="a .tar, .tar.gz or .tar.xz archive, e.g. ../shared/data/cifar10-jpg.tar.xz",
    )
    p.add_argument("--dest", type=Path, default=None, help="target folder (default: the cache)")
    p.set_defaults(func=cmd_data_extract)
    for command in (*sub.choices.values(), *data_sub.choices.values(), *board.choices.values()):
        command.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends in one `error:` line and an exit status, never a
    traceback (`--debug` shows it): 2 bad input, 1 run failure, 130 interrupted (Ctrl-C), 143
    terminated (SIGTERM; stopped the same way, `harness.termination`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if (
        argv[:1] == ["leaderboard"]
        and argv[1:2]
        and argv[1] not in ("build", "score", "-h", "--help")
    ):
        argv.insert(1, "build")  # `harness leaderboard SOURCES --out DIR`, the original form
    args = build_parser().parse_args(argv)
    with termination.stop_on_signals():
        try:
            return args.func(args)
        except HarnessError as exc:
            if args.debug:
                raise
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt as exc:
            if args.debug:
                raise
            # Ray turns an exception raised by a handler inside its waits into a KeyboardInterrupt
            terminated = isinstance(exc, Terminated) or termination.requested()
            print(
                f"{'terminated' if terminated else 'interrupted'}; rerun the same command to resume "
                "from the last complete epoch",
                file=sys.stderr,
            )
            return 143 if terminated else 130
        except SystemExit as exc:  # nothing in the harness exits inside a command: a plugin did
            if args.debug:
                raise
            print(
                f"error: sys.exit({exc.code!r}) was called in {_culprit(exc.__traceback__)}; the "
                "command stopped there (a plugin must raise an exception, never exit)",
                file=sys.stderr,
            )
            return 1
        except Exception as exc:  # a bug, here or in a plugin: say where, without the traceback
            if args.debug:
                raise
            print(
                f"error: {type(exc).__name__}: {_first_line(exc)} (raised in "
                f"{_culprit(exc.__traceback__)}; `harness --debug ...` shows the traceback)",
                file=sys.stderr,
            )
            return 1


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def _culprit(tb) -> str:
    """Where an exception came from: the innermost frame outside the harness core.

    A plugin's module is named with the distribution that installed it, so the message says
    whom to ask; when every frame is the harness's own, the innermost one is named.
    """
    import importlib.metadata as md
    import traceback

    frames = [
        (f.f_globals.get("__name__", "?"), f.f_code.co_filename, line)
        for f, line in traceback.walk_tb(tb)
    ]
    if not frames:
        return "the harness"
    outside = [fr for fr in frames if fr[0].split(".")[0] != "harness"]
    module, filename, line = (outside or frames)[-1]
    top = module.split(".")[0]
    dists: list[str] = []
    if top != "harness":
        try:
            dists = list(md.packages_distributions().get(top, []))
            dists += [
                ep.dist.name
                for ep in md.entry_points(group="harness")
                if ep.dist is not None and ep.module.split(".")[0] == top
            ]
        except Exception:  # some installed package's metadata is unreadable: the module will do
            pass
    where = f"module {module} ({Path(filename).name}:{line})"
    return f"{where}, distribution {', '.join(sorted(set(dists)))}" if dists else where


if __name__ == "__main__":
    sys.exit(main())
