"""`harness landscape RUN`: the loss landscape around each traced arm's optimisation path.

The paper's recipe (Section 3.1, Appendix A.4): PCA over the matrix of saved parameter
snapshots with `n_components = min(matrix shape)`; the loss evaluated on a grid in the plane of
two chosen components (the top two, or the 3rd and 4th) through the final point; contours with
the trajectory projected on top; clean beside poisoned on one colour scale.

Evaluating the loss needs the model and the arm's training data, which a run file does not
hold: both are rebuilt from the resolved spec stored in `run.h5` (`Assembly.for_run`), poisons
from the poison cache. BatchNorm layers use the statistics of each (fixed) batch rather than
running statistics, so the loss at every grid point is a function of the parameters alone; every
other layer is in eval mode.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.assembly import Assembly
from harness.data import stratified_indices, take_targets, targets_to
from harness.errors import HarnessError
from harness.figures import LandscapePanel
from harness.plan import Arm, plan_arms
from harness.pluginmanager import Components
from harness.poisoning import PoisonedInputs
from harness.runfolder import RunFolder


class LandscapeError(HarnessError):
    """A landscape that cannot be drawn from what the run saved."""


@dataclass(frozen=True)
class LandscapeSettings:
    components: tuple[int, int] = (1, 2)
    grid: int = 21
    samples: int = 1024  # training samples the loss is evaluated on (stratified, fixed)
    margin: float = 0.25  # grid padding around the projected trajectory, as a fraction of its span
    batch_size: int = 512


def pca_plane(matrix: np.ndarray, components: tuple[int, int]):
    """PCA of the trajectory (`n_components = min(shape)`, as the paper) and the chosen plane.

    Returns (projected path [S, 2], the two unit directions [2, P], their explained variance
    ratios). A component past the rank of the centred trajectory (S − 1 snapshots of change)
    carries no variance, so asking for one is refused rather than drawn as noise.
    """
    from sklearn.decomposition import PCA

    s, p = matrix.shape
    usable = min(s - 1, p)
    if max(components) > usable or min(components) < 1 or components[0] == components[1]:
        raise LandscapeError(
            f"components {components[0]},{components[1]}: the trajectory has {s} snapshots of {p} parameters, "
            f"so only components 1 to {usable} carry variance; save snapshots more often "
            "(landscape.every_steps) or choose lower components"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pca = PCA(n_components=min(s, p), svd_solver="full").fit(matrix)
    idx = [c - 1 for c in components]
    path = pca.transform(matrix)[:, idx]
    return (
        path,
        pca.components_[idx].astype(np.float64),
        tuple(float(pca.explained_variance_ratio_[i]) for i in idx),
    )


def _grid_axis(values: np.ndarray, n: int, margin: float) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else max(abs(hi), 1e-3)
    return np.linspace(lo - margin * span, hi + margin * span, n)


def _batchnorm_on_batches(model: nn.Module) -> None:
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


@torch.no_grad()
def loss_grid(
    assembly: Assembly,
    poisons: PoisonedInputs,
    arm: Arm,
    final: np.ndarray,
    directions: np.ndarray,
    origin: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    settings: LandscapeSettings,
) -> np.ndarray:
    """The arm's training loss at final + (x − origin_x)·d1 + (y − origin_y)·d2 for the grid."""
    data, tasks, device = assembly.data, assembly.tasks, assembly.device
    train_x = poisons.for_arm(arm)
    idx = torch.as_tensor(stratified_indices(data.train.y.numpy(), settings.samples, arm.seed))
    defence = assembly.components.build("defence", arm.defence.name, arm.defence.params)
    x = defence.transform_images(train_x[idx], torch.Generator().manual_seed(arm.seed)).to(device)
    y = targets_to(take_targets(tasks.targets(data.train), idx), device)
    batches = [
        (x[part], take_targets(y, part.to(x.device)))
        for part in torch.arange(len(x)).split(settings.batch_size)
    ]
    torch.manual_seed(arm.seed)
    model = assembly.build_model().to(device)
    _batchnorm_on_batches(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    if n != final.shape[0]:
        raise LandscapeError(
            f"arm {arm.id}: the trajectory holds {final.shape[0]} parameters but the model "
            f"rebuilt from the spec has {n}"
        )
    base = torch.as_tensor(final, dtype=torch.float32, device=device)
    d = torch.as_tensor(directions, dtype=torch.float32, device=device)
    out = np.empty((len(ys), len(xs)))
    for j, yv in enumerate(ys):
        for i, xv in enumerate(xs):
            point = base + float(xv - origin[0]) * d[0] + float(yv - origin[1]) * d[1]
            torch.nn.utils.vector_to_parameters(point, params)
            total = 0.0
            for xb, yb in batches:
                out_b = model(xb)
                out_b = (
                    {k: v.float() for k, v in out_b.items()}
                    if isinstance(out_b, dict)
                    else out_b.float()
                )
                total += float(tasks.loss(out_b, yb)) * len(xb)
            out[j, i] = total / len(x)
    return out


def _wanted(arm: Arm, names: list[str] | None) -> bool:
    return names is None or arm.id in names or arm.poison_key in names


def compute_panels(
    run_dir: Path,
    components: Components,
    arms: list[str] | None = None,
    settings: LandscapeSettings | None = None,
    log=print,
) -> list[LandscapePanel]:
    """One landscape panel per traced arm (clean first), each on its own trajectory's plane."""
    settings = settings or LandscapeSettings()
    folder = RunFolder(run_dir)
    store = folder.readable_store()
    assembly = Assembly.for_run(folder, components)
    poisons = PoisonedInputs(assembly)
    planned = plan_arms(assembly.spec)
    if arms is not None:
        unknown = [a for a in arms if not any(_wanted(p, [a]) for p in planned)]
        if unknown:
            raise LandscapeError(
                f"no arm {', '.join(map(repr, unknown))} in this run; arms: "
                + ", ".join(p.id for p in planned)
            )
    present = set(store.arm_ids())
    panels = []
    multi = len(assembly.spec.seeds) > 1
    for arm in planned:
        if not _wanted(arm, arms) or arm.id not in present:
            continue
        traced = store.read_trajectory(arm.id)
        if traced is None or len(traced[0]) == 0:
            if arms is not None:
                raise LandscapeError(
                    f"arm {arm.id} saved no trajectory; enable `landscape` in the spec "
                    "(and list the arm under landscape.arms) and run it again"
                )
            continue
        steps, matrix = traced
        if steps[0] != 0:
            log(
                f"warning: {arm.id}: snapshots before step {steps[0]} were lost (the run file was rebuilt "
                "from checkpoints); the path starts there"
            )
        path, directions, explained = pca_plane(matrix, settings.components)
        xs = _grid_axis(path[:, 0], settings.grid, settings.margin)
        ys = _grid_axis(path[:, 1], settings.grid, settings.margin)
        log(
            f"{arm.id}: {matrix.shape[0]} snapshots of {matrix.shape[1]} parameters; "
            f"loss on a {settings.grid}×{settings.grid} grid"
        )
        loss = loss_grid(
            assembly,
            poisons,
            arm,
            matrix[-1].astype(np.float64),
            directions,
            path[-1],
            xs,
            ys,
            settings,
        )
        text = (
            arm.poison_key if arm.defence_key == "none" else f"{arm.poison_key} + {arm.defence_key}"
        )
        panels.append(
            LandscapePanel(
                label=f"{text} (seed {arm.seed})" if multi else text,
                xs=xs,
                ys=ys,
                loss=loss,
                path=path,
                components=settings.components,
                explained=explained,
                steps=steps,
            )
        )
    if not panels:
        raise LandscapeError(
            f"{store.path}: no arm saved a parameter trajectory; set `landscape: "
            "{enabled: true}` in the spec and run it"
        )
    return panels


def parse_components(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise LandscapeError(
            f"--components {text!r}: give two component numbers, such as 1,2 or 3,4"
        ) from None
    return a, b
