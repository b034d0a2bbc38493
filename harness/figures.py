"""The paper's figures as pure functions: arrays in, a matplotlib `Figure` out.

Nothing here reads files or touches pyplot's global state: every function builds a
`matplotlib.figure.Figure` directly (rendered with the Agg canvas when saved), so the report can
run headless and in parallel, and tests can inspect panels, axes, image data and colour limits
rather than pixels. Every panel's axes carry the arm they show as their label (`ax.get_label()`).

Figures (numbers are the paper's): the SAL heat map, layers × epochs (3, 11); SAL per layer
against the learnable threshold β with the learnable-layer count (5); the proportion of
learnable layers per epoch (13); the 2-means split of the clean arm's SAL (12); test metric and
training loss per epoch; the cumulative distribution of parameter values (9); the loss
landscape over two principal components of the trajectory (1, 10).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

SAL_CMAP = "Greens"  # the paper's: darker green, larger SAL
LANDSCAPE_CMAP = "viridis"
CLEAN_COLOUR = "black"


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


def _colour(i: int, label: str) -> str:
    return CLEAN_COLOUR if label.startswith("clean") else f"C{i % 10}"


# --- SAL ---------------------------------------------------------------------------------------


def sal_heatmap(panels: Sequence[tuple[str, np.ndarray]], layer_names: Sequence[str]) -> Figure:
    """SAL of every layer at every epoch, one panel per arm, one colour scale for all (Fig. 3, 11).

    `panels`: (arm label, SAL [epochs, layers]). The image of a panel is SAL transposed (layers
    down, epochs across), so a layer that keeps learning is a dark row.
    """
    if not panels:
        raise ValueError("no arm to draw")
    vmax = max(float(np.nanmax(s)) if s.size else 0.0 for _, s in panels)
    vmax = vmax if vmax > 0 else 1.0
    n_layers = len(layer_names)
    fig, axes = _panels(len(panels), width=4.2, height=max(2.6, 0.22 * n_layers + 1.4), sharey=True)
    image = None
    for ax, (label, sal) in zip(axes, panels, strict=True):
        epochs = sal.shape[0]
        image = ax.imshow(
            np.asarray(sal, dtype=np.float64).T,
            aspect="auto",
            cmap=SAL_CMAP,
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
            extent=(0.5, epochs + 0.5, n_layers - 0.5, -0.5),
        )
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_label(label)
        ax.set_yticks(range(n_layers), [short_layer_name(n) for n in layer_names], fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes, label="SAL", shrink=0.9)
    fig.suptitle("Sharpness-Aware Learnability per layer and epoch")
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


def learnable_proportion(series: Sequence[tuple[str, np.ndarray]], n_layers: int) -> Figure:
    """The proportion of learnable layers per epoch, every arm on one plot (Fig. 13).

    `series`: (arm label, λ(t) [epochs]).
    """
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for i, (label, counts) in enumerate(series):
        counts = np.asarray(counts, dtype=np.float64)
        ax.plot(
            np.arange(1, len(counts) + 1),
            counts / n_layers,
            marker="o",
            markersize=3,
            color=_colour(i, label),
            label=label,
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learnable layers (fraction)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
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
    series: Sequence[tuple[str, np.ndarray, np.ndarray]], metric_name: str
) -> Figure:
    """Test metric and training loss per epoch, one line per arm.

    `series`: (arm label, test metric [epochs], training loss [epochs]).
    """
    if not any(np.isfinite(np.asarray(metric, dtype=np.float64)).any() for _, metric, _ in series):
        # multi-task arms have no single metric (each task's is in the task_metrics figure)
        fig = Figure(figsize=(5.2, 3.8), layout="constrained")
        loss_ax = fig.add_subplot()
        for i, (label, _, loss) in enumerate(series):
            loss_ax.plot(
                np.arange(1, len(loss) + 1),
                loss,
                marker="o",
                markersize=3,
                color=_colour(i, label),
                label=label,
            )
        loss_ax.set(
            xlabel="epoch", ylabel="training loss", title="Training loss (sum of the tasks' losses)"
        )
        loss_ax.set_label("train_loss")
        loss_ax.xaxis.get_major_locator().set_params(integer=True)
        loss_ax.legend(fontsize=7)
        return fig
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    metric_ax, loss_ax = fig.subplots(1, 2)
    for i, (label, metric, loss) in enumerate(series):
        colour = _colour(i, label)
        metric_ax.plot(
            np.arange(1, len(metric) + 1),
            metric,
            marker="o",
            markersize=3,
            color=colour,
            label=label,
        )
        loss_ax.plot(
            np.arange(1, len(loss) + 1), loss, marker="o", markersize=3, color=colour, label=label
        )
    metric_ax.set_ylabel(f"test {metric_name}")
    metric_ax.set_title(f"Test {metric_name}")
    metric_ax.set_label("test_metric")
    loss_ax.set_ylabel("training loss")
    loss_ax.set_title("Training loss")
    loss_ax.set_label("train_loss")
    for ax in (metric_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    metric_ax.legend(fontsize=7)
    return fig


def parameter_cdf(
    series: Sequence[tuple[str, np.ndarray]], source: str, quantiles: int = 1001
) -> Figure:
    """Cumulative distribution of parameter values and magnitudes, clean against poisoned (Fig. 9).

    `series`: (arm label, flattened parameters). Each curve is drawn from `quantiles` evenly
    spaced quantiles, so a model of millions of weights costs no more than a small one; every
    curve ends at 1.
    """
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    value_ax, abs_ax = fig.subplots(1, 2)
    q = np.linspace(0.0, 1.0, quantiles)
    for i, (label, values) in enumerate(series):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        colour = _colour(i, label)
        value_ax.plot(np.quantile(values, q), q, color=colour, label=label)
        abs_ax.plot(np.quantile(np.abs(values), q), q, color=colour, label=label)
    value_ax.set_xlabel("parameter value")
    abs_ax.set_xlabel("|parameter value|")
    value_ax.set_label("value")
    abs_ax.set_label("magnitude")
    for ax in (value_ax, abs_ax):
        ax.set_ylabel("cumulative fraction")
        ax.set_ylim(0, 1.01)
    value_ax.legend(fontsize=7)
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
        for i, (task, values) in enumerate(series.items()):
            ax.plot(
                np.arange(1, len(values) + 1),
                values,
                marker="o",
                markersize=3,
                color=f"C{i % 10}",
                label=task,
            )
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(label, fontsize=9)
        ax.set_label(f"proportion:{label}")
    axes[0].set_ylabel("learnable layers (fraction)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Learnable proportion of the backbone per task")
    return fig


def task_metrics(series: dict[str, tuple[str, list[tuple[str, np.ndarray]]]]) -> Figure:
    """Each task's test metric per epoch, one panel per task, one line per arm.

    `series`: {task: (metric name, [(arm label, values [epochs])])}.
    """
    fig, axes = _panels(len(series), width=3.8, height=3.0)
    for ax, (task, (metric_name, lines)) in zip(axes, series.items(), strict=True):
        for i, (label, values) in enumerate(lines):
            ax.plot(
                np.arange(1, len(values) + 1),
                values,
                marker="o",
                markersize=3,
                color=_colour(i, label),
                label=label,
            )
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(f"test {metric_name}")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_label(f"metric:{task}")
    axes[0].legend(fontsize=7)
    return fig
