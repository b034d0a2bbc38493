"""`harness report RUN`: a run's figures as PNG files and one self-contained HTML page.

Everything but the parameter distribution comes from `run.h5` alone: SAL, metrics, β (recomputed
with `harness.scoring`, exactly as the entries are) and the entries' table (recomputed with
`harness.entries.compute_entries`, so the page never shows numbers the file does not back).
Final parameters for Figure 9 come from the arms' checkpoints, or failing those from the last
snapshot of a saved trajectory. Loss landscapes need the model and data, so they are drawn by
`harness landscape` (or `harness report --landscape`) and picked up from `RUN/figures/`.

The page embeds every figure as a base64 data URI, so it can be mailed, archived or opened
from any folder without the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from harness import figures, landscape
from harness.atomic import atomic_write
from harness.entries import Entry, compute_entries
from harness.errors import HarnessError, RunStateError
from harness.names import CLEAN, UNDEFENDED, clean_arm_id
from harness.pluginmanager import Components
from harness.runfolder import FIGURES_DIR, RunFolder
from harness.scoring import (
    epoch_threshold,
    learnable_counts,
    learnable_proportion,
    learnable_threshold,
    task_similarity,
)
from harness.store import ArmData
from harness.table import rows as table_rows

DPI = 110


@dataclass
class RunData:
    """What the figures of one run are drawn from, read once from its run file."""

    run_dir: Path
    root: dict[str, Any]
    spec: dict[str, Any]
    arms: list[ArmData]  # arms with at least one epoch, in the results table's order
    betas: dict[int, tuple[float, np.ndarray]]  # seed → (β, β_t per epoch) of its clean arm
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)

    @property
    def layer_names(self) -> list[str]:
        return self.arms[0].layer_names

    @property
    def metric_name(self) -> str:
        return self.arms[0].config.task.metric_name


def _order(arm: ArmData) -> tuple:
    cfg = arm.config
    return (
        cfg.seed,
        cfg.defence_key != UNDEFENDED,
        cfg.defence_key,
        cfg.poison_key != CLEAN,
        arm.arm_id,
    )


def label(arm: ArmData, multi_seed: bool) -> str:
    """`poison` or `poison + defence`, with the seed when the run has several."""
    cfg = arm.config
    text = (
        cfg.poison_key if cfg.defence_key == UNDEFENDED else f"{cfg.poison_key} + {cfg.defence_key}"
    )
    return f"{text} (seed {cfg.seed})" if multi_seed else text


def load_run(run_dir: Path) -> RunData:
    run_dir = Path(run_dir)
    store = RunFolder(run_dir).readable_store()
    root = store.root_attrs()
    arms = sorted((store.read_arm(a) for a in store.arm_ids()), key=_order)
    notes = [
        f"{a.arm_id} stopped at epoch {a.diverged[0]}, where training diverged ({a.diverged[1]})"
        for a in arms
        if a.diverged is not None
    ]
    arms = [a for a in arms if a.sal.shape[0] > 0]
    for arm in list(arms):  # a run from before diverged arms were stopped: leave them out
        bad = arm.first_non_finite()
        if bad is not None:
            arms.remove(arm)
            notes.append(f"{arm.arm_id} diverged at epoch {bad[0]} ({'; '.join(bad[1])}): left out")
    if not arms:
        why = "; ".join(notes) or "no arm has a complete epoch yet"
        raise RunStateError(f"{store.path}: nothing to draw: {why}")
    betas = {}
    for seed in sorted({a.config.seed for a in arms}):
        clean = next((a for a in arms if a.arm_id == clean_arm_id(seed)), None)
        if clean is None:
            notes.append(
                f"seed {seed}: no clean arm yet, so no β: its arms are left out of the β figures"
            )
            continue
        beta, _ = learnable_threshold(clean.sal)
        betas[seed] = (beta, np.array([epoch_threshold(row) for row in clean.sal]))
        if not clean.complete:
            notes.append(
                f"seed {seed}: the clean arm is not complete; β is from its first "
                f"{clean.sal.shape[0]} epochs"
            )
    incomplete = [a.arm_id for a in arms if not a.complete]
    if incomplete:
        notes.append("not complete (drawn as far as they went): " + ", ".join(incomplete))
    try:
        entries = compute_entries(run_dir)
    except HarnessError as exc:
        entries = []
        notes.append(f"no entries: {exc}")
    return RunData(run_dir, root, json.loads(root["spec"]), arms, betas, entries, notes)


def final_parameters(run: RunData) -> tuple[list[tuple[str, np.ndarray]], str] | None:
    """Each arm's parameters after its last epoch, for the distribution figure.

    Checkpoints first (the scored layers' weights, as trained); otherwise the last trajectory
    snapshot (every trainable parameter). One source for all arms, so the curves compare.
    """
    import torch

    multi = len(run.betas) > 1
    series = []
    for arm in run.arms:
        path = RunFolder(run.run_dir).checkpoint(arm.arm_id)
        if not path.exists():
            break
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        except Exception:  # an unreadable or foreign checkpoint: fall back to the trajectory
            break
        weights = [
            state[name].detach().float().reshape(-1) for name in arm.layer_names if name in state
        ]
        series.append((label(arm, multi), torch.cat(weights).numpy()))
    else:
        return series, "weights of the scored layers after the last epoch"
    store = RunFolder(run.run_dir).store()
    series = []
    for arm in run.arms:
        traced = store.read_trajectory(arm.arm_id)
        if traced is not None and len(traced[0]):
            series.append((label(arm, multi), traced[1][-1]))
    if series:
        return series, "last trajectory snapshot of the traced arms"
    return None


def multitask_figures(run: RunData) -> dict[str, Figure]:
    """The multi-task views (paper Figure 4) for arms that recorded per-task SAL.

    4a: the cosine similarity between the tasks' SAL vectors over the shared backbone; 4b: the
    share of learnable backbone layers per task, each against the β of its own clean SAL; and
    every task's test metric, which the single-metric curves cannot show.
    """
    arms = [a for a in run.arms if a.task_sal]
    if not arms:
        return {}
    multi = len({a.config.seed for a in run.arms}) > 1
    out: dict[str, Figure] = {}
    out["task_similarity"] = figures.task_similarity(
        [(label(a, multi), list(a.task_sal), task_similarity(a.task_sal)) for a in arms]
    )
    cleans = {a.config.seed: a for a in arms if a.arm_id == clean_arm_id(a.config.seed)}
    scored = [a for a in arms if a.config.seed in cleans]
    if scored:
        betas = {
            seed: {t: learnable_threshold(c.task_sal[t])[0] for t in c.task_sal}
            for seed, c in cleans.items()
        }
        out["task_learnable_proportion"] = figures.task_learnable_proportion(
            [
                (
                    label(a, multi),
                    {
                        t: learnable_proportion(v, betas[a.config.seed][t])
                        for t, v in a.task_sal.items()
                    },
                )
                for a in scored
            ]
        )
    tasks = {t.label: t.metric_name for t in arms[0].config.tasks or []}
    out["task_metrics"] = figures.task_metrics(
        {
            task: (metric, [(label(a, multi), a.metrics[f"test_metric.{task}"]) for a in arms])
            for task, metric in tasks.items()
        },
        styles=styles(arms, multi),
    )
    return out


def arm_key(arm: ArmData, multi_seed: bool) -> figures.ArmKey:
    """How the figures tell this arm apart: its experiment (poison and defence), seed, and whether
    it is the undefended clean arm, the only one drawn in black."""
    cfg = arm.config
    return figures.ArmKey(
        label(arm, multi_seed),
        f"{cfg.poison_key}__{cfg.defence_key}",
        cfg.seed,
        arm.arm_id == clean_arm_id(cfg.seed),
    )


def styles(arms: list[ArmData], multi_seed: bool) -> dict[str, figures.LineStyle]:
    return figures.arm_styles([arm_key(a, multi_seed) for a in arms])


def build_figures(run: RunData) -> dict[str, Figure]:
    """Every figure the run's data allow, by file stem, in the order the page shows them.

    The SAL heat map is drawn on the paper's linear colour scale, and a second time on a log
    scale (`sal_heatmap_log`) when the positive SAL values span a decade or more, which is when
    the linear scale renders the small values (early epochs, layers that barely move) as one
    white.
    """
    multi = len({a.config.seed for a in run.arms}) > 1
    look = styles(run.arms, multi)
    out: dict[str, Figure] = {}
    panels = [(label(a, multi), a.sal) for a in run.arms]
    out["sal_heatmap"] = figures.sal_heatmap(panels, run.layer_names)
    if figures.sal_heatmap_log_useful([sal for _, sal in panels]):
        out["sal_heatmap_log"] = figures.sal_heatmap(panels, run.layer_names, log=True)
    scored = [a for a in run.arms if a.config.seed in run.betas]
    if scored:
        out["learnable_layers"] = figures.learnable_layers(
            [(label(a, multi), a.sal, run.betas[a.config.seed][0]) for a in scored]
        )
        out["learnable_proportion"] = figures.learnable_proportion(
            [
                (label(a, multi), learnable_counts(a.sal, run.betas[a.config.seed][0]))
                for a in scored
            ],
            len(run.layer_names),
            styles=look,
        )
        cleans = {a.config.seed: a for a in run.arms if a.arm_id == clean_arm_id(a.config.seed)}
        out["beta_split"] = figures.beta_split(
            [
                (label(cleans[s], multi), cleans[s].sal, bt, b)
                for s, (b, bt) in sorted(run.betas.items())
            ]
        )
    out["training_curves"] = figures.training_curves(
        [(label(a, multi), a.metrics["test_metric"], a.metrics["train_loss"]) for a in run.arms],
        run.metric_name,
        styles=look,
    )
    params = final_parameters(run)
    if params is not None:
        cleans = {
            a.config.seed: label(a, multi)
            for a in run.arms
            if a.arm_id == clean_arm_id(a.config.seed)
        }
        reference = {
            label(a, multi): cleans[a.config.seed] for a in run.arms if a.config.seed in cleans
        }
        out["parameter_cdf"] = figures.parameter_cdf(*params, styles=look, reference=reference)
    else:
        run.notes.append("no checkpoints and no trajectory: no parameter distribution")
    out.update(multitask_figures(run))
    return out


CAPTIONS: dict[str, str] = {
    "sal_heatmap": "SAL of every scored layer (rows) at every epoch (columns), one panel per arm, one "
    "colour scale for all (paper Figures 3 and 11).",
    "sal_heatmap_log": "The same SAL on a logarithmic colour scale, drawn because the values span a decade or "
    "more: small values that look alike on the linear scale differ here (grey: SAL 0).",
    "learnable_layers": "Each layer's SAL per epoch against the learnable threshold β (dashed) from the clean "
    "arm of the same seed; the blue step line counts the learnable layers λ(t) "
    "(paper Figure 5).",
    "learnable_proportion": "Proportion of learnable layers per epoch (paper Figure 13); #LP is its mean "
    "times the number of layers, UD the ratio of an arm's #LP to the clean arm's.",
    "beta_split": "2-means of the clean arm's SAL values per epoch: β_t is the mean of the two centres, "
    "β their mean over epochs (paper Figure 12, Equation 4).",
    "training_curves": "Test metric and training loss per epoch. Each arm has its own colour, marker and line "
    "style; black is the undefended clean arm, and the seeds of one arm share its colour.",
    "parameter_cdf": "Cumulative distribution of parameter values and magnitudes (paper Figure 9); below, each "
    "arm's CDF minus that of the clean arm of its seed, where curves too close to tell apart "
    "above differ visibly.",
    "task_similarity": "Cosine similarity between the tasks' SAL vectors over the shared backbone's layers, "
    "mean over epochs, per arm (paper Figure 4a).",
    "task_learnable_proportion": "Share of the backbone's layers learnable for each task per epoch, each task "
    "against the β of its own clean SAL (paper Figure 4b).",
    "task_metrics": "Each task's test metric per epoch (multi-task arms).",
}


def _png(fig: Figure, path: Path) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data), root=path.parent.parent)  # RUN/figures/x.png
    return data


def _entries_table(entries: list[Entry]) -> str:
    if not entries:
        return "<p>No complete arm yet.</p>"
    header, body = table_rows(entries)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
    )
    betas = sorted({(e.seed, e.results.beta) for e in entries})
    beta_text = "; ".join(f"seed {s}: β = {b:.6g}" for s, b in betas)
    return (
        f'<table class="entries"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f"<p>Learnable threshold from the clean arm: {html.escape(beta_text)}.</p>"
    )


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.notes { color: #8a5a00; }
"""


def render_html(run: RunData, pngs: dict[str, bytes], captions: dict[str, str]) -> str:
    root = run.root
    name = html.escape(str(root.get("spec_name", run.run_dir.name)))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>harness report: {name}</title>",
        '<link rel="icon" href="data:,">',
        f"<style>{PAGE_STYLE}</style></head><body>",
        f"<h1>Run {name}</h1>",
        "<p>"
        + " · ".join(
            html.escape(f"{k}: {root[k]}")
            for k in ("spec_hash", "harness_version", "git_revision", "created")
            if root.get(k)
        )
        + "</p>",
    ]
    if run.notes:
        parts.append(
            '<ul class="notes">'
            + "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
            + "</ul>"
        )
    parts += ["<h2>Entries</h2>", _entries_table(run.entries), "<h2>Figures</h2>"]
    for stem, data in pngs.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure id="{html.escape(stem)}"><img alt="{html.escape(stem)}" '
            f'src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(captions.get(stem, stem))}</figcaption></figure>"
        )
    parts += [
        "<h2>Resolved spec</h2>",
        f'<pre id="spec">{html.escape(json.dumps(run.spec, indent=2, sort_keys=False))}</pre>',
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def build_report(run_dir: Path) -> tuple[Path, list[Path]]:
    """Write `RUN/figures/*.png` and `RUN/report.html`; returns (page, figure files)."""
    RunFolder(run_dir).refuse_links()
    run = load_run(Path(run_dir))
    out_dir = run.run_dir / FIGURES_DIR
    pngs: dict[str, bytes] = {}
    paths = []
    for stem, fig in build_figures(run).items():
        path = out_dir / f"{stem}.png"
        pngs[stem] = _png(fig, path)
        paths.append(path)
    captions = dict(CAPTIONS)
    for path in sorted(out_dir.glob("landscape_*.png")):
        pngs[path.stem] = path.read_bytes()
        paths.append(path)
        captions[path.stem] = (
            "Loss landscape on two principal components of the saved parameter trajectory, "
            "with the trajectory projected on it, arms side by side on one colour scale "
            "(paper Figures 1 and 10; drawn by `harness landscape`)."
        )
    if not any(p.stem.startswith("landscape_") for p in paths) and _has_trajectory(run):
        run.notes.append(
            "the run saved parameter trajectories: `harness landscape RUN` draws the loss "
            "landscape, and the next report includes it"
        )
    page = RunFolder(run.run_dir).report_file
    RunFolder(run.run_dir).write_text(page, render_html(run, pngs, captions))
    return page, paths


def _has_trajectory(run: RunData) -> bool:
    store = RunFolder(run.run_dir).store()
    return any(store.trajectory_shape(a.arm_id) for a in run.arms)


def draw_landscape(
    run_dir: Path,
    components: Components,
    arms: list[str] | None = None,
    settings: landscape.LandscapeSettings | None = None,
    log=print,
) -> Path:
    """Draw `RUN/figures/landscape_pc<i>-<j>.png` from `harness.landscape`'s panels; returns its path."""
    settings = settings or landscape.LandscapeSettings()
    panels = landscape.compute_panels(run_dir, components, arms, settings, log)
    c1, c2 = settings.components
    path = RunFolder(run_dir).figures_dir / f"landscape_pc{c1}-{c2}.png"
    _png(figures.loss_landscape(panels), path)
    return path
