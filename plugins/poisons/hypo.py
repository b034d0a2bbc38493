"""Hypocritical perturbations (HYPO, Tao et al. 2021, "Better safe than sorry").

A surrogate is trained on the clean data; every training image is then moved by L∞ sign-PGD
that *descends* that surrogate's cross-entropy on the true label (100 steps of 0.8/255 within
8/255, starting from the clean image, surrogate in eval mode). The result looks "too easy": it
carries features that make the label trivially predictable, which a network trained on it
learns instead of the real ones. Unlike EM, the surrogate is fixed (pretrained), not trained
alongside the noise.

The crafting model is trained here, with the authors' recipe scaled by `epochs`: SGD 0.1 /
momentum 0.9 / weight decay 5e-4, batch 128, ×0.1 at 2/3 and 5/6 of training (100 and 125 of
150 epochs), standard crop + flip augmentation (4 px padding at 32×32, scaled with the image).
The loss descended is the track's task loss (cross-entropy for classification).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

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

SALT_INIT, SALT_TRAIN = 41, 42
MILESTONES = (100 / 150, 125 / 150)


class HypoParams(Params):
    epsilon: float = Field(default=8 / 255, gt=0, le=1, description="L∞ bound")
    step_size: float = Field(default=0.8 / 255, gt=0, description="sign-PGD step")
    steps: int = Field(default=100, ge=1, description="PGD steps")
    epochs: int = Field(
        default=150, ge=0, description="clean training epochs of the crafting model"
    )
    attack_batch_size: int = Field(
        default=256, gt=0, description="images perturbed at once (memory only)"
    )
    augment: AugmentParams = Field(default_factory=AugmentParams)
    surrogate: UnclippedSurrogateParams = Field(default_factory=UnclippedSurrogateParams)


class HypocriticalPerturbation(Poison):
    """HYPO; see the module docstring. After `generate`, `model` is the crafting model."""

    def __init__(self, params: HypoParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.model: torch.nn.Module | None = None

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        augment = Augment.from_params(p.augment, data) if data.is_image else None
        x = data.train.x.to(ctx.device)
        y = data.train.y.to(ctx.device)
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
                progress=lambda m, f: ctx.progress(m, 0.5 * f),
            )
            model.eval()
            self.model = model
            out = torch.empty_like(x)
            batches = batch_indices(len(x), p.attack_batch_size)
            for i, idx in enumerate(batches):
                idx = idx.to(ctx.device)
                delta = sign_pgd(
                    model,
                    x[idx],
                    y[idx],
                    torch.zeros_like(x[idx]),
                    loss_fn=ctx.task_loss,
                    epsilon=p.epsilon,
                    step_size=p.step_size,
                    steps=p.steps,
                    value_range=vr,
                    descend=True,
                )
                out[idx] = clamp_to_range(x[idx] + delta, vr)
                ctx.progress(
                    f"perturbing batch {i + 1}/{len(batches)}", 0.5 + 0.5 * (i + 1) / len(batches)
                )
        ctx.progress("done", 1.0)
        return out.detach().to("cpu", torch.float32)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="hypo",
            budget=PoisonBudget("linf", "epsilon"),
            factory=HypocriticalPerturbation,
            params=HypoParams,
            description="hypocritical perturbations: PGD descending the loss of a clean-trained surrogate",
            paper="Tao, Feng, Yi, Huang, Chen. Better Safe Than Sorry: Preventing Delusive Adversaries "
            "with Adversarial Training. NeurIPS 2021",
            deviations=(
                "The crafting model defaults to the CIFAR-form ResNet-18 of the other surrogate-based "
                "methods; the authors craft with a VGG-16, which the harness does not register.",
                "The authors hold out 1,000 training images as a validation set when training the "
                "crafting model; here it trains on the whole training split.",
            ),
        )
    ]
