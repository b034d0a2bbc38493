"""docs/results.md: the paper's Tables 1-3 beside ours at CPU scale, from the run folders.

    python benchmarks/paper_results.py --runs ~/paper-runs/runs [--out docs/results.md]
        [--filed leaderboard/entries] [--kept docs/paper-arms]

Reads the entries of the run folders of `specs/paper-table1-cpu.yaml` (with the extra seeds of
`specs/paper-table1-seeds-cpu.yaml`), `specs/paper-table2-cpu.yaml` and the
`specs/paper-table3-*-cpu.yaml` specs, and writes, per table, our test accuracy, #LP and UD
(mean ± sd over seeds where there are several) beside the paper's CIFAR-10 numbers, then the
paper's qualitative claims with whether ours agree. Arms not run yet are listed as such:
nothing is filled in by hand. The paper's numbers are those printed in its tables
(../shared/docs/paper.md; Table 2's are read from a noisy scan, Table 3's ViT EM cell is
illegible there).

A run whose folder is not under RUNS (the campaign ran on another machine, or its folders were
lost) is read from the entries `harness submit` filed for it in the leaderboard folder, which
record the run.h5 they were computed from by its SHA-256; an arm of a run that no session has
finished yet is read from the entry benchmarks/paper_arms.py kept for it in docs/paper-arms
(the campaign spans sessions whose machines need not persist). The analyses that need Table 1's SAL
arrays (seed noise, layer breakdown, spot check, figures) go to a second file,
`results-table1.md` beside the first, written only when Table 1's run folders are here: without
them it is left as it was last generated.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.entries import Entry, read_entries
from harness.results import ArmResults
from harness.sysinfo import hardware_differs

#: Table 1, CIFAR-10 column: test accuracy (%), #LP, UD (the clean row has no UD)
PAPER_T1 = {
    "clean": (94.11, 3.32, None),
    "em": (26.52, 0.62, 0.187),
    "rem": (30.26, 1.54, 0.464),
    "dc": (18.51, 1.00, 0.301),
    "tap": (29.85, 5.44, 1.639),
    "lsp": (10.23, 1.14, 0.343),
    "ops": (11.98, 0.52, 0.157),
}
#: Table 2: (#LP, UD) per defence and data
PAPER_T2 = {
    "jpeg": {
        "clean": (2.48, 0.747),
        "em": (1.24, 0.373),
        "tap": (1.66, 0.500),
        "ops": (2.16, 0.651),
    },
    "adv-training": {
        "clean": (7.14, 2.151),
        "em": (0.40, 0.120),
        "tap": (2.92, 0.880),
        "ops": (0.56, 0.169),
    },
    "ueraser-max": {
        "clean": (4.32, 1.301),
        "em": (0.42, 0.127),
        "tap": (0.81, 0.243),
        "ops": (1.18, 0.355),
    },
    "mixup": {
        "clean": (3.64, 1.097),
        "em": (1.28, 0.386),
        "tap": (1.92, 0.579),
        "ops": (1.60, 0.482),
    },
    "cutout": {
        "clean": (3.72, 1.120),
        "em": (1.56, 0.470),
        "tap": (2.01, 0.605),
        "ops": (1.54, 0.464),
    },
}
#: Table 3: UD per architecture (ResNet-18 from Table 1; ViT's EM cell is illegible)
PAPER_T3 = {
    "resnet18": {"em": 0.187, "tap": 1.639, "ops": 0.157},
    "resnet50": {"em": 0.364, "tap": 1.256, "ops": 0.340},
    "senet18": {"em": 0.302, "tap": 1.614, "ops": 0.248},
    "vit": {"em": None, "tap": 0.584, "ops": 0.818},
}
T1_ROWS = ["clean", "em", "rem", "dc", "tap", "lsp", "ops", "ar", "hypo", "cuda", "noise-class"]
#: the rows of Table 1 run with three seeds (specs/paper-table1-seeds-cpu.yaml adds seeds 1 and 2)
SEEDED = ["clean", "em", "ops", "tap"]
T2_DEFENCES = ["jpeg", "adv-training", "ueraser-max", "mixup", "cutout"]
#: the unlearnable examples of Table 2's rows, beside the clean data
T2_POISONS = ("em", "tap", "ops")
#: the specs of the runs, read for the arms each plans
SPECS = Path(__file__).resolve().parents[1] / "specs"
T3_BACKBONES = {
    "resnet18": "paper-table1-cpu",
    "resnet50": "paper-table3-resnet50-cpu",
    "senet18": "paper-table3-senet18-cpu",
    "vit": "paper-table3-vit-cpu",
}


@dataclass
class Cell:
    """One (poison, defence) over seeds: test accuracy (%), #LP and UD."""

    acc: list[float]
    lp: list[float]
    ud: list[float]

    @staticmethod
    def fmt(values: list[float], digits: int) -> str:
        if not values:
            return "not run yet"
        if len(values) == 1:
            return f"{values[0]:.{digits}f}"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    @property
    def ud_mean(self) -> float | None:
        return statistics.mean(self.ud) if self.ud else None


@dataclass(frozen=True)
class Elsewhere:
    """Where the entries of arms no run folder under RUNS holds are read: those `harness submit`
    filed in the leaderboard (complete runs), then those benchmarks/paper_arms.py kept from
    earlier sessions (arm by arm, each scored against its own session's clean arm, which keeping
    checked equal to the first one kept)."""

    filed: Path | None = None
    kept: Path | None = None

    def filed_entries(self, name: str) -> list[Entry]:
        """The entries `harness submit` filed for run `name`."""
        return [] if self.filed is None else [e for e in _all_filed(self.filed) if e.run == name]

    def kept_entries(self, name: str, *, replicas: bool = False) -> list[Entry]:
        """The arms of run `name` kept from earlier sessions (docs/paper-arms/NAME/); with
        `replicas`, instead, the clean arms other machines trained otherwise (ARM~2.json...)."""
        folder = None if self.kept is None else self.kept / name
        if folder is None or not folder.is_dir():
            return []
        paths = [p for p in sorted(folder.glob("*.json")) if ("~" in p.stem) == replicas]
        return [Entry.model_validate_json(p.read_text()) for p in paths]

    def entries(self, name: str) -> dict[str, Entry]:
        """By entry id: the filed entry of an arm where there is one, else the kept one."""
        found = {e.entry_id: e for e in self.kept_entries(name)}
        return found | {e.entry_id: e for e in self.filed_entries(name)}


@functools.cache
def _all_filed(filed: Path) -> tuple[Entry, ...]:
    """Every entry in the folder, read once per generation (each table and the status ask)."""
    if not filed.is_dir():
        return ()
    return tuple(Entry.model_validate_json(p.read_text()) for p in sorted(filed.glob("*.json")))


def load(runs: Path, *names: str, elsewhere: Elsewhere = Elsewhere()) -> list[Entry]:
    """The entries of each run: from its folder, and for the arms the folder lacks (or all,
    without one) those filed or kept for it elsewhere."""
    entries: list[Entry] = []
    for name in names:
        folder = runs / name
        here = read_entries(folder) if (folder / "entries").is_dir() else []
        done = {e.entry_id for e in here}
        entries += here + [e for i, e in elsewhere.entries(name).items() if i not in done]
    return entries


def cells(entries: list[Entry]) -> dict[tuple[str, str], Cell]:
    by: dict[tuple[str, str], Cell] = defaultdict(lambda: Cell([], [], []))
    for e in entries:
        poison = "clean" if e.poison is None else (e.poison.label or e.poison.name)
        defence = e.defence.label or e.defence.name
        cell = by[(poison, defence)]
        cell.acc.append(100 * e.results.test_metric.final)
        cell.lp.append(e.results.lp)
        if e.results.ud is not None:
            cell.ud.append(e.results.ud)
    return dict(by)


def empty() -> Cell:
    return Cell([], [], [])


def paper(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool | None) -> str:
    return "not run yet" if ok is None else ("agrees" if ok else "does not agree")


#: CIFAR-10's chance accuracy (%), and how close to it a final test accuracy counts as chance
CHANCE, CHANCE_MARGIN = 10.0, 2.0


def at_chance(cells: dict[tuple[str, str], Cell]) -> list[str]:
    """A note naming the arms whose final test accuracy is at chance, if any.

    Such a network learned nothing; when no layer's SAL rises above β its UD is 0, which says
    the training failed rather than that the data is unlearnable in the paper's sense. The
    tables keep the number; this note says how to read it.
    """
    flat = [
        f"{data}/{defence} ({', '.join(f'{a:.1f}%' for a in c.acc)})"
        for (data, defence), c in cells.items()
        if c.acc and any(a <= CHANCE + CHANCE_MARGIN for a in c.acc)
    ]
    if not flat:
        return []
    return [
        "",
        f"At chance (test accuracy within {CHANCE_MARGIN:g} points of {CHANCE:g}%): "
        + "; ".join(sorted(flat))
        + ". Those networks learned nothing; where their #LP is 0 (no layer's SAL above β), "
        "UD 0 says that training failed, not that the data is unlearnable.",
    ]


def table1(
    runs: Path, elsewhere: Elsewhere = Elsewhere()
) -> tuple[list[str], dict[tuple[str, str], Cell]]:
    got = cells(load(runs, "paper-table1-cpu", "paper-table1-seeds-cpu", elsewhere=elsewhere))
    lines = [
        "## Table 1: UD of ResNet-18 trained on each method's unlearnable examples (CIFAR-10)",
        "",
        "| method | test acc. (%) ours | paper | #LP ours | paper | UD ours | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in T1_ROWS:
        c = got.get((row, "none"), empty())
        p = PAPER_T1.get(row, (None, None, None))
        lines.append(
            f"| {row} | {Cell.fmt(c.acc, 1)} | {paper(p[0], 2)} | {Cell.fmt(c.lp, 2)} | "
            f"{paper(p[1], 2)} | {Cell.fmt(c.ud, 3) if row != 'clean' else '1 (by definition)'} | "
            f"{paper(p[2], 3)} |"
        )
    return lines + at_chance(got), got


def table2_entries(runs: Path, elsewhere: Elsewhere = Elsewhere()) -> list[Entry]:
    """The Table 2 run's arms, and Table 1's undefended poisoned arms of seed 0 where Table 2 has
    none of its own (its spec adopts them with `--reuse-arms` when Table 1's run folder is here;
    benchmarks/paper_runs.sh trains them otherwise, but an older Table 2 run may lack them). A
    borrowed arm is scored against Table 1's clean arm, which equals Table 2's only where the
    same machine trained both ("Trained twice"); `table2` says which arms were borrowed."""
    own = load(runs, "paper-table2-cpu", elsewhere=elsewhere)
    have = {e.arm_id for e in own}
    first = load(runs, "paper-table1-cpu", elsewhere=elsewhere)
    return own + [
        e
        for e in first
        if e.seed == 0
        and e.poison is not None
        and e.defence.name == "none"
        and e.arm_id not in have
    ]


def borrowed_arms(entries: list[Entry]) -> list[str]:
    """The undefended arms of Table 2's rows that `table2_entries` took from Table 1's run."""
    return sorted(
        e.arm_id
        for e in entries
        if e.run == "paper-table1-cpu" and e.poison is not None and e.poison.name in T2_POISONS
    )


def table2(got: dict[tuple[str, str], Cell], borrowed: Sequence[str] = ()) -> list[str]:
    """Table 2 from the cells of the Table 2 run and the undefended arms it borrowed.

    The paper prints each poison's change of UD against its undefended UD (Table 1); its
    change for the clean data is read here against 1, the clean arm's UD by definition. UD is
    a ratio to a clean arm (its β and #LP), so a change is read within one clean reference
    only where the undefended arm is the Table 2 run's own: the text names any borrowed one.
    """
    if borrowed:
        source = (
            f"Table 1's arms {', '.join(borrowed)} (the Table 2 run did not train them), "
            "scored against Table 1's clean arm: where another machine trained it (\"Trained "
            "twice\"), its β and #LP differ from those of Table 2's clean arm, so those changes "
            "mix two clean references"
        )
    else:
        source = (
            "the Table 2 run's own undefended arms, so every UD and change of this table is "
            "read against one clean arm (its β and #LP)"
        )
    lines = [
        "## Table 2: UD of ResNet-18 trained on defended unlearnable examples",
        "",
        "UD change: against the same data undefended (UD 1 for the clean data), ours from "
        f"{source}; the paper's from its Table 1 (the rows `none`, where the paper's numbers "
        "are its Table 1's).",
        "",
        "| data | defence | test acc. (%) ours | #LP ours | paper | UD ours | paper | "
        "UD change ours | paper |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for data in ("clean", *T2_POISONS):
        # the undefended row first: the reference every change of the data is read against
        c = got.get((data, "none"), empty())
        if data == "clean":
            undefended, paper_undefended = 1.0, 1.0
            ud, paper_ud = "1 (by definition)", "1 (by definition)"
        else:
            undefended, paper_undefended = c.ud_mean, PAPER_T1[data][2]
            ud, paper_ud = Cell.fmt(c.ud, 3), f"{paper_undefended:.3f}"
        lines.append(
            f"| {data} | none | {Cell.fmt(c.acc, 1)} | {Cell.fmt(c.lp, 2)} | "
            f"{PAPER_T1[data][1]:.2f} | {ud} | {paper_ud} |  |  |"
        )
        for defence in T2_DEFENCES:
            c = got.get((data, defence), empty())
            p = PAPER_T2[defence][data]
            change = (
                f"{c.ud_mean - undefended:+.3f}"
                if c.ud_mean is not None and undefended is not None
                else ""
            )
            lines.append(
                f"| {data} | {defence} | {Cell.fmt(c.acc, 1)} | {Cell.fmt(c.lp, 2)} | "
                f"{p[0]:.2f} | {Cell.fmt(c.ud, 3)} | {p[1]:.3f} | {change} | "
                f"{p[1] - paper_undefended:+.3f} |"
            )
    return lines + at_chance(got)


def table3(got: dict[str, dict[tuple[str, str], Cell]]) -> list[str]:
    """Table 3 from the cells of each backbone's run (ResNet-18's: Table 1's, seed 0)."""
    lines = [
        "## Table 3: UD of other architectures (CIFAR-10)",
        "",
        "ResNet-18's rows are Table 1's arms of seed 0. Only the paper's UD is compared: its "
        "Table 3 #LP cells are garbled in the scan (ResNet-50's TAP #LP 4.17 against its clean "
        "#LP 0.69 would make UD 6.0, not the printed 1.256), and its ViT EM UD is illegible.",
        "",
        "| model | data | test acc. (%) ours | #LP ours | UD ours | paper |",
        "|---|---|---|---|---|---|",
    ]
    for bb in T3_BACKBONES:
        for data in ("clean", "em", "tap", "ops"):
            c = got[bb].get((data, "none"), empty())
            ud = "1 (by definition)" if data == "clean" else Cell.fmt(c.ud, 3)
            ud_paper = "" if data == "clean" else paper(PAPER_T3[bb][data], 3)
            lines.append(
                f"| {bb} | {data} | {Cell.fmt(c.acc, 1)} | {Cell.fmt(c.lp, 2)} | {ud} | "
                f"{ud_paper} |"
            )
    undefended = {
        (f"{bb} {data}", defence): c
        for bb in T3_BACKBONES
        for (data, defence), c in got[bb].items()
        if defence == "none"
    }
    return lines + at_chance(undefended)


def claims(t1, t2, t3) -> list[str]:
    """The paper's qualitative claims (Sections 4.2-4.4), each with whether ours agree.

    Fixed before any UD of Table 2 or 3 was seen. Besides the claims issue 12 names, the two
    its text makes of TAP (defences lower its UD; ViT's is lower than ResNet-18's) and that
    most defences raise the UD of real UEs (8 of its 10 EM and OPS cells)."""

    def ud(table, poison, defence="none"):
        return table.get((poison, defence), empty()).ud_mean

    def basis(method: str) -> str:
        """The UD a Table 1 verdict rests on, and on how many of the planned seeds."""
        values = t1.get((method, "none"), empty()).ud
        planned = 3 if method in SEEDED else 1
        if not values:
            return ""
        return f"UD {Cell.fmt(values, 3)} ({len(values)} of {planned} seed(s))"

    def changes(poisons: tuple[str, ...]) -> dict[tuple[str, str], float | None]:
        """Table 2's change of UD per (poison, defence) against the undefended arm."""
        return {
            (p, d): None if ud(t2, p, d) is None or ud(t2, p) is None else ud(t2, p, d) - ud(t2, p)
            for p in poisons
            for d in T2_DEFENCES
        }

    def counted(values: dict, test) -> tuple[int | None, str]:
        if any(v is None for v in values.values()):
            return None, ""
        hits = sum(test(v) for v in values.values())
        return hits, f"{hits} of {len(values)} (defence, data) pairs"

    rows = []
    below = {m: ud(t1, m) for m in ("em", "ops", "lsp", "dc", "rem")}
    for method, value in below.items():
        ok = None if value is None else value < 1
        rows.append((f"UD < 1 for {method.upper()}", verdict(ok), basis(method)))
    tap = ud(t1, "tap")
    rows.append(("UD > 1 for TAP", verdict(None if tap is None else tap > 1), basis("tap")))
    others = [ud(t1, m) for m in T1_ROWS if m not in ("clean", "tap")]
    known = [v for v in others if v is not None]
    rows.append(
        (
            "TAP has the largest UD of Table 1",
            verdict(None if tap is None or len(known) < len(others) else tap > max(known)),
            "",
        )
    )
    real = changes(("em", "ops"))
    hits, on = counted(real, lambda change: change > 0)
    rows.append(
        (
            "Most defences raise the UD of EM and OPS (the paper: 8 of 10)",
            verdict(None if hits is None else hits > len(real) / 2),
            on,
        )
    )
    gains = {
        d: None
        if real[("em", d)] is None or real[("ops", d)] is None
        else statistics.mean([real[("em", d)], real[("ops", d)]])
        for d in T2_DEFENCES
    }
    complete = all(v is not None for v in gains.values())
    best = max(gains, key=lambda d: gains[d]) if complete else None
    rows.append(
        (
            "JPEG raises UD the most among the defences (mean over EM and OPS)",
            verdict(None if not complete else best == "jpeg"),
            f"largest: {best} ({gains[best]:+.3f})" if complete else "",
        )
    )
    lowered = changes(("tap",))
    hits, on = counted(lowered, lambda change: change < 0)
    rows.append(
        (
            "Every defence lowers TAP's UD",
            verdict(None if hits is None else hits == len(lowered)),
            on,
        )
    )
    vit, r18 = t3["vit"], t3["resnet18"]
    pairs = {p: (ud(vit, p), ud(r18, p)) for p in ("em", "ops", "tap")}

    def versus(poisons: tuple[str, ...]) -> str:
        return ", ".join(
            f"{p.upper()} {a:.3f} vs {b:.3f}"
            for p, (a, b) in pairs.items()
            if p in poisons and a is not None and b is not None
        )

    missing = {p for p, (a, b) in pairs.items() if a is None or b is None}
    rows.append(
        (
            "ViT's UD is higher than ResNet-18's (EM and OPS)",
            verdict(
                None
                if missing & {"em", "ops"}
                else all(pairs[p][0] > pairs[p][1] for p in ("em", "ops"))
            ),
            versus(("em", "ops")),
        )
    )
    rows.append(
        (
            "TAP's UD is lower on ViT than on ResNet-18",
            verdict(None if "tap" in missing else pairs["tap"][0] < pairs["tap"][1]),
            versus(("tap",)),
        )
    )
    return [
        "## The paper's claims",
        "",
        "A verdict on fewer seeds than planned is provisional: see the seed-to-seed noise in "
        "[results-table1.md](results-table1.md).",
        "",
        "| claim | ours | on |",
        "|---|---|---|",
        *[f"| {claim} | {result} | {on} |" for claim, result, on in rows],
        *second_reading(t2),
    ]


def second_reading(t2: dict[tuple[str, str], Cell]) -> list[str]:
    """Table 1's claims on EM, OPS and TAP read again on the Table 2 run's undefended arms.

    The verdicts above rest on Table 1's runs, as planned; where the Table 2 run trained its own
    undefended arms (the same seed, scored against its own clean arm) they are a second
    measurement of the same UDs, and this says whether it reaches the same verdicts."""
    below_one = {"em": True, "ops": True, "tap": False}  # the paper: UD < 1, else UD > 1
    values = {p: t2.get((p, "none"), empty()).ud_mean for p in below_one}
    if any(v is None for v in values.values()):
        return []
    readings = [
        f"{p.upper()} {values[p]:.3f} (UD {'<' if below else '>'} 1: "
        f"{verdict(values[p] < 1 if below else values[p] > 1)})"
        for p, below in below_one.items()
    ]
    return [
        "",
        "Read again on the Table 2 run's own undefended arms (seed 0 as well, scored against "
        'that run\'s clean arm; see "Trained twice" for how far the two runs drift apart): '
        + "; ".join(readings)
        + ".",
    ]


RUNS = [
    "paper-table1-cpu",
    "paper-table1-seeds-cpu",
    "paper-table2-cpu",
    *[name for name in T3_BACKBONES.values() if name != "paper-table1-cpu"],
]


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def retrained(runs: Path, elsewhere: Elsewhere = Elsewhere()) -> list[str]:
    """Table 2's undefended arms, when it trained them itself, against Table 1's of seed 0.

    They are the same computation (same spec settings, seed, code, one torch thread), so they
    must agree to the bit; on another machine the CPU's kernels may round differently. Where the
    Table 2 run adopted Table 1's arms (`--reuse-arms`) there is nothing to compare.
    """
    folder = runs / "paper-table2-cpu"
    if any((folder / f).exists() for f in ("clean_reference.json", "reused_arms.json")):
        return []
    table2 = load(runs, "paper-table2-cpu", elsewhere=Elsewhere(kept=elsewhere.kept))
    ours = {e.arm_id: e for e in table2 if e.defence.name == "none"}
    first = {e.arm_id: e for e in load(runs, "paper-table1-cpu", elsewhere=elsewhere)}
    rows = []
    for arm_id in ("clean__none__s0", "em__none__s0", "tap__none__s0", "ops__none__s0"):
        a, b = first.get(arm_id), ours.get(arm_id)
        if a is None or b is None:
            continue
        ra, rb = a.results, b.results
        same_machine = not hardware_differs(a.hardware, b.hardware)
        accuracy_equal = ra.test_metric.per_epoch == rb.test_metric.per_epoch
        learnable_equal = ra.learnable_per_epoch == rb.learnable_per_epoch
        rows.append(
            f"| {arm_id} | {yes_no(same_machine)} | {yes_no(accuracy_equal)} | "
            f"{yes_no(learnable_equal)} | {ra.final_train_loss!r} | "
            f"{rb.final_train_loss!r} | {ra.ud if ra.ud is None else f'{ra.ud:.3f}'} | "
            f"{rb.ud if rb.ud is None else f'{rb.ud:.3f}'} |"
        )
    if not rows:
        return []
    return [
        "## Trained twice: Table 2's undefended arms against Table 1's",
        "",
        "The Table 2 run trained its undefended arms itself (Table 1's run folders were not "
        "there to adopt them from): the same computation as Table 1's arms of seed 0, so equal "
        "on the same machine (the entries' `hardware` records). On another machine the CPU's "
        "kernels round differently: `benchmarks/kernel_dispatch.py` traces the drift between "
        "this project's machines to MKL's kernel path, and 20 epochs of SGD carry it into "
        "every number below.",
        "",
        "| arm | same machine | test acc. per epoch equal | learnable layers per epoch equal | "
        "final train loss, Table 1 | Table 2 | UD, Table 1 | Table 2 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def machines(elsewhere: Elsewhere) -> list[str]:
    """The clean arms sessions on other machines trained otherwise than the first one kept.

    Every kept arm is scored against its own session's clean arm (its entry holds that β and
    #LP), so a machine that rounds otherwise changes no arm's UD arithmetic; this says how far
    two machines' runs of the same computation drift apart.
    """
    rows = []
    for name in RUNS:
        first = {e.arm_id: e for e in elsewhere.kept_entries(name)}
        for replica in elsewhere.kept_entries(name, replicas=True):
            a, b = first[replica.arm_id].results, replica.results
            rows.append(
                f"| {name} | {replica.arm_id} | {100 * a.test_metric.final:.1f} / "
                f"{100 * b.test_metric.final:.1f} | {a.lp:.2f} / {b.lp:.2f} | "
                f"{a.beta:.4g} / {b.beta:.4g} | {a.final_train_loss!r} / "
                f"{b.final_train_loss!r} |"
            )
    if not rows:
        return []
    return [
        "## Clean arms trained again on other machines",
        "",
        "Each session trains its runs' clean arms again (β needs them). Where a session's machine "
        "rounded otherwise than the first machine's, its clean arm is kept beside the first, and "
        "that session's arms are scored against their own clean arm. First machine / other:",
        "",
        "| run | arm | test acc. (%) | #LP | β | final train loss |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def status(runs: Path, elsewhere: Elsewhere = Elsewhere(), specs: Path = SPECS) -> list[str]:
    """Which run folders exist, how many of their arms are complete (in run.h5) and how many of
    those have entries (scored: `harness eval` writes them at the end, `harness score` any time
    the run is stopped); the tables above read the entries, and for the arms no folder here
    holds, those filed for the run in the leaderboard or kept from earlier sessions, with the
    arms of its spec (under `specs`) that none of those holds."""
    from harness.results import open_run

    lines = ["## Status of the runs", "", "| run | state |", "|---|---|"]
    for name in RUNS:
        folder = runs / name
        filed = len(elsewhere.filed_entries(name))
        kept = {e.entry_id for e in elsewhere.kept_entries(name)}
        if (folder / "run.h5").exists():
            run = open_run(folder)
            complete = sum(run[a].complete for a in run.arms)
            entries = folder / "entries"
            scored = {p.stem for p in entries.glob("*.json")} if entries.is_dir() else set()
            state = (
                f"started; {complete} arm(s) complete, {len(scored)} scored"
                if complete
                else "started; no arm complete yet"
            )
            if kept - scored:
                state += f"; {len(kept - scored)} more arm(s) kept from earlier sessions"
        elif filed:
            state = f"run folder not here; {filed} arm(s) read from the entries filed"
        elif kept:
            state = f"run folder not here; {len(kept)} arm(s) kept from earlier sessions"
        else:
            state = "not started"
        if not (folder / "run.h5").exists() and (filed or kept):
            missing = unheld_arms(specs / f"{name}.yaml", elsewhere.entries(name).values())
            state += f"; not run: {', '.join(missing)}" if missing else ""
        lines.append(f"| {name} | {state} |")
    return lines


def unheld_arms(spec_file: Path, held: Iterable[Entry]) -> list[str]:
    """The arms the spec plans that no entry filed or kept holds: a campaign that ran arm by arm
    on machines that did not last (docs/paper-arms) says which of its arms never finished."""
    from ruamel.yaml import YAML

    from harness.plan import plan_arms
    from harness.spec import Spec

    if not spec_file.exists():
        return []
    spec = Spec.model_validate(YAML(typ="safe", pure=True).load(spec_file.read_text()))
    have = {e.arm_id for e in held}
    return [a.id for a in plan_arms(spec) if a.id not in have]


def figures(runs: Path, out_dir: Path) -> list[str]:
    """SAL heat maps (log scale) and learnable proportions of clean, EM, OPS and TAP (Table 1)."""
    import matplotlib

    matplotlib.use("Agg")
    from harness import figures as draw
    from harness.results import open_run
    from harness.scoring import learnable_counts, learnable_threshold

    folder = runs / "paper-table1-cpu"
    if not (folder / "run.h5").exists():
        return ["(figures: the Table 1 run has not started)"]
    run = open_run(folder)
    wanted = [a for a in ("clean__none__s0", "em__none__s0", "ops__none__s0", "tap__none__s0")]
    arms = [run[a] for a in wanted if a in run.arms and run[a].complete]
    clean = next((a for a in arms if a.id == "clean__none__s0"), None)
    if clean is None or len(arms) < 2:
        return ["(figures: drawn once the clean arm and a poisoned one of Table 1 are complete)"]
    out_dir.mkdir(parents=True, exist_ok=True)
    beta, _ = learnable_threshold(clean.sal)
    label = {a.id: a.id.split("__")[0] for a in arms}
    heat = draw.sal_heatmap([(label[a.id], a.sal) for a in arms], clean.layers, log=True)
    heat.savefig(out_dir / "table1-sal-heatmap.png", dpi=110, bbox_inches="tight")
    lam = draw.learnable_proportion(  # takes λ(t), the counts, and divides by the layers itself
        [(label[a.id], learnable_counts(a.sal, beta)) for a in arms], len(clean.layers)
    )
    lam.savefig(out_dir / "table1-learnable-proportion.png", dpi=110, bbox_inches="tight")
    return [
        "## Figures (Table 1 run, seed 0)",
        "",
        "SAL per layer and epoch (log colour scale; layers down, epochs across):",
        "",
        "![SAL heat maps](figures/table1-sal-heatmap.png)",
        "",
        f"Proportion of learnable layers per epoch (β = {beta:.3g} from the clean arm):",
        "",
        "![learnable proportion](figures/table1-learnable-proportion.png)",
    ]


def table1_arms(runs: Path) -> dict[tuple[str, int], ArmResults]:
    """Every complete undefended arm of Table 1's two runs, by (poison, seed)."""
    from harness.results import open_run

    arms = {}
    for name in ("paper-table1-cpu", "paper-table1-seeds-cpu"):
        if (runs / name / "run.h5").exists():
            run = open_run(runs / name)
            for arm_id in run.arms:
                poison, defence, seed = arm_id.split("__")
                if defence == "none" and run[arm_id].complete:
                    arms[(poison, int(seed[1:]))] = run[arm_id]
    return arms


def seed_noise(runs: Path) -> list[str]:
    """UD of every complete Table 1 arm scored against each seed's clean arm.

    A clean arm scored against another seed's clean arm is what UD says when nothing is
    poisoned: its spread is the noise floor a poisoned arm's UD must clear. The arms run on one
    seed only are read against every clean seed too, so that how much their verdicts owe to the
    one clean arm they are scored against shows. Computed from the recorded SAL of complete arms
    (`harness.scoring.score`, the scorer the entries use).
    """
    from harness.scoring import learnable_threshold, score

    arms = {key: arm.sal for key, arm in table1_arms(runs).items()}
    cleans = sorted(seed for poison, seed in arms if poison == "clean")
    poisons = [*SEEDED, *(p for p in dict.fromkeys(p for p, _ in arms) if p not in SEEDED)]
    head = [
        "## Seed-to-seed noise of UD (every Table 1 arm against each seed's clean arm)",
        "",
        "Each complete arm scored against each seed's clean arm (β from that clean arm). A clean "
        "arm against another seed's clean arm is UD when nothing is poisoned: the noise floor. "
        "The tables above score an arm against the clean arm of its own seed; the arms run on "
        "seed 0 only are read here against the other seeds' clean arms as well (a different "
        "clean reference, not a paired comparison).",
        "",
    ]
    if len(cleans) < 2:
        return [*head, "(drawn once two seeds of the clean arm are complete)"]
    betas = [learnable_threshold(arms[("clean", s)])[0] for s in cleans]
    lines = [
        *head,
        "| arm | "
        + " | ".join(f"vs clean s{s} (β {b:.3g})" for s, b in zip(cleans, betas, strict=True))
        + " |",
        "|---|" + "---|" * len(cleans),
    ]
    pairs: dict[str, list[float]] = {}  # method -> UD of every (its seed, other clean seed)
    for poison in poisons:
        for seed in sorted(s for p, s in arms if p == poison):
            uds = [score(arms[(poison, seed)], arms[("clean", c)]).ud for c in cleans]
            cells = [
                "1 (itself)" if (poison, seed) == ("clean", c) else f"{ud:.3f}"
                for c, ud in zip(cleans, uds, strict=True)
            ]
            lines.append(f"| {poison} s{seed} | " + " | ".join(cells) + " |")
            pairs.setdefault(poison, []).extend(
                ud for c, ud in zip(cleans, uds, strict=True) if (poison, seed) != ("clean", c)
            )
    lines += [
        "",
        "Over every pair above (a clean arm against the other seeds' clean arms: the noise "
        "floor), how UD spreads, and in how many pairs it is below 1:",
        "",
        "| arm | pairs | min | median | max | UD < 1 |",
        "|---|---|---|---|---|---|",
    ]
    for poison, uds in pairs.items():
        below = sum(ud < 1 for ud in uds)
        lines.append(
            f"| {'clean vs clean' if poison == 'clean' else poison} | {len(uds)} | "
            f"{min(uds):.3f} | {float(np.median(uds)):.3f} | {max(uds):.3f} | "
            f"{below} of {len(uds)} |"
        )
    return lines


def layer_breakdown(runs: Path) -> list[str]:
    """Which layers make each Table 1 arm's #LP (seed 0, β from the clean arm).

    With 21 layers and β the mean of per-epoch 2-means thresholds, one layer with much larger
    SAL than the rest sets β by itself; this table shows whether that happens and how much of
    each arm's #LP it carries.
    """
    from harness.results import open_run
    from harness.scoring import learnable_threshold

    folder = runs / "paper-table1-cpu"
    if not (folder / "run.h5").exists():
        return []
    run = open_run(folder)
    if "clean__none__s0" not in run.arms or not run["clean__none__s0"].complete:
        return []
    beta, _ = learnable_threshold(run["clean__none__s0"].sal)
    lines = [
        "## Where the learnable layers are (Table 1, seed 0)",
        "",
        f"β = {beta:.3g} (from the clean arm). For each complete arm: #LP, the share of it that "
        "the layer most often above β carries, and that layer's SAL over the next-highest "
        "layer's (median over epochs).",
        "",
        "| arm | #LP | layer most often above β | its share of #LP | its SAL ÷ next layer's |",
        "|---|---|---|---|---|",
    ]
    for row in T1_ROWS:
        arm_id = f"{row}__none__s0"
        if arm_id not in run.arms or not run[arm_id].complete:
            continue
        arm = run[arm_id]
        sal = np.asarray(arm.sal, dtype=np.float64)
        above = sal > beta
        top = int(above.sum(axis=0).argmax())
        total = int(above.sum())
        share = above[:, top].sum() / total if total else float("nan")
        others = np.delete(sal, top, axis=1).max(axis=1)
        ratio = float(np.median(sal[:, top] / others))
        lines.append(
            f"| {row} | {above.sum(axis=1).mean():.2f} | {arm.layers[top]} | "
            f"{share:.0%} | {ratio:.2f} |"
        )
    return lines


def without_top_layer(runs: Path) -> list[str]:
    """Post hoc: Table 1's UD with the clean arm's most learnable layer left out of scoring.

    Chosen after the layer breakdown showed one layer (the stem convolution) carrying most of
    every arm's #LP, to ask whether that layer alone decides the verdicts. It is a diagnostic,
    not a setting: no verdict above uses it. β is recomputed from the clean arm without the
    layer, per seed, exactly as the scorer does with every layer.
    """
    from harness.scoring import learnable_threshold, score

    arms = table1_arms(runs)
    cleans = {seed: arm for (poison, seed), arm in arms.items() if poison == "clean"}
    if not cleans:
        return []
    first = cleans[min(cleans)]
    beta, _ = learnable_threshold(first.sal)
    top = int((np.asarray(first.sal) > beta).sum(axis=0).argmax())
    keep = [i for i in range(len(first.layers)) if i != top]
    lines = [
        f"## Post hoc: UD without `{first.layers[top]}`",
        "",
        "Chosen after seeing the table above (so not a setting of the study, and no verdict "
        f"uses it): each arm scored again against its own seed's clean arm with "
        f"`{first.layers[top]}`, the layer most often above β in the clean arm of seed "
        f"{min(cleans)}, left out of the {len(first.layers)} scored layers (β recomputed from "
        "the clean arm without it). It asks whether that one layer decides the verdicts.",
        "",
        f"| arm | seeds | UD, all {len(first.layers)} layers | UD without it | UD < 1 without it |",
        "|---|---|---|---|---|",
    ]
    for row in T1_ROWS[1:]:
        seeds = sorted(s for p, s in arms if p == row and s in cleans)
        if not seeds:
            continue
        full = [score(arms[(row, s)].sal, cleans[s].sal).ud for s in seeds]
        cut = [
            score(np.asarray(arms[(row, s)].sal)[:, keep], np.asarray(cleans[s].sal)[:, keep]).ud
            for s in seeds
        ]
        full = [ud for ud in full if ud is not None]
        cut = [ud for ud in cut if ud is not None]
        below = sum(ud < 1 for ud in cut)
        lines.append(
            f"| {row} | {', '.join(map(str, seeds))} | {Cell.fmt(full, 3)} | {Cell.fmt(cut, 3)} "
            f"| {below} of {len(cut)} |"
        )
    return lines


def spot_check(runs: Path) -> list[str]:
    """The run's own estimator against the full reference on the same run's snapshots.

    Reads `sal-agreement.json`, which `harness sal-agreement RUN --estimator LABEL` writes
    into each Table 1 run folder (the snapshots of every fifth epoch are saved by
    `--save-snapshots 5`): per arm, how often the estimator's learnable/not decisions equal
    the reference's, and UD by each.
    """
    import json

    from harness.agreement_run import label_of
    from harness.runfolder import RunFolder
    from harness.spec import Spec

    lines = [
        "## Spot check: the runs' estimator against the full reference",
        "",
        "The runs record SAL with the reference estimator stopped at convergence; on every fifth "
        "epoch's snapshot of the clean, EM, OPS and TAP arms both it and the full reference (all "
        "iterations) were measured again (`harness sal-agreement RUN --estimator LABEL --arms "
        "...`). UD here counts those four epochs only, so #LP moves in steps of 0.25 and one "
        "decision in 84 that differs can move UD by 0.2 or more: read the decisions column first.",
        "",
        "| run | estimator | arm | epochs | decisions equal | Spearman | UD reference | "
        "UD estimator |",
        "|---|---|---|---|---|---|---|---|",
    ]
    found, notes = False, []
    for name in ("paper-table1-cpu", "paper-table1-seeds-cpu"):
        path = runs / name / "sal-agreement.json"
        if not path.exists():
            continue
        spec = Spec.model_validate(RunFolder(runs / name).stored_spec())
        own = label_of(spec.sal.estimator)
        report = json.loads(path.read_text())
        for result in report["results"]:
            if result["estimator"] != own:
                continue
            for arm in result["arms"]:
                found = True
                epochs = ",".join(map(str, report["epochs"].get(arm["arm"], [])))
                spearman = "" if arm["spearman"] is None else f"{arm['spearman']:.3f}"
                ud_ref, ud_est = (
                    "" if v is None else f"{v:.3f}"
                    for v in (arm["ud_reference"], arm["ud_estimate"])
                )
                lines.append(
                    f"| {name} | {own} | {arm['arm']} | {epochs} | {arm['decisions']:.1%} | "
                    f"{spearman} | {ud_ref} | {ud_est} |"
                )
        if report.get("recorded_difference") is not None:
            notes.append(
                f"In {name} the estimator measured again on the snapshots differs from the SAL "
                f"the run recorded by at most {report['recorded_difference']:.3g}."
            )
    return [*lines, "", " ".join(notes)] if found else []


def table1_sal(runs: Path, out: Path) -> list[str] | None:
    """results-table1.md: the analyses that read Table 1's SAL arrays, or None without its run
    folder (the file is then left as it was last generated)."""
    if not (runs / "paper-table1-cpu" / "run.h5").exists():
        return None
    return sections(
        [
            "# Table 1 at CPU scale: seed noise, learnable layers, spot check, figures",
            "",
            "Generated with [results.md](results.md) by `python benchmarks/paper_results.py "
            "--runs RUNS` from the SAL arrays in Table 1's run folders; do not edit by hand.",
        ],
        seed_noise(runs),
        layer_breakdown(runs),
        without_top_layer(runs),
        spot_check(runs),
        figures(runs, out.parent / "figures"),
    )


def sections(*blocks: list[str]) -> list[str]:
    """The blocks of a document, each followed by a blank line; empty ones left out."""
    return [line for block in blocks if block for line in (*block, "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--filed",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "leaderboard" / "entries",
        help="entries filed with `harness submit`, read for runs whose folder is not under RUNS",
    )
    parser.add_argument(
        "--kept",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "docs" / "paper-arms",
        help="arms kept from earlier sessions (benchmarks/paper_arms.py keep), read for the arms "
        "no run folder under RUNS holds",
    )
    parser.add_argument(
        "--specs",
        type=Path,
        default=SPECS,
        help="the runs' specs (NAME.yaml), read for the arms a run without its folder never ran",
    )
    args = parser.parse_args()
    runs = args.runs.expanduser()
    elsewhere = Elsewhere(args.filed.expanduser(), args.kept.expanduser())
    l1, t1 = table1(runs, elsewhere)
    t2_entries = table2_entries(runs, elsewhere)
    t2 = cells(t2_entries)
    t3 = {bb: cells(load(runs, name, elsewhere=elsewhere)) for bb, name in T3_BACKBONES.items()}
    text = sections(
        [
            "# Does UD reproduce the paper? Tables 1-3 at CPU scale",
            "",
            "Generated by `python benchmarks/paper_results.py --runs RUNS` from the run folders "
            "of the `specs/paper-*-cpu.yaml` specs (run them with `bash benchmarks/"
            "paper_runs.sh`, which resumes wherever they stopped), or for a run whose folder is "
            "not under RUNS from the entries `harness submit` filed for it in "
            "`leaderboard/entries`, and for arms finished in earlier sessions from those kept in "
            "`docs/paper-arms` (`benchmarks/paper_arms.py`); do not edit by hand. Settings (fixed before any result): "
            "CIFAR ResNet-18 w16 (21 scored layers; ResNet-50, SENet-18 and ViT at CPU widths in "
            "Table 3), 2,000 CIFAR-10 training images, 20 epochs, SAL every epoch with the "
            "reference (convergence stop) on a 128-image probe. The paper trains on all 50,000 "
            "images at width 64. Mean ± sd over seeds where there are several.",
        ],
        status(runs, elsewhere, args.specs.expanduser()),
        l1,
        table2(t2, borrowed_arms(t2_entries)),
        table3(t3),
        claims(t1, t2, t3),
        retrained(runs, elsewhere),
        machines(elsewhere),
        [
            "## Table 1's SAL: seed noise, learnable layers, spot check, figures",
            "",
            "In [results-table1.md](results-table1.md), generated by the same command from "
            "Table 1's SAL arrays (left as it was when its run folders are not under RUNS): UD's "
            "seed-to-seed noise floor, which layers make #LP, the post hoc UD without the stem, "
            "the spot check of the runs' estimator against the full reference, and the SAL heat "
            "maps and learnable proportions of clean, EM, OPS and TAP.",
        ],
        [
            "## Sensitivity",
            "",
            "Which settings these verdicts depend on (epochs counted, scored layers, probe size, "
            "SAL iterations, base loss, augmented probe): [sensitivity.md](sensitivity.md), "
            "generated by `python benchmarks/sensitivity.py RUNS/paper-table1-cpu --small-cnn "
            "RUNS/table1-cifar10-cpu` from Table 1's clean, EM and TAP arms of seed 0 and their "
            "snapshots.",
        ],
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"written {args.out}")
    second = args.out.parent / "results-table1.md"
    sal_text = table1_sal(runs, args.out)
    if sal_text is None:
        print(f"kept {second} as it was: Table 1's run folders are not under {runs}")
    else:
        second.write_text("\n".join(sal_text))
        print(f"written {second}")


if __name__ == "__main__":
    main()
