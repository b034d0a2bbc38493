"""The paper's figures as pure functions: arrays in, a matplotlib `Figure` out.

Nothing here reads files or touches pyplot's global state: every function builds a
`matplotlib.figure.Figure` directly (rendered with the Agg canvas when saved), so the report can
run headless and in parallel, and tests can inspect panels, axes, image data and colour limits
rather than pixels. Every panel's axes carry the arm they show as their label (`ax.get_label()`).

Figures (numbers are the paper's): the SAL heat map, layers × epochs (3, 11), on a linear or a
logarithmic colour scale; SAL per layer against the learnable threshold β with the learnable-layer
count (5); the proportion of learnable layers per epoch (13); the 2-means split of the clean arm's
SAL (12); test metric and training loss per epoch; the cumulative distribution of parameter values
with its difference from the clean arm (9); the loss landscape over two principal components of
the trajectory (1, 10).

Arms drawn as lines get their look from `arm_styles`: a colour-blind-safe palette, one colour per
experiment (poison and defence), one line style per seed, and black reserved for the undefended
clean arm, so every arm is told apart and nothing repeats silently however many arms a run has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure

SAL_CMAP = "Greens"  # the paper's: darker green, larger SAL
LANDSCAPE_CMAP = "viridis"
CLEAN_COLOUR = (
    "#000000"  # the undefended clean arm only: the reference every other arm is read against
)
# Okabe & Ito's palette (2008) without its black, which is the clean arm's: distinguishable under the
# common colour-vision deficiencies. Yellow is last: it is the faintest on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
# Six markers against seven colours: coprime, so (colour, marker) is unique for 42 experiments.
MARKERS = ("o", "s", "^", "D", "v", "P")
LOG_DECADES = (
    1.0  # `sal_heatmap_log_useful`: a log scale pays off from one decade of positive SAL up
)
LOG_FLOOR = 1e-6  # the log scale never reaches below this fraction of the largest SAL


def short_layer_name(name: str) -> str:
    """`backbone.features.0.weight` → `features.0`: readable tick labels for the layer axis."""
    name = name.removesuffix(".weight")
    return name.removeprefix("backbone.") or "weight"


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def _panels(
    n: int, *, width: float, height: float, max_cols: int = 3, sharey: bool = False
) -> tuple[Figure, list[Axes]]:
    """A figure with `n` panels on a grid; unused cells of the last row are removed."""
    rows, cols = _grid(n, max_cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


# --- how arms look -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmKey:
    """What an arm's look is derived from.

    `experiment` names the poison under its defence (the seeds of one experiment share a colour),
    `seed` picks the line style, and `reference` marks the undefended clean arm, the only one
    drawn in black.
    """

    label: str
    experiment: str
    seed: int = 0
    reference: bool = False


@dataclass(frozen=True)
class LineStyle:
    """Keyword arguments for `Axes.plot`: colour, line style and marker of one arm."""

    colour: str
    linestyle: str | tuple[float, tuple[float, ...]]
    marker: str

    def kwargs(self, *, markers: bool = True) -> dict[str, object]:
        out: dict[str, object] = {"color": self.colour, "linestyle": self.linestyle}
        if self.colour == CLEAN_COLOUR:
            # the reference stays visible where other arms' lines coincide with it
            out["zorder"] = 2.5
        if markers:
            out |= {"marker": self.marker, "markersize": 3.5}
        return out


def _dashes(j: int) -> str | tuple[float, tuple[float, ...]]:
    """The j-th line style: solid, dashed, dotted, dash-dot, then ever longer dash patterns.

    Unbounded on purpose: a run with many seeds still gets a distinct pattern for each.
    """
    named = ("solid", (0, (5.0, 2.0)), (0, (1.0, 1.5)), (0, (6.0, 2.0, 1.0, 2.0)))
    if j < len(named):
        return named[j]
    k = j - len(named) + 1
    return (0, (6.0 + 2.0 * k, 2.0) + (1.0, 2.0) * k)


def arm_styles(arms: Sequence[ArmKey | str]) -> dict[str, LineStyle]:
    """A distinct look for every arm, by label, in a fixed order (the order given).

    Each experiment (first appearance order) gets a palette colour and a marker; its seeds get
    line styles (the first seed seen is solid). The undefended clean arm is black. Past 42
    experiments the (colour, marker) pairs come round again, and then the line styles of that
    round move on, so two arms never share colour, marker and line style. A bare label string
    is an arm of its own, the clean reference when it is exactly "clean".
    """
    keys = [a if isinstance(a, ArmKey) else ArmKey(a, a, 0, a == "clean") for a in arms]
    seeds = sorted({k.seed for k in keys})
    experiments: dict[str, int] = {}
    for k in keys:
        if not k.reference and k.experiment not in experiments:
            experiments[k.experiment] = len(experiments)
    combos = len(PALETTE) * len(MARKERS)
    out: dict[str, LineStyle] = {}
    for k in keys:
        seed_index = seeds.index(k.seed)
        if k.reference:
            out[k.label] = LineStyle(CLEAN_COLOUR, _dashes(seed_index), "o")
            continue
        i = experiments[k.experiment]
        round_ = i // combos
        out[k.label] = LineStyle(
            PALETTE[i % len(PALETTE)],
            _dashes(round_ * len(seeds) + seed_index),
            MARKERS[i % len(MARKERS)],
        )
    return out


def _styles(labels: Sequence[str], styles: Mapping[str, LineStyle] | None) -> dict[str, LineStyle]:
    """The given styles, or (for callers that pass none) one arm per label."""
    if styles is None:
        return arm_styles(labels)
    missing = [label for label in labels if label not in styles]
    if missing:
        raise ValueError(f"no line style for {', '.join(missing)}")
    return dict(styles)


def _legend_outside(fig: Figure, ax: Axes, n: int) -> None:
    """One legend for the figure, beside the panels once there are more arms than fit inside."""
    if n <= 4:
        ax.legend(fontsize=7)
    else:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=7)


# --- SAL ---------------------------------------------------------------------------------------


def sal_log_range(sal: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """(smallest positive, largest) SAL over the arrays, the floor kept within `LOG_FLOOR` of the top.

    None when there is no positive value, so no log scale can be drawn.
    """
    positive = [np.asarray(s, dtype=np.float64) for s in sal]
    positive = [s[np.isfinite(s) & (s > 0)] for s in positive]
    positive = [s for s in positive if s.size]
    if not positive:
        return None
    top = max(float(s.max()) for s in positive)
    low = min(float(s.min()) for s in positive)
    return max(low, top * LOG_FLOOR), top


def sal_heatmap_log_useful(sal: Sequence[np.ndarray]) -> bool:
    """Whether the positive SAL values span at least `LOG_DECADES` decades.

    Below that a linear scale already separates the small values from the large ones, and a
    log-scale copy would add nothing.
    """
    span = sal_log_range(sal)
    return span is not None and span[1] / span[0] >= 10.0**LOG_DECADES


def _sal_cmap() -> Colormap:
    # zero SAL cannot be placed on a log scale: it is drawn grey, apart from every real value
    return colormaps[SAL_CMAP].with_extremes(bad="#bdbdbd")


def sal_heatmap(
    panels: Sequence[tuple[str, np.ndarray]], layer_names: Sequence[str], *, log: bool = False
) -> Figure:
    """SAL of every layer at every epoch, one panel per arm, one colour scale for all (Fig. 3, 11).

    `panels`: (arm label, SAL [epochs, layers]). The image of a panel is SAL transposed (layers
    down, epochs across), so a layer that keeps learning is a dark row.

    `log=True` puts the colour scale on a logarithmic axis from the smallest positive SAL of all
    arms (at least `LOG_FLOOR` of the largest) to the largest. On the paper's linear scale the
    early epochs and the layers that barely move all look white; on the log scale they differ
    by decades. Zero SAL has no place on a log scale and is drawn grey.
    """
    if not panels:
        raise ValueError("no arm to draw")
    vmax = max(float(np.nanmax(s)) if s.size else 0.0 for _, s in panels)
    vmax = vmax if vmax > 0 else 1.0
    norm: Normalize = Normalize(vmin=0.0, vmax=vmax)
    cmap: Colormap | str = SAL_CMAP
    extend = "neither"
    if log:
        span = sal_log_range([s for _, s in panels])
        if span is None:
            raise ValueError("no positive SAL value: a log colour scale has nothing to show")
        norm = LogNorm(vmin=span[0], vmax=span[1])
        cmap = _sal_cmap()
        if any(np.any((s > 0) & (s < span[0])) for _, s in panels):
            extend = "min"  # values under the floor share its colour: the bar says so with an arrow
    n_layers = len(layer_names)
    fig, axes = _panels(len(panels), width=4.2, height=max(2.6, 0.22 * n_layers + 1.4), sharey=True)
    image = None
    for ax, (label, sal) in zip(axes, panels, strict=True):
        epochs = sal.shape[0]
        image = ax.imshow(
            np.asarray(sal, dtype=np.float64).T,
            aspect="auto",
            cmap=cmap,
            norm=norm,
            interpolation="nearest",
            extent=(0.5, epochs + 0.5, n_layers - 0.5, -0.5),
        )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_label(label)
        ax.set_yticks(range(n_layers), [short_layer_name(n) for n in layer_names], fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("layer")
    fig.colorbar(
        image,
        ax=axes,
        label="SAL (log scale; grey: 0)" if log else "SAL",
        shrink=0.9,
        extend=extend,
    )
    scale = " (log colour scale)" if log else ""
    fig.suptitle(f"Sharpness-Aware Learnability per layer and epoch{scale}")
    return fig


def learnable_layers(panels: Sequence[tuple[str, np.ndarray, float]]) -> Figure:
    """Each layer's SAL per epoch against β, and the learnable layers it leaves (Fig. 5).

    `panels`: (arm label, SAL [epochs, layers], β of the arm's seed). Points above the dashed β
    line are learnable; the step line (right axis) counts them per epoch, λ(t).
    """
    if not panels:
        raise ValueError("no arm to draw")
    top = max(float(np.nanmax(s)) for _, s, _ in panels if s.size)
    top = max(top, max(b for _, _, b in panels)) * 1.08 or 1.0
    fig, axes = _panels(len(panels), width=4.2, height=3.2)
    for ax, (label, sal, beta) in zip(axes, panels, strict=True):
        sal = np.asarray(sal, dtype=np.float64)
        epochs = np.arange(1, sal.shape[0] + 1)
        ex = np.repeat(epochs, sal.shape[1])
        values = sal.reshape(-1)
        above = values > beta
        ax.scatter(ex[~above], values[~above], s=12, color="0.6", label="unlearnable layer")
        ax.scatter(ex[above], values[above], s=14, color="tab:green", label="learnable layer")
        ax.axhline(beta, color="tab:red", linestyle="--", linewidth=1.2, label=f"β = {beta:.3g}")
        ax.set_ylim(0, top)
        ax.set_xlabel("epoch")
        ax.set_ylabel("SAL")
        counts = (sal > beta).sum(axis=1)
        ax.set_title(f"{label}: #LP = {counts.mean():.2f}", fontsize=10)
        ax.set_label(label)
        twin = ax.twinx()
        twin.step(
            epochs, counts, where="mid", color="tab:blue", linewidth=1.2, label="learnable layers"
        )
        twin.set_ylim(0, sal.shape[1] + 0.5)
        twin.set_ylabel("learnable layers λ(t)", color="tab:blue")
        twin.set_label(f"{label}:count")
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, names = axes[0].get_legend_handles_labels()
    axes[0].legend(handles, names, fontsize=7, loc="upper right")
    fig.suptitle("Learnable threshold β and the learnable layers per epoch")
    return fig


def learnable_proportion(
    series: Sequence[tuple[str, np.ndarray]],
    n_layers: int,
    *,
    styles: Mapping[str, LineStyle] | None = None,
) -> Figure:
    """The proportion of learnable layers per epoch, every arm on one plot (Fig. 13).

    `series`: (arm label, λ(t) [epochs]). Proportions take few values (multiples of 1/layers),
    so lines overlap often: each arm's colour, marker and line style (`arm_styles`) keep them
    apart.
    """
    look = _styles([label for label, _ in series], styles)
    fig = Figure(figsize=(6.4 if len(series) <= 4 else 8.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for label, counts in series:
        counts = np.asarray(counts, dtype=np.float64)
        ax.plot(
            np.arange(1, len(counts) + 1), counts / n_layers, label=label, **look[label].kwargs()
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learnable layers (fraction)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend_outside(fig, ax, len(series))
    ax.set_title("Proportion of learnable layers")
    return fig


def beta_split(panels: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> Figure:
    """The 2-means split of the clean arm's SAL that sets β (Fig. 12), one row per seed.

    `panels`: (label, clean SAL [epochs, layers], β_t [epochs], β). Left: each epoch's values
    coloured by their 2-means cluster (in one dimension the boundary is β_t, the mean of the two
    centres) with β_t and β; right: the histogram of all values with β.
    """
    fig = Figure(figsize=(9.0, 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (ax, hist), (label, sal, beta_t, beta) in zip(axes, panels, strict=True):
        sal = np.asarray(sal, dtype=np.float64)
        epochs = np.arange(1, sal.shape[0] + 1)
        high = sal > np.asarray(beta_t)[:, None]
        ex = np.broadcast_to(epochs[:, None], sal.shape)
        ax.scatter(ex[~high], sal[~high], s=12, color="0.6", label="low cluster")
        ax.scatter(ex[high], sal[high], s=14, color="tab:green", label="high cluster")
        ax.step(epochs, beta_t, where="mid", color="tab:orange", label="β_t (per epoch)")
        ax.axhline(beta, color="tab:red", linestyle="--", label=f"β = {beta:.3g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("SAL")
        ax.set_title(f"{label}: 2-means per epoch", fontsize=10)
        ax.set_label(label)
        ax.legend(fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        hist.hist(
            sal.reshape(-1), bins=min(40, max(5, sal.size // 2)), color="tab:green", alpha=0.7
        )
        hist.axvline(beta, color="tab:red", linestyle="--", label=f"β = {beta:.3g}")
        hist.set_xlabel("SAL")
        hist.set_ylabel("layers × epochs")
        hist.set_title(f"{label}: all values", fontsize=10)
        hist.set_label(f"{label}:hist")
        hist.legend(fontsize=7)
    fig.suptitle("Learnable threshold β from the clean arm (2-means)")
    return fig


# --- training ----------------------------------------------------------------------------------


def training_curves(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]],
    metric_name: str,
    *,
    styles: Mapping[str, LineStyle] | None = None,
) -> Figure:
    """Test metric and training loss per epoch, one line per arm.

    `series`: (arm label, test metric [epochs], training loss [epochs]).
    """
    look = _styles([label for label, _, _ in series], styles)
    wide = len(series) > 4  # room for the legend beside the panels
    if not any(np.isfinite(np.asarray(metric, dtype=np.float64)).any() for _, metric, _ in series):
        # multi-task arms have no single metric (each task's is in the task_metrics figure)
        fig = Figure(figsize=(7.2 if wide else 5.2, 3.8), layout="constrained")
        loss_ax = fig.add_subplot()
        for label, _, loss in series:
            loss_ax.plot(np.arange(1, len(loss) + 1), loss, label=label, **look[label].kwargs())
        loss_ax.set(
            xlabel="epoch", ylabel="training loss", title="Training loss (sum of the tasks' losses)"
        )
        loss_ax.set_label("train_loss")
        loss_ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_outside(fig, loss_ax, len(series))
        return fig
    fig = Figure(figsize=(12.0 if wide else 10.0, 3.8), layout="constrained")
    metric_ax, loss_ax = fig.subplots(1, 2)
    for label, metric, loss in series:
        kwargs = look[label].kwargs()
        metric_ax.plot(np.arange(1, len(metric) + 1), metric, label=label, **kwargs)
        loss_ax.plot(np.arange(1, len(loss) + 1), loss, label=label, **kwargs)
    metric_ax.set_ylabel(f"test {metric_name}")
    metric_ax.set_title(f"Test {metric_name}")
    metric_ax.set_label("test_metric")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("Training loss")
    loss_ax.set_label("train_loss")
    for ax in (metric_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend_outside(fig, metric_ax, len(series))
    return fig


def _ecdf(sorted_values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The empirical CDF of already sorted values at the points `at` (exact, not interpolated)."""
    return np.searchsorted(sorted_values, at, side="right") / max(1, sorted_values.size)


def _every(points: int, markers: int = 10) -> int:
    """Every how many points a curve of `points` carries a marker, for about `markers` of them."""
    return max(1, (points - 1) // markers)


CDF_SHOWN = (0.005, 0.995)  # the quantile range the CDF panels' x axis shows (the curves hold all)


def parameter_cdf(
    series: Sequence[tuple[str, np.ndarray]],
    source: str,
    quantiles: int = 1001,
    *,
    styles: Mapping[str, LineStyle] | None = None,
    reference: Mapping[str, str] | None = None,
) -> Figure:
    """Cumulative distribution of parameter values and magnitudes, clean against poisoned (Fig. 9).

    `series`: (arm label, flattened parameters). Each curve is drawn from `quantiles` evenly
    spaced quantiles, so a model of millions of weights costs no more than a small one; every
    curve ends at 1. The x axes show the central 99 % of the values (`CDF_SHOWN`): the tails
    would squeeze the bulk, where the curves differ, into a sliver.

    Poisoned and clean CDFs often lie within a line width of each other, so a second row draws
    each arm's difference from its clean arm, F_arm(x) − F_clean(x), computed exactly on the
    union of the curves' points. `reference` maps an arm's label to its clean arm's label (by
    default every arm is compared with the arm labelled "clean", if there is one); the clean arm
    itself is the zero line. Without any pair to compare, the figure has only the CDF row.
    """
    labels = [label for label, _ in series]
    look = _styles(labels, styles)
    if reference is None:
        reference = {label: "clean" for label in labels} if "clean" in labels else {}
    pairs = [
        (label, reference[label])
        for label in labels
        if label in reference and reference[label] != label and reference[label] in labels
    ]
    sorted_values = {}
    for label, values in series:
        flat = np.asarray(values, dtype=np.float64).reshape(-1)
        sorted_values[label] = (np.sort(flat), np.sort(np.abs(flat)))
    q = np.linspace(0.0, 1.0, quantiles)
    wide = len(series) > 4
    fig = Figure(figsize=(12.0 if wide else 10.0, 6.6 if pairs else 3.8), layout="constrained")
    if pairs:
        grid = fig.subplots(2, 2, sharex="col", height_ratios=(3, 2))
        (value_ax, abs_ax), diff_axes = grid[0], list(grid[1])
    else:
        value_ax, abs_ax = fig.subplots(1, 2)
        diff_axes = [None, None]
    for k, (ax, diff_ax, name) in enumerate(
        zip((value_ax, abs_ax), diff_axes, ("value", "magnitude"), strict=True)
    ):
        curves = {label: np.quantile(sorted_values[label][k], q) for label in labels}
        for label in labels:
            # markers at the deciles: a few per curve, enough to tell the arms apart in grey print
            ax.plot(curves[label], q, label=label, **look[label].kwargs(), markevery=_every(q.size))
        lo = min(float(np.quantile(sorted_values[label][k], CDF_SHOWN[0])) for label in labels)
        hi = max(float(np.quantile(sorted_values[label][k], CDF_SHOWN[1])) for label in labels)
        if k == 1:
            lo = 0.0
        if hi > lo:
            pad = 0.03 * (hi - lo)
            ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylabel("cumulative fraction")
        ax.set_ylim(0, 1.01)
        ax.set_label(name)
        if diff_ax is None:
            continue
        at = np.unique(np.concatenate(list(curves.values())))
        diff_ax.axhline(
            0.0, label="clean (reference)", **look[pairs[0][1]].kwargs(markers=False), linewidth=1.0
        )
        for label, ref in pairs:
            diff = _ecdf(sorted_values[label][k], at) - _ecdf(sorted_values[ref][k], at)
            diff_ax.plot(
                at,
                diff,
                label=label,
                linewidth=1.0,
                **look[label].kwargs(),
                markevery=_every(at.size),
            )
        diff_ax.set_ylabel("F(arm) − F(its clean arm)")
        diff_ax.set_title("difference from the clean arm (zero line)", fontsize=9)
        diff_ax.set_label(f"{name}:difference")
    x_labels = ("parameter value (central 99 %)", "|parameter value| (up to the 99.5th percentile)")
    for ax, diff_ax, text in zip((value_ax, abs_ax), diff_axes, x_labels, strict=True):
        (diff_ax or ax).set_xlabel(text)
    _legend_outside(fig, value_ax, len(series))
    fig.suptitle(f"Cumulative distribution of parameters ({source})")
    return fig


# --- loss landscape ----------------------------------------------------------------------------


@dataclass
class LandscapePanel:
    """The loss on a plane of two principal components of one arm's trajectory.

    `loss[j, i]` is the loss at (`xs[i]`, `ys[j]`), coordinates along the components relative to
    the trajectory's mean (sklearn's PCA transform); `path` [S, 2] is the trajectory projected
    onto the same plane, step 0 first.
    """

    label: str
    xs: np.ndarray
    ys: np.ndarray
    loss: np.ndarray
    path: np.ndarray
    components: tuple[int, int]
    explained: tuple[float, float]
    steps: np.ndarray | None = None


def loss_landscape(panels: Sequence[LandscapePanel], levels: int = 16) -> Figure:
    """Loss contours with the optimisation path on top, arms side by side (Fig. 1, 10).

    One colour scale and one set of contour levels for every panel, as the paper does, so a
    flat landscape shows as fewer contour lines rather than being stretched to look steep.
    The scale is logarithmic when the losses span more than two decades.
    """
    if not panels:
        raise ValueError("no arm to draw")
    lo = min(float(np.nanmin(p.loss)) for p in panels)
    hi = max(float(np.nanmax(p.loss)) for p in panels)
    if not hi > lo:
        hi = lo + 1e-6
    if lo > 0 and hi / lo > 100:
        bounds = np.geomspace(lo, hi, levels)
        norm: Normalize = LogNorm(vmin=lo, vmax=hi)
    else:
        bounds = np.linspace(lo, hi, levels)
        norm = Normalize(vmin=lo, vmax=hi)
    fig, axes = _panels(len(panels), width=4.4, height=4.0, max_cols=4)
    filled = None
    for ax, p in zip(axes, panels, strict=True):
        filled = ax.contourf(
            p.xs, p.ys, p.loss, levels=bounds, cmap=LANDSCAPE_CMAP, norm=norm, extend="both"
        )
        ax.contour(p.xs, p.ys, p.loss, levels=bounds, colors="white", linewidths=0.4, alpha=0.6)
        ax.plot(
            p.path[:, 0],
            p.path[:, 1],
            "-o",
            color="tab:red",
            markersize=2.5,
            linewidth=1.2,
            label="trajectory",
        )
        ax.plot(
            *p.path[0],
            marker="s",
            color="white",
            markeredgecolor="black",
            markersize=7,
            linestyle="none",
            label="start",
        )
        ax.plot(
            *p.path[-1],
            marker="*",
            color="gold",
            markeredgecolor="black",
            markersize=12,
            linestyle="none",
            label="end",
        )
        c1, c2 = p.components
        ax.set_xlabel(f"PC{c1} ({p.explained[0]:.1%} of variance)")
        ax.set_ylabel(f"PC{c2} ({p.explained[1]:.1%} of variance)")
        ax.set_title(p.label, fontsize=10)
        ax.set_label(p.label)
    axes[0].legend(fontsize=7, loc="best")
    fig.colorbar(filled, ax=axes, label="training loss", shrink=0.9, format="%.3g")
    c1, c2 = panels[0].components
    fig.suptitle(f"Loss landscape on principal components {c1} and {c2} of the trajectory")
    return fig


# --- multi-task (paper Figure 4) -------------------------------------------------------------


def task_similarity(panels: Sequence[tuple[str, list[str], np.ndarray]]) -> Figure:
    """Cosine similarity of the tasks' per-layer SAL vectors, one panel per arm (Fig. 4a).

    `panels`: (arm label, task labels, similarity [epochs, K, K]). Each panel shows the mean over
    epochs, every cell annotated; the tasks' vectors are over the same shared backbone layers.
    """
    fig, axes = _panels(len(panels), width=3.6, height=3.2)
    image = None
    for ax, (label, tasks, sim) in zip(axes, panels, strict=True):
        mean = np.asarray(sim, dtype=np.float64).mean(axis=0)
        image = ax.imshow(mean, vmin=-1.0, vmax=1.0, cmap="RdBu_r")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_label(f"similarity:{label}")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="cosine similarity (epoch mean)")
    fig.suptitle("Tasks' SAL similarity")
    return fig


def task_learnable_proportion(panels: Sequence[tuple[str, dict[str, np.ndarray]]]) -> Figure:
    """Share of learnable backbone layers per task and epoch, one panel per arm (Fig. 4b).

    `panels`: (arm label, {task: λ_task(t) / layers [epochs]}), each task against its own β.
    """
    fig, axes = _panels(len(panels), width=4.0, height=3.2, sharey=True)
    for ax, (label, series) in zip(axes, panels, strict=True):
        # the lines are tasks, none of them a clean reference
        look = arm_styles([ArmKey(task, task) for task in series])
        for task, values in series.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=task, **look[task].kwargs())
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(label, fontsize=9)
        ax.set_label(f"proportion:{label}")
    axes[0].set_ylabel("learnable layers (fraction)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Learnable proportion of the backbone per task")
    return fig


def task_metrics(
    series: dict[str, tuple[str, list[tuple[str, np.ndarray]]]],
    *,
    styles: Mapping[str, LineStyle] | None = None,
) -> Figure:
    """Each task's test metric per epoch, one panel per task, one line per arm.

    `series`: {task: (metric name, [(arm label, values [epochs])])}.
    """
    labels = list(dict.fromkeys(label for _, lines in series.values() for label, _ in lines))
    look = _styles(labels, styles)
    fig, axes = _panels(len(series), width=3.8, height=3.0)
    for ax, (task, (metric_name, lines)) in zip(axes, series.items(), strict=True):
        for label, values in lines:
            ax.plot(np.arange(1, len(values) + 1), values, label=label, **look[label].kwargs())
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(f"test {metric_name}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_label(f"metric:{task}")
    _legend_outside(fig, axes[0], len(labels))
    return fig
