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
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
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


class LeaderboardError(HarnessError):
    """Sources that hold no entries, or an entry file that is not an entry."""


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


def gather(sources: Iterable[Path]) -> list[Entry]:
    """Every entry under the sources (run folders, leaderboard folders, folders of entry files).

    The same entry reached twice (a run and its submitted copy) counts once.
    """
    seen: dict[tuple[str, str, str, str], Entry] = {}
    for source in sources:
        for path in _entry_files(Path(source)):
            try:
                entry = Entry.model_validate_json(path.read_text(encoding="utf-8"))
            except (ValidationError, UnicodeDecodeError, OSError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise LeaderboardError(f"{path}: not a valid entry: {first}") from None
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
class TrackBoard:
    """The leaderboard of one track: its rows, ranked.

    (`harness.entries.Track` is the track as an entry records it; this is its page.)
    """

    id: str
    summary: str
    detail: dict[str, Any]
    rows: list[Row]


def build(entries: list[Entry]) -> list[TrackBoard]:
    """Tracks (most entries first, then by id), each with its rows ranked by mean UD.

    Rows without a UD (the clean arm had no learnable layer) come last, unranked.
    """
    tracks: dict[str, TrackBoard] = {}
    groups: dict[tuple[str, str, str], Row] = {}
    for e in sorted(entries, key=lambda e: (e.track.id, e.run, e.arm_id)):
        tid = e.track.id
        if tid not in tracks:
            tracks[tid] = TrackBoard(
                tid, track_summary(e), e.track.model_dump(mode="json", exclude={"id"}), []
            )
        key = (tid, _component_key(e.poison), e.crafting_task or "", _component_key(e.defence))
        if key not in groups:
            poison = _component_label(e.poison)
            if e.crafting_task is not None and e.crafting_task != e.evaluated_task:
                poison += f" (crafted on {e.crafting_task})"  # cross-task: never merged with same-task rows
            groups[key] = Row(
                tid,
                poison,
                _describe(e.poison),
                e.defence.label or e.defence.name,
                _describe(e.defence),
            )
            tracks[tid].rows.append(groups[key])
        groups[key].entries.append(e)
    for track in tracks.values():
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
#empty { color: #8a5a00; }
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
            }
            for t in tracks
        ],
    }


def render_html(tracks: list[TrackBoard]) -> str:
    """The page, data inlined; `</` is escaped so no entry text can close the script block."""
    data = json.dumps(page_data(tracks), sort_keys=True, allow_nan=False).replace("</", "<\\/")
    return PAGE.replace("__DATA__", data)


def write(entries: list[Entry], out: Path) -> list[Path]:
    """`leaderboard.md`, `index.html` and `entries.json` (every entry, for machines) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = build(entries)
    paths = [out / MARKDOWN_FILE, out / HTML_FILE, out / DATA_FILE]
    atomic_write_text(paths[0], markdown(tracks))
    atomic_write_text(paths[1], render_html(tracks))
    ordered = sorted(entries, key=lambda e: (e.track.id, e.run, e.arm_id))
    atomic_write_text(
        paths[2], json.dumps([e.model_dump(mode="json") for e in ordered], indent=1) + "\n"
    )
    return paths
