"""`harness leaderboard`: entries gathered into a leaderboard, one ranking per track.

A track is everything that makes two UD values comparable (data set, task, backbone, recipe,
SAL settings; `Entry.track.id` hashes them), so entries of different tracks are never ranked
together. Within a track, the arms of one experiment (same poison and defence, with the same
parameters and plugin versions) are aggregated over seeds, and ranked by mean UD, lowest
first: fewer learnable layers than clean training is closer to a true unlearnable example.

Two outputs: `leaderboard.md` for the repository, and a static `index.html` with the data
inlined as a JSON block and plain JavaScript for sorting and filtering, so the page works opened
straight from the file system, with no server and nothing fetched. Entries come from third
parties: the page writes every value as text (`textContent`), never as markup.

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
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.atomic import atomic_write_text
from harness.entries import ENTRIES_DIR, RUN_FILE, ComponentInfo, Entry
from harness.errors import HarnessError
from harness.sysinfo import harness_version

MARKDOWN_FILE = "leaderboard.md"
HTML_FILE = "index.html"
DATA_FILE = "entries.json"


Warn = Callable[[str], None]


class LeaderboardError(HarnessError):
    """Sources that hold no entries at all."""


def warn_stderr(message: str) -> None:
    """The default for `warn`: one line on stderr, as the CLI prints its other warnings."""
    print(f"warning: {message}", file=sys.stderr)


# --- gathering ---------------------------------------------------------------------------------


def _entry_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise LeaderboardError(f"{source}: no such file or folder")
    if (source / RUN_FILE).exists() or (
        source / ENTRIES_DIR
    ).is_dir():  # a run or a leaderboard folder
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
    """One line naming a track: data, task, backbone, recipe, SAL settings."""
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
        f"SAL {s.get('estimator')} ε {s.get('epsilon')}, {s.get('iterations')} iterations, "
        f"probe {s.get('probe_size')}, base {s.get('base_loss')}"
    )
    task = t.task.name
    if t.tasks:
        task = f"{t.task.label or t.task.name} of multi-task [{', '.join(x.get('label', x['name']) for x in t.tasks)}]"
    return f"{data} · {task} · {backbone} · {recipe} · {sal}"


@dataclass
class Row:
    """One experiment of a track: a poison under a defence, over every seed submitted."""

    track: str
    poison: str
    poison_detail: str
    defence: str
    defence_detail: str
    entries: list[Entry] = field(default_factory=list)
    rank: int | None = None

    def _values(self, get) -> list[float]:
        return [v for v in (get(e) for e in self.entries) if v is not None]

    @property
    def ud(self) -> tuple[float | None, float | None]:
        return _stats(self._values(lambda e: e.results.ud))

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
        lp, lp_sd = self.lp
        metric, metric_sd = self.metric
        return {
            "track": self.track,
            "rank": self.rank,
            "poison": self.poison,
            "poison_detail": self.poison_detail,
            "defence": self.defence,
            "defence_detail": self.defence_detail,
            "ud": ud,
            "ud_sd": ud_sd,
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
    """The leaderboard of one track: its rows, ranked, and what was not counted.

    (`harness.entries.Track` is the track as an entry records it; this is its page.)
    """

    id: str
    summary: str
    detail: dict[str, Any]
    rows: list[Row]
    duplicates: list[Duplicate] = field(default_factory=list)


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


def build(entries: list[Entry], *, warn: Warn | None = None) -> list[TrackBoard]:
    """Tracks (most entries first, then by id), each with its rows ranked by mean UD.

    Rows without a UD (the clean arm had no learnable layer) come last, unranked. Entries
    repeating a counted (track, experiment, seed) are kept aside as `TrackBoard.duplicates`
    and reported through `warn`.
    """
    warn = warn or warn_stderr
    tracks: dict[str, TrackBoard] = {}
    groups: dict[tuple[str, tuple[str, str, str]], Row] = {}
    counted: dict[tuple[str, tuple[str, str, str], int], Entry] = {}
    poison_of: dict[int, ComponentInfo | None] = {}
    defence_of: dict[int, ComponentInfo | None] = {}
    for e in sorted(entries, key=lambda e: (e.track.id, e.run, e.entry_id, e.hdf5.sha256)):
        tid = e.track.id
        if tid not in tracks:
            tracks[tid] = TrackBoard(
                tid, track_summary(e), e.track.model_dump(mode="json", exclude={"id"}), []
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
            )
            groups[(tid, key)] = row
            poison_of[id(row)], defence_of[id(row)] = e.poison, e.defence
            tracks[tid].rows.append(row)
        row = groups[(tid, key)]
        first = counted.setdefault((tid, key, e.seed), e)
        if first is not e:
            tracks[tid].duplicates.append(Duplicate(e, first, row.poison, row.defence))
            continue
        row.entries.append(e)
    for track in tracks.values():
        _name_rows(track.rows, "poison", poison_of)
        _name_rows(track.rows, "defence", defence_of)
        for d in track.duplicates:  # the names the rows ended with
            row = groups[(track.id, _experiment_key(d.entry))]
            d.poison, d.defence = row.poison, row.defence
            warn(f"not counted: {d.text()}, in track {track.id}")
        track.rows.sort(
            key=lambda r: (
                r.ud[0] is None,
                r.ud[0] if r.ud[0] is not None else 0.0,
                r.poison,
                r.defence,
            )
        )
        for i, row in enumerate(track.rows, start=1):
            row.rank = i if row.ud[0] is not None else None
    return sorted(tracks.values(), key=lambda t: (-sum(len(r.entries) for r in t.rows), t.id))


# --- Markdown ----------------------------------------------------------------------------------


def _pm(mean: float | None, sd: float | None, digits: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(tracks: list[TrackBoard]) -> str:
    n = sum(len(r.entries) for t in tracks for r in t.rows)
    lines = [
        "# Leaderboard",
        "",
        f"{n} entries in {len(tracks)} track(s), written by harness {harness_version()}. Ranked by the "
        "Unlearnable Distance (UD: learnable layers of the poisoned model / of the clean model; lower is "
        "closer to a true unlearnable example). Entries of different tracks are never ranked together. "
        "Mean ± standard deviation over seeds.",
        "",
    ]
    for t in tracks:
        metric = t.rows[0].metric_name if t.rows else "metric"
        lines += [
            f"## Track `{t.id}`",
            "",
            t.summary,
            "",
            f"| rank | poison | defence | UD | #LP | test {metric} | seeds | harness | plugins |",
            "|---:|---|---|---:|---:|---:|---|---|---|",
        ]
        for r in t.rows:
            lines.append(
                "| "
                + " | ".join(
                    _md_cell(c)
                    for c in (
                        str(r.rank) if r.rank is not None else "—",
                        r.poison,
                        r.defence,
                        _pm(*r.ud),
                        _pm(*r.lp, 2),
                        _pm(*r.metric, 4),
                        f"{len(r.entries)}: " + ", ".join(map(str, r.seeds)),
                        ", ".join(r.harness_versions),
                        "; ".join(r.plugin_versions),
                    )
                )
                + " |"
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
section.track { margin: 2em 0; }
section.track h2 { font-size: 1.1em; margin-bottom: 0.2em; }
.summary { color: #555; font-size: 0.9em; margin: 0 0 0.6em 0; }
table { border-collapse: collapse; font-size: 0.9em; width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f3f3f3; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
#empty, .not-counted { color: #8a5a00; }
</style>
</head>
<body>
<h1>Unlearnable examples leaderboard</h1>
<p id="about"></p>
<div class="filters">
<label>Track <select id="filter-track"><option value="">all tracks</option></select></label>
<label>Poison <select id="filter-poison"><option value="">all poisons</option></select></label>
<label>Defence <select id="filter-defence"><option value="">all defences</option></select></label>
</div>
<p id="empty" hidden>No entry matches these filters.</p>
<div id="tracks"></div>
<script type="application/json" id="leaderboard-data">__DATA__</script>
<script>
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("leaderboard-data").textContent);
  const columns = [
    {key: "rank", title: "rank", num: true},
    {key: "poison", title: "poison"},
    {key: "defence", title: "defence"},
    {key: "ud", title: "UD", num: true, sd: "ud_sd", digits: 3},
    {key: "lp", title: "#LP", num: true, sd: "lp_sd", digits: 2},
    {key: "metric", title: "test metric", num: true, sd: "metric_sd", digits: 4},
    {key: "n", title: "seeds", num: true},
    {key: "harness", title: "harness"},
    {key: "plugins", title: "plugins"}
  ];
  function show(row, col) {
    const v = row[col.key];
    if (col.key === "n") return v + ": " + row.seeds.join(", ");
    if (Array.isArray(v)) return v.join("; ");
    if (v === null || v === undefined) return "\\u2014";
    if (col.digits !== undefined) {
      const sd = row[col.sd];
      return v.toFixed(col.digits) + (sd === null || sd === undefined ? "" : " \\u00b1 " + sd.toFixed(col.digits));
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
  function option(select, value, text) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = text;
    select.appendChild(o);
  }
  const about = document.getElementById("about");
  about.textContent = data.about;
  const trackSelect = document.getElementById("filter-track");
  const poisonSelect = document.getElementById("filter-poison");
  const defenceSelect = document.getElementById("filter-defence");
  const uniq = (key) => Array.from(new Set(data.tracks.flatMap((t) => t.rows.map((r) => r[key])))).sort();
  data.tracks.forEach((t) => option(trackSelect, t.id, t.id + ": " + t.summary));
  uniq("poison").forEach((p) => option(poisonSelect, p, p));
  uniq("defence").forEach((d) => option(defenceSelect, d, d));
  const container = document.getElementById("tracks");
  const sections = data.tracks.map((track) => {
    const section = document.createElement("section");
    section.className = "track";
    section.dataset.track = track.id;
    const h = document.createElement("h2");
    h.textContent = "Track " + track.id;
    const summary = document.createElement("p");
    summary.className = "summary";
    summary.textContent = track.summary;
    const table = document.createElement("table");
    const headRow = table.createTHead().insertRow();
    const body = table.createTBody();
    const metricName = track.rows.length ? track.rows[0].metric_name : "metric";
    let sortKey = "rank", sortDir = 1;
    function render() {
      const col = columns.find((c) => c.key === sortKey);
      const rows = track.rows.slice().sort((a, b) => compare(a, b, col, sortDir) || compare(a, b, columns[0], 1));
      body.replaceChildren();
      rows.forEach((row) => {
        const tr = body.insertRow();
        tr.dataset.poison = row.poison;
        tr.dataset.defence = row.defence;
        columns.forEach((c) => {
          const td = tr.insertCell();
          td.textContent = show(row, c);
          if (c.num) td.className = "num";
          if (c.key === "poison") td.title = row.poison_detail;
          if (c.key === "defence") td.title = row.defence_detail;
        });
      });
      Array.from(headRow.cells).forEach((th) => {
        th.setAttribute("aria-sort", th.dataset.key === sortKey ? (sortDir > 0 ? "ascending" : "descending") : "none");
      });
      applyFilters();
    }
    columns.forEach((c) => {
      const th = document.createElement("th");
      th.dataset.key = c.key;
      th.textContent = c.key === "metric" ? "test " + metricName : c.title;
      th.addEventListener("click", () => {
        sortDir = sortKey === c.key ? -sortDir : 1;
        sortKey = c.key;
        render();
      });
      headRow.appendChild(th);
    });
    section.append(h, summary, table);
    if (track.not_counted.length) {
      const note = document.createElement("p");
      note.className = "not-counted";
      note.textContent = "Not counted (each track, arm and seed counts once): " + track.not_counted.join("; ");
      section.appendChild(note);
    }
    container.appendChild(section);
    return {section: section, body: body, render: render};
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
      s.section.hidden = (t && s.section.dataset.track !== t) || shown === 0;
      if (!s.section.hidden) visible += shown;
    });
    document.getElementById("empty").hidden = visible > 0;
  }
  [trackSelect, poisonSelect, defenceSelect].forEach((s) => s.addEventListener("change", applyFilters));
  sections.forEach((s) => s.render());
})();
</script>
</body>
</html>
"""


def page_data(tracks: list[TrackBoard]) -> dict[str, Any]:
    n = sum(len(r.entries) for t in tracks for r in t.rows)
    return {
        "about": (
            f"{n} entries in {len(tracks)} track(s), written by harness {harness_version()}. Ranked by "
            "the Unlearnable Distance (lower is closer to a true unlearnable example); entries of "
            "different tracks are never ranked together. Mean \u00b1 standard deviation over seeds; "
            "click a header to sort, hover a poison or defence for its parameters."
        ),
        "tracks": [
            {
                "id": t.id,
                "summary": t.summary,
                "detail": t.detail,
                "rows": [r.as_json() for r in t.rows],
                "not_counted": [d.text() for d in t.duplicates],
            }
            for t in tracks
        ],
    }


def render_html(tracks: list[TrackBoard]) -> str:
    """The page, data inlined; `</` is escaped so no entry text can close the script block."""
    data = json.dumps(page_data(tracks), sort_keys=True, allow_nan=False).replace("</", "<\\/")
    return PAGE.replace("__DATA__", data)


def write(entries: list[Entry], out: Path, *, warn: Warn | None = None) -> list[Path]:
    """`leaderboard.md`, `index.html` and `entries.json` (every entry, for machines) into `out`.

    `entries.json` holds every entry given, the not-counted repeats too: it is the record of
    what was submitted, and each entry names its run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = build(entries, warn=warn)
    paths = [out / MARKDOWN_FILE, out / HTML_FILE, out / DATA_FILE]
    atomic_write_text(paths[0], markdown(tracks))
    atomic_write_text(paths[1], render_html(tracks))
    ordered = sorted(entries, key=lambda e: (e.track.id, e.run, e.arm_id))
    atomic_write_text(
        paths[2], json.dumps([e.model_dump(mode="json") for e in ordered], indent=1) + "\n"
    )
    return paths
