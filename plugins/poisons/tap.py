"""Targeted adversarial poisoning (TAP, Fowl et al. 2021, "Adversarial examples make strong poisons").

A surrogate is trained on the clean data (40 epochs, standard crop + flip augmentation); then
every training image is pushed, within an L∞ ball of 8/255, towards the class (y + 1) mod C by
sign-PGD that *minimises* the cross-entropy to that new label: 250 steps of 0.05·ε from a
normal random start (N(0, ε²) clipped to the ball), with differentiable augmentation of the
perturbed batch at every step. Eight restarts are run and the restart whose perturbations end
with the lowest mean target loss is kept, as the authors' code does.

The poison works because the perturbations carry features of the *target* class that a network
trained on them learns instead of the true ones; the targeted variant (`targeted: true`, the
default) is the one the paper reports as strongest. `targeted: false` maximises the CE of the
true label instead; the authors describe it as weaker and more brittle across initialisations.

The label permutation and CE loss make this a classification method; the surrogate itself is
trained with the track's task loss. The crop padding (4 px at 32×32) scales with image size.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from harness.api import (
    BuildContext,
    DataBundle,
    Params,
    Poison,
    PoisonBudget,
    PoisonContext,
    PoisonRecord,
    clamp_to_range,
    hookimpl,
    project_linf,
    sign_pgd,
)

from ._surrogate import (
    Augment,
    AugmentParams,
    UnclippedSurrogateParams,
    batch_indices,
    build_surrogate,
    seeded,
    train_surrogate,
)

SALT_INIT, SALT_TRAIN, SALT_ATTACK = 31, 32, 33
# the authors' "linear" schedule: ×0.1 at 3/8, 5/8 and 7/8 of training
MILESTONES = (3 / 8, 5 / 8, 7 / 8)


class TAPParams(Params):
    targeted: bool = Field(
        default=True,
        description="push towards (y+1) mod C (the paper's reference); "
        "false: untargeted, documented as weaker",
    )
    epsilon: float = Field(default=8 / 255, gt=0, le=1, description="L∞ bound")
    steps: int = Field(default=250, ge=1, description="PGD steps per restart")
    step_size: float | None = Field(default=None, gt=0, description="sign step; null: 0.05·ε")
    restarts: int = Field(
        default=8, ge=1, description="random restarts; the lowest mean target loss is kept"
    )
    epochs: int = Field(default=40, ge=0, description="clean training epochs of the surrogate")
    attack_batch_size: int = Field(
        default=512, gt=0, description="images attacked at once (memory only)"
    )
    differentiable_augment: bool = Field(
        default=True, description="augment the perturbed batch at every PGD step"
    )
    augment: AugmentParams = Field(default_factory=AugmentParams)
    surrogate: UnclippedSurrogateParams = Field(default_factory=UnclippedSurrogateParams)


class TargetedAdversarialPoison(Poison):
    """TAP; see the module docstring. After `generate`, `model` is the trained surrogate and
    `restart_losses` the mean final target loss of each restart."""

    def __init__(self, params: TAPParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.model: torch.nn.Module | None = None
        self.restart_losses: list[float] = []

    def targets(self, y: Tensor, num_classes: int) -> Tensor:
        return (y + 1) % num_classes if self.params.targeted else y

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        eps = p.epsilon
        step = p.step_size if p.step_size is not None else 0.05 * eps
        augment = Augment.from_params(p.augment, data)
        x = data.train.x.to(ctx.device)
        y = data.train.y.to(ctx.device)
        target = self.targets(y, data.num_classes)
        with seeded(ctx, SALT_INIT + 1000):
            model = build_surrogate(ctx, p.surrogate, SALT_INIT)
            train_surrogate(
                model,
                x,
                y,
                ctx.task_loss,
                p.surrogate,
                epochs=p.epochs,
                generator=ctx.generator(SALT_TRAIN),
                augment=augment,
                milestones=MILESTONES,
                progress=lambda m, f: ctx.progress(m, 0.3 * f),
            )
            model.eval()
            self.model = model
            # targeted: descend the CE to the new label; untargeted: ascend the CE of the true one
            sign = 1.0 if p.targeted else -1.0

            def objective(out: Tensor, t: Tensor) -> Tensor:
                return sign * F.cross_entropy(out.float(), t)

            g = ctx.generator(SALT_ATTACK)
            best = x.clone()
            best_loss = float("inf")
            batches = batch_indices(len(x), p.attack_batch_size)
            self.restart_losses = []
            for r in range(p.restarts):
                candidate = torch.empty_like(x)
                total = 0.0
                for i, idx in enumerate(batches):
                    idx = idx.to(ctx.device)
                    xb, tb = x[idx], target[idx]
                    start = (torch.randn(xb.shape, generator=g) * eps).to(ctx.device)
                    start = project_linf(start, xb, eps, vr)
                    delta = sign_pgd(
                        model,
                        xb,
                        tb,
                        start,
                        loss_fn=objective,
                        epsilon=eps,
                        step_size=step,
                        steps=p.steps,
                        value_range=vr,
                        descend=True,
                        augment=augment if p.differentiable_augment else None,
                        generator=g,
                    )
                    candidate[idx] = clamp_to_range(xb + delta, vr)
                    with torch.no_grad():
                        total += float(objective(model(candidate[idx]), tb)) * len(idx)
                    done = (r + (i + 1) / len(batches)) / p.restarts
                    ctx.progress(
                        f"restart {r + 1}/{p.restarts}, batch {i + 1}/{len(batches)}",
                        0.3 + 0.7 * done,
                    )
                mean_loss = total / len(x)
                self.restart_losses.append(mean_loss)
                if mean_loss < best_loss:
                    best, best_loss = candidate, mean_loss
        ctx.progress("done", 1.0)
        return best.detach().to("cpu", torch.float32)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="tap",
            budget=PoisonBudget("linf", "epsilon"),
            factory=TargetedAdversarialPoison,
            params=TAPParams,
            description="targeted adversarial poisoning: PGD towards class (y+1) mod C against a "
            "clean-trained surrogate (targeted by default)",
            paper="Fowl, Goldblum, Chiang, Geiping, Czaja, Goldstein. Adversarial Examples Make Strong "
            "Poisons. NeurIPS 2021",
            deviations=(
                "The differentiable augmentation is a per-sample random crop (zero padding, 4 px at "
                "32×32, scaled with the image) and horizontal flip; the authors' code shifts images "
                "with its own differentiable grid-sampling transform.",
                "Each batch is optimised for all its steps before the next (the authors' code sweeps "
                "the whole training set once per step); with a fixed surrogate in eval mode the only "
                "difference is the order of the random draws.",
                "Restarts are compared by the mean target loss of their final perturbations, without "
                "augmentation; the authors' code uses the loss accumulated over its last sweep (with "
                "augmentation, before the last update).",
            ),
        )
    ]
