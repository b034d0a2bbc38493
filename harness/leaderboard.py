"""`harness leaderboard`: entries gathered into a leaderboard, one ranking per track and defence.

A track is everything that makes two UD values comparable (data set, task, backbone, recipe,
SAL settings; `Entry.track.id` hashes them), so entries of different tracks are never ranked
together. Within a track, the arms of one experiment (same poison and defence, with the same
parameters and plugin versions) are aggregated over seeds. Poisons are ranked by mean UD within
each defence, lowest first (fewer learnable layers than clean training is closer to a true
unlearnable example): a poison under a defence and a poison without one answer different
questions. The clean data's rows (undefended, and under each defence, the paper's Table 2 first
row) are shown as reference rows, never ranked. A poison × defence matrix of UD and ΔUD, as in
the paper's Table 2, sits under every track with more than one defence.

The page build is robust against what third parties put in a leaderboard folder:

- a file in `entries/` that is not a valid entry (or holds a non-finite number, which no JSON
  reader outside Python accepts) is reported with a warning naming it and skipped;
- each (track, experiment, seed) is counted once. When several runs hold the same arm and seed
  (a second submission of an experiment under another run name), the entry of the run whose
  name sorts first is counted and the others are listed under the track as not counted, and
  reported: a repeat is never averaged in as another seed. To replace a result, remove the old
  entry file (or resubmit the same run name with `harness submit --replace`);
- experiments that share a label but differ in parameters or plugin versions are separate rows,
  and their names carry what differs, e.g. `noise (epsilon=0.1)` and `noise (epsilon=0.2)`.

Each method's paper comes from its plugin record (`PoisonRecord.paper`, `DefenceRecord.paper`)
when that plugin is installed where the page is built; entries do not carry it. A link is made
only from a URL, an arXiv identifier or a `doi:` in the citation; otherwise the citation text is
shown as it is. Without the plugins installed the page still builds, saying the paper is unknown.

Two outputs: `leaderboard.md` for the repository, and a static `index.html` with the data
inlined as a JSON block and plain JavaScript for sorting and filtering, so the page works opened
straight from the file system, with no server and nothing fetched. Entries come from third
parties: the page writes every value as text (`textContent`), never as markup.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.atomic import atomic_write_text
from harness.entries import ENTRIES_DIR, RUN_FILE, ComponentInfo, Entry
from harness.entries import Track as EntryTrack
from harness.errors import HarnessError
from harness.sysinfo import harness_version
from harness.tracks import SubmissionStatus

MARKDOWN_FILE = "leaderboard.md"
HTML_FILE = "index.html"
DATA_FILE = "entries.json"
STATUS_FILE = "submissions.json"
NO_DEFENCE = "none"

Warn = Callable[[str], None]
PaperLookup = Callable[[str, ComponentInfo], str | None]


class LeaderboardError(HarnessError):
    """Sources that hold no entries at all."""


def estimator_text(estimator: Any) -> str:
    """`reference`, or `normalized-steps (steps=2)`: a track's SAL estimator as a title shows it."""
    if isinstance(estimator, dict):
        params = ", ".join(f"{k}={v}" for k, v in sorted((estimator.get("params") or {}).items()))
        name = str(estimator.get("name", "?"))
        return f"{name} ({params})" if params else name
    return str(estimator)


def warn_stderr(message: str) -> None:
    """The default for `warn`: one line on stderr, as the CLI prints its other warnings."""
    print(f"warning: {message}", file=sys.stderr)


# --- gathering ---------------------------------------------------------------------------------


def _entry_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise LeaderboardError(f"{source}: no such file or folder")
    if (source / RUN_FILE).exists() or (source / ENTRIES_DIR).is_dir():  # a run or a leaderboard
        return sorted((source / ENTRIES_DIR).glob("*.json"))
    return sorted(p for p in source.glob("*.json") if p.name != DATA_FILE)


def read_entry(path: Path) -> Entry:
    """One entry file, checked as the page needs it: a valid entry with finite numbers only.

    Python's JSON reader accepts NaN and Infinity, a browser's does not, so a non-finite value
    would break the page for everyone; it is refused here like any other invalid file.
    """
    entry = Entry.model_validate_json(path.read_text(encoding="utf-8"))
    try:
        json.dumps(entry.model_dump(mode="json"), allow_nan=False)
    except ValueError:
        raise ValueError("it holds a number that is not finite (NaN or infinity)") from None
    return entry


def gather(sources: Iterable[Path], *, warn: Warn | None = None) -> list[Entry]:
    """Every entry under the sources (run folders, leaderboard folders, folders of entry files).

    The same entry reached twice (a run and its submitted copy) counts once. A file that is not
    a valid entry is reported through `warn` (by default a line on stderr) and skipped: one bad
    file in a shared folder must not stop everyone else's results from being published. Only
    when no valid entry is left is that an error.
    """
    warn = warn or warn_stderr
    sources = [Path(s) for s in sources]
    seen: dict[tuple[str, str, str, str], Entry] = {}
    for source in sources:
        for path in _entry_files(source):
            try:
                entry = read_entry(path)
            except (ValidationError, ValueError, UnicodeDecodeError, OSError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                warn(f"{path}: not a valid entry ({first}); skipped")
                continue
            seen.setdefault((entry.run, entry.entry_id, entry.spec_hash, entry.hdf5.sha256), entry)
    if not seen:
        raise LeaderboardError("no entries found in " + ", ".join(str(s) for s in sources))
    return list(seen.values())


# --- papers --------------------------------------------------------------------------------------

_URL = re.compile(r"https?://[^\s'\"<>()\[\]]+[^\s'\"<>()\[\].,;:]")
_ARXIV = re.compile(r"(?:arxiv\s*:?\s*|arxiv\.org/abs/)(\d{4}\.\d{4,5}(?:v\d+)?)", re.IGNORECASE)
_DOI = re.compile(r"\bdoi\s*:\s*(10\.\d{4,9}/[^\s'\"<>]+[^\s'\"<>.,;:)])", re.IGNORECASE)


def paper_url(citation: str) -> str | None:
    """A link for a citation, only from what it states: a URL, an arXiv id, or a `doi:`.

    Nothing is guessed from titles or authors: a citation without one of these keeps no link.
    """
    if m := _URL.search(citation):
        return m.group(0)
    if m := _ARXIV.search(citation):
        return f"https://arxiv.org/abs/{m.group(1)}"
    if m := _DOI.search(citation):
        return f"https://doi.org/{m.group(1)}"
    return None


def installed_paper(kind: str, component: ComponentInfo) -> str | None:
    """The `paper` of the installed plugin record of this component, if it is the same plugin.

    The record is taken only from the distribution the entry names, so a different package that
    happens to register the same name never lends its paper. Any failure to load the plugins
    leaves the paper unknown: the page must build on a machine without them.
    """
    try:
        from harness.pluginmanager import get_components

        registered = get_components()[kind].get(component.name)
    except Exception:  # no plugins here, a broken one, or an unknown name: no paper, no failure
        return None
    if registered.distribution != component.distribution:
        return None
    return getattr(registered.record, "paper", None) or None


@dataclass
class Method:
    """A poison or defence as the page's methods list shows it, with its paper if known."""

    kind: str
    name: str
    distribution: str
    versions: set[str] = field(default_factory=set)
    paper: str | None = None

    @property
    def anchor(self) -> str:
        return "method-" + re.sub(
            r"[^a-z0-9_-]+", "-", f"{self.kind}-{self.distribution}-{self.name}".lower()
        )

    @property
    def url(self) -> str | None:
        return paper_url(self.paper) if self.paper else None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "distribution": self.distribution,
            "versions": sorted(self.versions),
            "paper": self.paper,
            "url": self.url,
            "anchor": self.anchor,
        }


# --- aggregation -------------------------------------------------------------------------------


def _component_key(c: ComponentInfo | None) -> str:
    if c is None:
        return "clean"
    return json.dumps([c.name, c.params, c.distribution, c.version], sort_keys=True)


def _component_label(c: ComponentInfo | None) -> str:
    return "clean" if c is None else (c.label or c.name)


def _describe(c: ComponentInfo | None) -> str:
    if c is None:
        return "no poison (the clean reference)"
    params = ", ".join(f"{k}={v}" for k, v in sorted(c.params.items()))
    return f"{c.name}({params}) from {c.distribution} {c.version}"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested parameters as `a.b` keys, so two settings can be compared key by key."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return {prefix: value}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _differences(items: list[dict[str, Any]]) -> list[str]:
    """For each flattened settings dict, `k=v` for the keys whose values are not all alike."""
    keys = sorted({k for d in items for k in d})
    differing = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in items}) > 1]
    return [", ".join(f"{k}={_short(d.get(k, '—'))}" for k in differing) for d in items]


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def track_summary(entry: Entry) -> str:
    """One line naming a track in full: data, task, backbone, recipe, SAL settings."""
    t = entry.track
    subset = t.dataset.get("subset") or {}
    data = t.dataset.get("name", "?")
    if subset.get("train") or subset.get("test"):
        data += f" (train {subset.get('train') or 'all'}, test {subset.get('test') or 'all'})"
    backbone = t.backbone.name + (
        f" {json.dumps(t.backbone.params, sort_keys=True)}" if t.backbone.params else ""
    )
    tr = t.training
    opt = tr.get("optimizer", {})
    recipe = f"{tr.get('epochs')} epochs, {opt.get('name')} lr {opt.get('lr')}, batch {tr.get('batch_size')}"
    if tr.get("augmentation"):
        recipe += ", " + "+".join(a.get("name", "?") for a in tr["augmentation"])
    s = t.sal
    sal = (
        f"SAL {estimator_text(s.get('estimator'))} ε {s.get('epsilon')}, {s.get('iterations')} iterations, "
        f"probe {s.get('probe_size')}, base {s.get('base_loss')}"
    )
    task = t.task.name
    if t.tasks:
        task = f"{t.task.label or t.task.name} of multi-task [{', '.join(x.get('label', x['name']) for x in t.tasks)}]"
    return f"{data} · {task} · {backbone} · {recipe} · {sal}"


def _params_text(params: dict[str, Any]) -> str:
    """`width 16, blocks 3, batch_norm`: a component's scalar settings as a reader says them."""
    parts = []
    for k, v in sorted(params.items()):
        if v is None or isinstance(v, (dict, list)):
            continue
        if isinstance(v, bool):
            parts.append(k if v else f"no {k}")
        else:
            parts.append(f"{k} {_short(v)}")
    return ", ".join(parts)


def track_title(track: EntryTrack) -> str:
    """A heading a reader recognises a track by: data set with subset, task, model with its
    size, the recipe in short form, and the SAL estimator with its key settings.

    The full settings stay in `track_summary` and the track's detail; the id is shown beside the
    title for reference. Titles of different tracks can still coincide (settings left out here):
    `build` then appends what tells them apart.
    """
    d = track.dataset
    data = str(d.get("name", "?"))
    root = (d.get("params") or {}).get("root")
    if isinstance(root, str) and root.strip("/"):
        data = f"{Path(root).name} ({data})"  # a folder data set: the folder says which data
    subset = d.get("subset") or {}
    if subset.get("train") or subset.get("test"):
        data += f", train {subset.get('train') or 'all'} / test {subset.get('test') or 'all'}"
    task = track.task.label or track.task.name
    if track.tasks:
        task = f"task {task} of {len(track.tasks)}"
    model = track.backbone.name
    if params := _params_text(track.backbone.params):
        model += f" ({params})"
    tr = track.training
    opt = tr.get("optimizer") or {}
    recipe = f"{tr.get('epochs')} ep {opt.get('name', '?')} lr {_short(opt.get('lr'))}, bs {tr.get('batch_size')}"
    schedule = (tr.get("schedule") or {}).get("name")
    if schedule and schedule != "constant":
        recipe += f", {schedule}"
    if tr.get("augmentation"):
        recipe += ", " + "+".join(str(a.get("name", "?")) for a in tr["augmentation"])
    s = track.sal
    sal = f"SAL {estimator_text(s.get('estimator'))} ε {_short(s.get('epsilon'))}, {s.get('iterations')} it, probe {s.get('probe_size')}"
    if s.get("base_loss") not in (None, "eval"):
        sal += f", base {s.get('base_loss')}"
    return " · ".join((data, task, model, recipe, sal))


@dataclass
class Row:
    """One experiment of a track: a poison under a defence, over every seed submitted.

    `reference` rows are the clean data (undefended, or under a defence): what poisons are read
    against, never ranked among them. `rank` is the place among the poisons of the same defence.
    """

    track: str
    poison: str
    poison_detail: str
    defence: str
    defence_detail: str
    entries: list[Entry] = field(default_factory=list)
    rank: int | None = None
    poison_method: Method | None = None
    defence_method: Method | None = None

    @property
    def reference(self) -> bool:
        return self.entries[0].poison is None

    def _values(self, get) -> list[float]:
        return [v for v in (get(e) for e in self.entries) if v is not None]

    @property
    def ud(self) -> tuple[float | None, float | None]:
        return _stats(self._values(lambda e: e.results.ud))

    @property
    def ud_change(self) -> tuple[float | None, float | None]:
        return _stats(self._values(lambda e: e.results.ud_change))

    @property
    def lp(self) -> tuple[float | None, float | None]:
        return _stats(self._values(lambda e: e.results.lp))

    @property
    def metric(self) -> tuple[float | None, float | None]:
        return _stats(self._values(lambda e: e.results.test_metric.final))

    @property
    def metric_name(self) -> str:
        return self.entries[0].results.test_metric.name

    @property
    def seeds(self) -> list[int]:
        return sorted(e.seed for e in self.entries)

    @property
    def harness_versions(self) -> list[str]:
        return sorted({e.harness_version for e in self.entries})

    @property
    def plugin_versions(self) -> list[str]:
        out = set()
        for e in self.entries:
            for c in (e.poison, e.defence, e.track.backbone, e.track.task):
                if c is not None:
                    out.add(f"{c.distribution} {c.version}")
            if "distribution" in e.track.dataset:
                out.add(f"{e.track.dataset['distribution']} {e.track.dataset.get('version', '?')}")
        return sorted(out)

    def as_json(self) -> dict[str, Any]:
        ud, ud_sd = self.ud
        change, change_sd = self.ud_change
        lp, lp_sd = self.lp
        metric, metric_sd = self.metric
        return {
            "track": self.track,
            "rank": self.rank,
            "reference": self.reference,
            "poison": self.poison,
            "poison_detail": self.poison_detail,
            "poison_method": self.poison_method.anchor if self.poison_method else None,
            "defence": self.defence,
            "defence_detail": self.defence_detail,
            "defence_method": self.defence_method.anchor if self.defence_method else None,
            "ud": ud,
            "ud_sd": ud_sd,
            "ud_change": change,
            "ud_change_sd": change_sd,
            "lp": lp,
            "lp_sd": lp_sd,
            "metric": metric,
            "metric_sd": metric_sd,
            "metric_name": self.metric_name,
            "seeds": self.seeds,
            "n": len(self.entries),
            "harness": self.harness_versions,
            "plugins": self.plugin_versions,
            "runs": sorted({e.run for e in self.entries}),
        }


@dataclass
class Duplicate:
    """An entry not counted: `counted` already holds the same track, experiment and seed."""

    entry: Entry
    counted: Entry
    poison: str
    defence: str

    def text(self) -> str:
        return (
            f"run {self.entry.run}: {self.poison} under {self.defence}, seed {self.entry.seed} "
            f"(the same arm and seed as run {self.counted.run}'s, which is counted)"
        )


@dataclass
class TrackBoard:
    """The leaderboard of one track: its rows, ranked per defence, and what was not counted.

    (`harness.entries.Track` is the track as an entry records it; this is its page.)
    """

    id: str
    title: str
    summary: str
    detail: dict[str, Any]
    rows: list[Row]
    duplicates: list[Duplicate] = field(default_factory=list)

    @property
    def defences(self) -> list[str]:
        """The defences of the track, no defence first, in the rows' order."""
        return list(dict.fromkeys(r.defence for r in self.rows))

    @property
    def poisons(self) -> list[str]:
        """The poisons of the track: the clean reference first, then as the rows come (by their
        rank without defence), so the matrix reads down in the order of the first column."""
        return list(
            dict.fromkeys(r.poison for r in sorted(self.rows, key=lambda r: not r.reference))
        )

    @property
    def methods(self) -> list[str]:
        """The unlearnable methods the track ranks: its poisons but the clean reference."""
        return list(dict.fromkeys(r.poison for r in self.rows if not r.reference))

    def cell(self, poison: str, defence: str) -> Row | None:
        return next((r for r in self.rows if r.poison == poison and r.defence == defence), None)


def _experiment_key(e: Entry) -> tuple[str, str, str]:
    return (_component_key(e.poison), e.crafting_task or "", _component_key(e.defence))


def _name_rows(rows: list[Row], attr: str, components: dict[int, ComponentInfo | None]) -> None:
    """Give rows that share a label but not their settings names that say what differs."""
    groups: dict[str, dict[str, ComponentInfo | None]] = {}
    for row in rows:
        c = components[id(row)]
        groups.setdefault(getattr(row, attr), {})[_component_key(c)] = c
    for label, variants in groups.items():
        if len(variants) < 2:
            continue
        keys = list(variants)
        settings = [
            {"plugin": c.name, **_flatten(c.params), "from": f"{c.distribution} {c.version}"}
            if c is not None
            else {}
            for c in variants.values()
        ]
        names = dict(zip(keys, (f"{label} ({d})" for d in _differences(settings)), strict=True))
        for row in rows:
            c = components[id(row)]
            if getattr(row, attr) == label:
                setattr(row, attr, names[_component_key(c)])


def build(
    entries: list[Entry], *, papers: PaperLookup | None = None, warn: Warn | None = None
) -> list[TrackBoard]:
    """Tracks, each with its rows ranked by mean UD per defence; the track ranking the most
    unlearnable methods first (then most entries, then by id): the headline of a leaderboard is
    where methods are compared, not where one method has many seeds or defences.

    Rows come in defence order (no defence first, then by name), each defence's clean reference
    row first, then its poisons by rank; poisons without a UD (the clean arm had no learnable
    layer) come last, unranked. Entries repeating a counted (track, experiment, seed) are kept
    aside as `TrackBoard.duplicates` and reported through `warn`. `papers` finds a component's
    paper (default: `installed_paper`).
    """
    warn = warn or warn_stderr
    papers = papers if papers is not None else installed_paper
    boards: dict[str, TrackBoard] = {}
    groups: dict[tuple[str, tuple[str, str, str]], Row] = {}
    counted: dict[tuple[str, tuple[str, str, str], int], Entry] = {}
    known: dict[tuple[str, str, str], Method] = {}
    poison_of: dict[int, ComponentInfo | None] = {}
    defence_of: dict[int, ComponentInfo | None] = {}

    def method(kind: str, c: ComponentInfo) -> Method:
        key = (kind, c.distribution, c.name)
        if key not in known:
            known[key] = Method(kind, c.name, c.distribution, paper=papers(kind, c))
        known[key].versions.add(c.version)
        return known[key]

    for e in sorted(entries, key=lambda e: (e.track.id, e.run, e.entry_id, e.hdf5.sha256)):
        tid = e.track.id
        if tid not in boards:
            boards[tid] = TrackBoard(
                tid,
                track_title(e.track),
                track_summary(e),
                e.track.model_dump(mode="json", exclude={"id"}),
                [],
            )
        key = _experiment_key(e)
        if (tid, key) not in groups:
            poison = _component_label(e.poison)
            if e.crafting_task is not None and e.crafting_task != e.evaluated_task:
                poison += f" (crafted on {e.crafting_task})"  # cross-task: never merged with same-task rows
            row = Row(
                tid,
                poison,
                _describe(e.poison),
                e.defence.label or e.defence.name,
                _describe(e.defence),
                poison_method=method("poison", e.poison) if e.poison is not None else None,
                defence_method=method("defence", e.defence)
                if e.defence.name != NO_DEFENCE
                else None,
            )
            groups[(tid, key)] = row
            poison_of[id(row)], defence_of[id(row)] = e.poison, e.defence
            boards[tid].rows.append(row)
        row = groups[(tid, key)]
        first = counted.setdefault((tid, key, e.seed), e)
        if first is not e:
            boards[tid].duplicates.append(Duplicate(e, first, row.poison, row.defence))
            continue
        row.entries.append(e)
    for board in boards.values():
        _name_rows(board.rows, "poison", poison_of)
        _name_rows(board.rows, "defence", defence_of)
        for d in board.duplicates:  # the names the rows ended with
            row = groups[(board.id, _experiment_key(d.entry))]
            d.poison, d.defence = row.poison, row.defence
            warn(f"not counted: {d.text()}, in track {board.title} [{board.id}]")
        defences = sorted({r.defence for r in board.rows}, key=lambda d: (d != NO_DEFENCE, d))
        for defence in defences:
            poisons = [r for r in board.rows if r.defence == defence and not r.reference]
            poisons.sort(
                key=lambda r: (r.ud[0] is None, r.ud[0] if r.ud[0] is not None else 0.0, r.poison)
            )
            previous = None
            for i, row in enumerate(poisons, start=1):
                if row.ud[0] is None:
                    continue
                # ties share a place (1, 1, 3): UD is a ratio of small counts, so equal means are common
                ud = round(row.ud[0], 12)
                row.rank = previous[1] if previous is not None and previous[0] == ud else i
                previous = (ud, row.rank)
        board.rows.sort(
            key=lambda r: (
                defences.index(r.defence),
                not r.reference,
                r.rank is None,
                r.rank or 0,
                r.poison,
            )
        )
    _distinct_titles(list(boards.values()))
    return sorted(
        boards.values(),
        key=lambda t: (-len(t.methods), -sum(len(r.entries) for r in t.rows), t.id),
    )


def _distinct_titles(boards: list[TrackBoard]) -> None:
    """Tracks whose short titles coincide get what tells them apart appended (e.g. the device)."""
    by_title: dict[str, list[TrackBoard]] = {}
    for b in boards:
        by_title.setdefault(b.title, []).append(b)
    for same in by_title.values():
        if len(same) > 1:
            for b, diff in zip(same, _differences([_flatten(b.detail) for b in same]), strict=True):
                b.title += f" · {diff}"


# --- Markdown ----------------------------------------------------------------------------------


def _pm(mean: float | None, sd: float | None, digits: int = 3, *, signed: bool = False) -> str:
    if mean is None:
        return "—"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


LEGEND: tuple[tuple[str, str], ...] = (
    (
        "UD",
        "Unlearnable Distance: the arm's #LP divided by the #LP of the undefended clean arm of the "
        "same seed. Below 1 the data teach the model fewer layers than clean data (closer to a true "
        "unlearnable example); above 1, more, whatever the test accuracy says. Lower ranks first.",
    ),
    (
        "#LP",
        "learnable layers: the number of layers whose SAL (Sharpness-Aware Learnability) is above the "
        "learnable threshold β, averaged over the epochs; β comes from 2-means on the undefended clean "
        "arm's SAL.",
    ),
    (
        "ΔUD",
        "UD under the defence minus UD of the same poison without the defence (same seed). Positive: "
        "the model learns more layers under the defence than without it (for a poison: the defence "
        "counters it); negative: fewer. Empty without a defence.",
    ),
    (
        "rank",
        "the place of a poison among the poisons under the same defence in the same track, by mean "
        "UD; equal UDs share a place. Rows of clean data are references (ref): what poisons are read "
        "against, never ranked. Tracks are never ranked together.",
    ),
    (
        "seeds",
        "how many seeds the row averages, and which (mean ± standard deviation). Each track, "
        "experiment and seed is counted once: a repeat from another run is listed as not counted.",
    ),
)


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(_md_cell(c) for c in cells) + " |"


def _matrix_cell(row: Row | None) -> str:
    """UD (mean ± sd), and ΔUD in brackets under a defence, as the paper's Table 2 reads."""
    if row is None:
        return ""
    text = _pm(*row.ud)
    change = row.ud_change[0]
    if row.defence_method is not None and change is not None:
        text += f" ({change:+.3f})"
    return text


def _method_text(m: Method, *, markdown_link: bool) -> str:
    versions = ", ".join(sorted(m.versions))
    head = f"{m.name} ({m.kind}, {m.distribution} {versions})"
    if m.paper is None:
        return f"{head}: paper unknown (no installed plugin record of {m.distribution} here to read it from)"
    text = f"{head}: {m.paper}"
    if m.url and markdown_link:
        text += f" [link]({m.url})"
    return text


def methods(tracks: list[TrackBoard]) -> list[Method]:
    """Every poison and defence of the tracks, poisons first, each once."""
    found = {
        id(m): m for t in tracks for r in t.rows for m in (r.poison_method, r.defence_method) if m
    }
    return sorted(found.values(), key=lambda m: (m.kind != "poison", m.name, m.distribution))


def markdown(tracks: list[TrackBoard]) -> str:
    n = sum(len(r.entries) for t in tracks for r in t.rows)
    lines = [
        "# Leaderboard",
        "",
        f"{n} entries in {len(tracks)} track(s), written by harness {harness_version()}. In each track, "
        "poisons are ranked by the Unlearnable Distance within each defence; rows of clean data are "
        "references, not ranked. Entries of different tracks are never ranked together. Mean ± standard "
        "deviation over seeds.",
        "",
    ]
    lines += [f"- **{term}**: {text}" for term, text in LEGEND]
    lines.append("")
    for t in tracks:
        metric = t.rows[0].metric_name if t.rows else "metric"
        lines += [
            f"## {_md_cell(t.title)}",
            "",
            f"Track `{t.id}`: {_md_cell(t.summary)}",
            "",
            f"| defence | rank | poison | UD | ΔUD | #LP | test {metric} | seeds | harness | plugins |",
            "|---|---:|---|---:|---:|---:|---:|---|---|---|",
        ]
        for r in t.rows:
            rank = "ref" if r.reference else (str(r.rank) if r.rank is not None else "—")
            lines.append(
                _md_row(
                    (
                        r.defence,
                        rank,
                        r.poison,
                        _pm(*r.ud),
                        _pm(*r.ud_change, signed=True) if r.defence_method else "",
                        _pm(*r.lp, 2),
                        _pm(*r.metric, 4),
                        f"{len(r.entries)}: " + ", ".join(map(str, r.seeds)),
                        ", ".join(r.harness_versions),
                        "; ".join(r.plugin_versions),
                    )
                )
            )
        lines.append("")
        if len(t.defences) > 1:
            lines += [
                "Poison × defence: UD, with ΔUD in brackets (as the paper's Table 2).",
                "",
                _md_row(("poison", *t.defences)),
                "|---|" + "---:|" * len(t.defences),
            ]
            for poison in t.poisons:
                name = f"{poison} (reference)" if poison == "clean" else poison
                lines.append(
                    _md_row((name, *(_matrix_cell(t.cell(poison, d)) for d in t.defences)))
                )
            lines.append("")
        if t.duplicates:
            lines += ["Not counted (each track, arm and seed counts once):", ""]
            lines += [f"- {_md_cell(d.text())}" for d in t.duplicates]
            lines.append("")
        details = sorted(
            {(r.poison, r.poison_detail) for r in t.rows}
            | {(r.defence, r.defence_detail) for r in t.rows}
        )
        lines += [f"- `{_md_cell(name)}`: {_md_cell(text)}" for name, text in details]
        lines.append("")
    found = methods(tracks)
    if found:
        lines += ["## Methods", ""]
        lines += [f"- {_md_cell(_method_text(m, markdown_link=True))}" for m in found]
        lines.append("")
    return "\n".join(lines)


# --- HTML --------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Unlearnable examples leaderboard</title>
<link rel="icon" href="data:,">
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; padding: 0 1em; color: #222; }
.filters { display: flex; gap: 1.5em; flex-wrap: wrap; margin: 1em 0; }
.filters label { font-size: 0.9em; }
.filters select { max-width: 40em; }
#legend { font-size: 0.88em; background: #f8f8f8; border: 1px solid #e3e3e3; padding: 0.4em 1em; }
#legend summary { cursor: pointer; font-weight: 600; }
#legend dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.3em 1em; margin: 0.6em 0; }
#legend dt { font-weight: 600; }
#legend dd { margin: 0; }
section.track { margin: 2.2em 0; }
section.track h2 { font-size: 1.1em; margin-bottom: 0.1em; }
section.track h3 { font-size: 0.95em; margin: 1.2em 0 0.2em 0; }
.track-id { color: #666; font-size: 0.78em; margin: 0 0 0.6em 0; }
.track-id code { font-size: 1em; }
.caption { color: #555; font-size: 0.85em; margin: 0 0 0.4em 0; }
table { border-collapse: collapse; font-size: 0.9em; width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; }
table.ranking th { cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.reference td { background: #f4f6f9; color: #444; font-style: italic; }
table.matrix { width: auto; }
table.matrix td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.matrix td:first-child { text-align: left; }
.delta { display: block; color: #555; font-size: 0.85em; }
.not-counted { color: #8a5a00; font-size: 0.85em; }
#methods li { margin: 0.3em 0; font-size: 0.9em; }
#methods li:target { background: #fff6d5; }
#empty { color: #8a5a00; }
tr.status-failed td:nth-child(3) { color: #a40000; font-weight: bold; }
tr.status-scored td:nth-child(3) { color: #1a6e1a; }
#submissions pre { white-space: pre-wrap; font-size: 0.8em; max-height: 20em; overflow: auto; }
</style>
</head>
<body>
<h1>Unlearnable examples leaderboard</h1>
<p id="about"></p>
<details id="legend" open><summary>What the columns mean</summary><dl id="legend-terms"></dl></details>
<div class="filters">
<label>Track <select id="filter-track"><option value="">all tracks</option></select></label>
<label>Poison <select id="filter-poison"><option value="">all poisons</option></select></label>
<label>Defence <select id="filter-defence"><option value="">all defences</option></select></label>
</div>
<p id="empty" hidden>No entry matches these filters.</p>
<div id="tracks"></div>
<section id="submissions" hidden><h2>Submissions</h2><p class="caption">Every submission the
scoring queue has seen: scored (its entries are above) or failed, with the reason and the end of
its log.</p><table class="submissions"><thead><tr><th>submission</th><th>track</th><th>status</th>
<th>reason</th><th>entries</th></tr></thead><tbody></tbody></table></section>
<section id="methods"><h2>Methods</h2><p class="caption">Each poison and defence with the paper its
plugin says it follows; a link only where the citation gives a URL, an arXiv id or a DOI.</p><ul></ul></section>
<script type="application/json" id="leaderboard-data">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("leaderboard-data").textContent);
  const columns = [
    {key: "defence", title: "defence"},
    {key: "rank", title: "rank", num: true},
    {key: "poison", title: "poison"},
    {key: "ud", title: "UD", num: true, sd: "ud_sd", digits: 3},
    {key: "ud_change", title: "\\u0394UD", num: true, sd: "ud_change_sd", digits: 3, signed: true},
    {key: "lp", title: "#LP", num: true, sd: "lp_sd", digits: 2},
    {key: "metric", title: "test metric", num: true, sd: "metric_sd", digits: 4},
    {key: "n", title: "seeds", num: true},
    {key: "harness", title: "harness"},
    {key: "plugins", title: "plugins"}
  ];
  function fixed(v, digits) {
    // as Python formats leaderboard.md: an exact half rounds to even, where toFixed rounds it up
    const exact = Math.abs(v).toFixed(100), point = exact.indexOf(".");
    if (/^50*$/.test(exact.slice(point + 1 + digits))) {
      const kept = exact.slice(0, digits ? point + 1 + digits : point);
      if (Number(kept[kept.length - 1]) % 2 === 0) return (v < 0 ? "-" : "") + kept;
    }
    return v.toFixed(digits);
  }
  function number(v, digits, signed) {
    return (signed && v >= 0 ? "+" : "") + fixed(v, digits);
  }
  function show(row, col) {
    const v = row[col.key];
    if (col.key === "rank" && row.reference) return "ref";
    if (col.key === "n") return v + ": " + row.seeds.join(", ");
    if (Array.isArray(v)) return v.join("; ");
    if (v === null || v === undefined) return col.key === "ud_change" ? "" : "\\u2014";
    if (col.digits !== undefined) {
      const sd = row[col.sd];
      return number(v, col.digits, col.signed) + (sd === null || sd === undefined ? "" : " \\u00b1 " + fixed(sd, col.digits));
    }
    return String(v);
  }
  function compare(a, b, col, dir) {
    const x = a[col.key], y = b[col.key];
    const xm = x === null || x === undefined, ym = y === null || y === undefined;
    if (xm || ym) return xm === ym ? 0 : (xm ? 1 : -1);  // missing values last either way
    const p = Array.isArray(x) ? x.join(";") : x, q = Array.isArray(y) ? y.join(";") : y;
    if (p < q) return -dir;
    if (p > q) return dir;
    return 0;
  }
  function element(tag, text, className) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (className) e.className = className;
    return e;
  }
  function methodLink(text, anchor) {
    if (!anchor) return document.createTextNode(text);
    const a = element("a", text);
    a.href = "#" + anchor;
    return a;
  }
  function option(select, value, text) {
    const o = element("option", text);
    o.value = value;
    select.appendChild(o);
  }
  document.getElementById("about").textContent = data.about;
  const legend = document.getElementById("legend-terms");
  data.legend.forEach((item) => legend.append(element("dt", item[0]), element("dd", item[1])));
  const trackSelect = document.getElementById("filter-track");
  const poisonSelect = document.getElementById("filter-poison");
  const defenceSelect = document.getElementById("filter-defence");
  const uniq = (key) => Array.from(new Set(data.tracks.flatMap((t) => t.rows.map((r) => r[key])))).sort();
  data.tracks.forEach((t) => option(trackSelect, t.id, t.title));
  uniq("poison").forEach((p) => option(poisonSelect, p, p));
  uniq("defence").forEach((d) => option(defenceSelect, d, d));
  const container = document.getElementById("tracks");
  const sections = data.tracks.map((track) => {
    const section = element("section", null, "track");
    section.dataset.track = track.id;
    const idLine = element("p", "track ", "track-id");
    idLine.append(element("code", track.id), document.createTextNode(" \\u00b7 " + track.summary));
    section.append(element("h2", track.title), idLine);
    const table = element("table", null, "ranking");
    const headRow = table.createTHead().insertRow();
    const body = table.createTBody();
    const metricName = track.rows.length ? track.rows[0].metric_name : "metric";
    let sortKey = null, sortDir = 1;
    function render() {
      const col = columns.find((c) => c.key === sortKey);
      const rows = track.rows.slice();
      if (col) rows.sort((a, b) => compare(a, b, col, sortDir) || a.order - b.order);
      body.replaceChildren();
      rows.forEach((row) => {
        const tr = body.insertRow();
        tr.dataset.poison = row.poison;
        tr.dataset.defence = row.defence;
        if (row.reference) tr.className = "reference";
        columns.forEach((c) => {
          const td = tr.insertCell();
          if (c.key === "poison") {
            td.appendChild(methodLink(show(row, c), row.poison_method));
            td.title = row.poison_detail;
          } else if (c.key === "defence") {
            td.appendChild(methodLink(show(row, c), row.defence_method));
            td.title = row.defence_detail;
          } else {
            td.textContent = show(row, c);
          }
          if (c.num) td.className = "num";
        });
      });
      Array.from(headRow.cells).forEach((th) => {
        th.setAttribute("aria-sort", th.dataset.key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
      });
      applyFilters();
    }
    columns.forEach((c) => {
      const th = element("th", c.key === "metric" ? "test " + metricName : c.title);
      th.dataset.key = c.key;
      th.addEventListener("click", () => {
        sortDir = sortKey === c.key ? -sortDir : 1;
        sortKey = c.key;
        render();
      });
      headRow.appendChild(th);
    });
    section.appendChild(table);
    let matrix = null;
    if (track.defences.length > 1) {
      section.append(element("h3", "Poison \\u00d7 defence"),
        element("p", "UD of each poison under each defence; below it \\u0394UD, the change from the same poison " +
                     "without defence (as the paper's Table 2). The clean row is the reference.", "caption"));
      matrix = element("table", null, "matrix");
      const head = matrix.createTHead().insertRow();
      head.appendChild(element("th", "poison"));
      track.defences.forEach((d) => {
        const th = element("th", d);
        th.dataset.defence = d;
        head.appendChild(th);
      });
      const mbody = matrix.createTBody();
      track.matrix.forEach((line) => {
        const tr = mbody.insertRow();
        tr.dataset.poison = line.poison;
        if (line.reference) tr.className = "reference";
        tr.insertCell().textContent = line.reference ? line.poison + " (reference)" : line.poison;
        line.cells.forEach((cell, i) => {
          const td = tr.insertCell();
          td.dataset.defence = track.defences[i];
          if (!cell) return;
          td.appendChild(element("span", show(cell, columns[3]), "ud"));
          if (cell.ud_change !== null && cell.ud_change !== undefined) {
            td.appendChild(element("span", "\\u0394 " + number(cell.ud_change, 3, true), "delta"));
          }
          td.title = cell.poison + " under " + cell.defence + ", seeds " + cell.seeds.join(", ");
        });
      });
      section.appendChild(matrix);
    }
    if (track.not_counted.length) {
      section.appendChild(element("p", "Not counted (each track, arm and seed counts once):", "not-counted"));
      const list = element("ul", null, "not-counted");
      track.not_counted.forEach((text) => list.appendChild(element("li", text)));
      section.appendChild(list);
    }
    container.appendChild(section);
    return {section: section, body: body, matrix: matrix, render: render};
  });
  const methodList = document.querySelector("#methods ul");
  data.methods.forEach((m) => {
    const li = element("li");
    li.id = m.anchor;
    li.append(element("strong", m.name),
              document.createTextNode(" (" + m.kind + ", " + m.distribution + " " + m.versions.join(", ") + "): "));
    if (m.paper === null) {
      li.appendChild(element("span", "paper unknown (no installed plugin record to read it from)", "unknown"));
    } else {
      li.appendChild(element("span", m.paper, "citation"));
      if (m.url && /^https?:\\/\\//.test(m.url)) {
        const a = element("a", "paper \\u2197", "paper");
        a.href = m.url;
        a.rel = "noopener noreferrer";
        li.append(document.createTextNode(" "), a);
      }
    }
    methodList.appendChild(li);
  });
  function applyFilters() {
    const t = trackSelect.value, p = poisonSelect.value, d = defenceSelect.value;
    let visible = 0;
    sections.forEach((s) => {
      let shown = 0;
      Array.from(s.body.rows).forEach((tr) => {
        const ok = (!p || tr.dataset.poison === p) && (!d || tr.dataset.defence === d);
        tr.hidden = !ok;
        if (ok) shown += 1;
      });
      if (s.matrix) {
        Array.from(s.matrix.tBodies[0].rows).forEach((tr) => { tr.hidden = Boolean(p) && tr.dataset.poison !== p; });
        s.matrix.querySelectorAll("[data-defence]").forEach((c) => { c.hidden = Boolean(d) && c.dataset.defence !== d; });
      }
      s.section.hidden = (t && s.section.dataset.track !== t) || shown === 0;
      if (!s.section.hidden) visible += shown;
    });
    document.getElementById("empty").hidden = visible > 0;
  }
  const submissions = document.getElementById("submissions");
  (data.submissions || []).forEach((st) => {
    const tr = document.createElement("tr");
    tr.className = "status-" + st.status;
    tr.dataset.submission = st.id;
    [st.id, st.track || "?", st.status].forEach((v) => tr.appendChild(element("td", v)));
    const reason = element("td", st.reason || "");
    if (st.log_tail) {
      const details = document.createElement("details");
      details.appendChild(element("summary", "log"));
      details.appendChild(element("pre", st.log_tail));
      reason.appendChild(details);
    }
    tr.appendChild(reason);
    tr.appendChild(element("td", String(st.entries.length)));
    submissions.querySelector("tbody").appendChild(tr);
    submissions.hidden = false;
  });
  [trackSelect, poisonSelect, defenceSelect].forEach((s) => s.addEventListener("change", applyFilters));
  sections.forEach((s) => s.render());
})();
</script>
</body>
</html>
"""


def page_data(
    tracks: list[TrackBoard], submissions: list[SubmissionStatus] | None = None
) -> dict[str, Any]:
    n = sum(len(r.entries) for t in tracks for r in t.rows)
    out_tracks = []
    for t in tracks:
        rows = []
        for i, r in enumerate(t.rows):
            rows.append(r.as_json() | {"order": i})
        matrix = []
        for poison in t.poisons:
            cells = [t.cell(poison, d) for d in t.defences]
            matrix.append(
                {
                    "poison": poison,
                    "reference": any(c is not None and c.reference for c in cells),
                    "cells": [c.as_json() if c is not None else None for c in cells],
                }
            )
        out_tracks.append(
            {
                "id": t.id,
                "title": t.title,
                "summary": t.summary,
                "detail": t.detail,
                "rows": rows,
                "defences": t.defences,
                "matrix": matrix,
                "not_counted": [d.text() for d in t.duplicates],
            }
        )
    return {
        "about": (
            f"{n} entries in {len(tracks)} track(s), written by harness {harness_version()}. In each track, "
            "poisons are ranked by the Unlearnable Distance within each defence (lower is closer to a true "
            "unlearnable example); rows of clean data are references, not ranked; tracks are never ranked "
            "together. Mean \u00b1 standard deviation over seeds; click a header to sort, hover a poison or "
            "defence for its parameters, click it for its paper."
        ),
        "legend": [list(item) for item in LEGEND],
        "tracks": out_tracks,
        "methods": [m.as_json() for m in methods(tracks)],
        "submissions": [st.model_dump(mode="json") for st in submissions or []],
    }


def render_html(tracks: list[TrackBoard], submissions: list[SubmissionStatus] | None = None) -> str:
    """The page, data inlined; `</` is escaped so no entry text can close the script block."""
    data = json.dumps(page_data(tracks, submissions), sort_keys=True, allow_nan=False).replace(
        "</", "<\\/"
    )
    return PAGE.replace("__DATA__", data)


def read_statuses(out: Path) -> list[SubmissionStatus]:
    """The scoring queue's record of submissions in a leaderboard folder (none if it has none)."""
    path = Path(out) / STATUS_FILE
    if not path.is_file():
        return []
    try:
        return [
            SubmissionStatus.model_validate(s) for s in json.loads(path.read_text(encoding="utf-8"))
        ]
    except (ValueError, TypeError) as exc:
        raise LeaderboardError(f"{path}: not a list of submission statuses ({exc})") from None


def submissions_markdown(statuses: list[SubmissionStatus]) -> str:
    lines = [
        "## Submissions",
        "",
        "Scored by `harness leaderboard score` on the official tracks.",
        "",
        "| submission | track | status | reason | entries |",
        "|---|---|---|---|---|",
    ]
    for st in sorted(statuses, key=lambda s: s.id):
        lines.append(
            _md_row([st.id, st.track or "?", st.status, st.reason or "", str(len(st.entries))])
        )
    return "\n".join(lines) + "\n"


def write(entries: list[Entry], out: Path, *, warn: Warn | None = None) -> list[Path]:
    """`leaderboard.md`, `index.html` and `entries.json` (every entry, for machines) into `out`.

    `entries.json` holds every entry given, the not-counted repeats too: it is the record of
    what was submitted, and each entry names its run. Submission statuses recorded in the folder
    by the scoring queue (`submissions.json`) are shown on both pages.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = build(entries, warn=warn)
    statuses = read_statuses(out)
    paths = [out / MARKDOWN_FILE, out / HTML_FILE, out / DATA_FILE]
    text = markdown(tracks)
    if statuses:
        text += "\n" + submissions_markdown(statuses)
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], render_html(tracks, statuses))
    ordered = sorted(entries, key=lambda e: (e.track.id, e.run, e.entry_id))
    atomic_write_text(
        paths[2], json.dumps([e.model_dump(mode="json") for e in ordered], indent=1) + "\n"
    )
    return paths
