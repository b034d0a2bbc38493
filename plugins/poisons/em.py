"""Error-minimizing noise (EM, "unlearnable examples", Huang et al. 2021).

Bi-level min-min: the noise δ is optimised to *minimise* the training loss of a surrogate that
is itself being trained on x + δ, so the noise becomes an easy shortcut the network learns
instead of the image content. One round is `train_steps` surrogate batches on x + δ followed
by sign-PGD that descends the loss w.r.t. δ over the whole training set; rounds repeat until
the surrogate's error on x + δ is at most `stop_error`.

* sample-wise: one δ per image, 20 PGD steps of 0.8/255 per round, zero start, stop at 1%;
* class-wise: one δ per class. Each batch takes one PGD step from its class noise and the
  class noise becomes the mean of its samples' updated δ; trained on a stratified 20% subset;
  stop at 10% error (the authors' class-wise command).

The loss minimised (for the surrogate and for δ) is the track's task loss, `ctx.task_loss`,
so the same generator serves any task head, and a spec may name another task to craft against
(`crafting_task`, the paper's cross-task setting); the stop check uses arg-max classification
error, and for non-classification crafting tasks every round runs.

Nothing here assumes 32×32: the method is size-agnostic (no patches, no augmentation), and the
surrogate is any registered backbone that accepts the data's shape.
"""

from __future__ import annotations

from typing import Literal

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
    project_linf,
    sign_pgd,
    stratified_indices,
    take_targets,
    targets_to,
    uniform_start,
)

from ._surrogate import (
    BatchStream,
    SurrogateParams,
    batch_indices,
    build_surrogate,
    classification_error,
    crafting_loss,
    derived_seed,
    make_sgd,
    seeded,
    train_step,
)

SALT_INIT, SALT_NOISE, SALT_ORDER, SALT_SUBSET = 11, 12, 13, 14


class EMSurrogateParams(SurrogateParams):
    """ResNet-18, SGD 0.1 / 0.9 / 5e-4, batch 512, gradient clip 5 (the original's config)."""


class EMParams(Params):
    mode: Literal["sample-wise", "class-wise"] = Field(
        default="sample-wise", description="one δ per image or per class"
    )
    epsilon: float = Field(default=8 / 255, gt=0, le=1, description="L∞ bound of δ")
    step_size: float = Field(default=0.8 / 255, gt=0, description="sign-PGD step")
    steps: int | None = Field(
        default=None,
        ge=1,
        description="PGD steps per batch and round; null: 20 sample-wise, 1 class-wise (the original's)",
    )
    train_steps: int = Field(default=10, ge=0, description="surrogate batches on x+δ per round")
    stop_error: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="stop once the surrogate's error on x+δ is at most this; null: 0.01 sample-wise, 0.1 class-wise",
    )
    max_rounds: int = Field(
        default=1000,
        ge=1,
        description="safety cap on rounds (the original has none; at CIFAR scale it stops far earlier)",
    )
    class_subset: float = Field(
        default=0.2, gt=0, le=1, description="class-wise: share of the training set optimised on"
    )
    random_start: bool = Field(
        default=False,
        description="start from U(−ε, ε) instead of zero (the original starts at zero)",
    )
    surrogate: EMSurrogateParams = Field(default_factory=EMSurrogateParams)

    def resolved_steps(self) -> int:
        if self.steps is not None:
            return self.steps
        return 20 if self.mode == "sample-wise" else 1

    def resolved_stop_error(self) -> float:
        if self.stop_error is not None:
            return self.stop_error
        return 0.01 if self.mode == "sample-wise" else 0.1


class ErrorMinimizingNoise(Poison):
    """EM noise; see the module docstring. After `generate`, `rounds_run` and `final_error`
    say how the bi-level loop ended, and `class_noise` holds the class-wise patterns."""

    def __init__(self, params: EMParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.rounds_run = 0
        self.final_error = float("nan")
        self.class_noise: Tensor | None = None

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        with seeded(ctx, SALT_INIT + 1000):  # any global-RNG use inside (dropout) is seeded too
            if self.params.mode == "sample-wise":
                out = self._sample_wise(data, ctx)
            else:
                out = self._class_wise(data, ctx)
        ctx.progress("done", 1.0)
        return out.detach().to("cpu", torch.float32)

    # --- sample-wise ---------------------------------------------------------------------------
    def _sample_wise(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        x = data.train.x.to(ctx.device)
        y = targets_to(ctx.train_targets(data), ctx.device)  # the crafting task's targets
        model = build_surrogate(ctx, p.surrogate, SALT_INIT)
        optimizer = make_sgd(model, p.surrogate)
        bs = p.surrogate.batch_size
        delta = torch.zeros_like(x)
        if p.random_start:
            delta = uniform_start(x.shape, p.epsilon, ctx.generator(SALT_NOISE), ctx.device)
        delta = project_linf(delta, x, p.epsilon, vr)
        # the original's training iterator walks the (unshuffled) training set in order
        stream = BatchStream(len(x), bs)
        steps, stop = p.resolved_steps(), p.resolved_stop_error()
        for rnd in range(p.max_rounds):
            for _ in range(p.train_steps):
                idx = stream.next().to(ctx.device)
                train_step(
                    model,
                    clamp_to_range(x[idx] + delta[idx], vr),
                    take_targets(y, idx),
                    ctx.task_loss,
                    optimizer,
                    p.surrogate.grad_clip,
                )
            model.eval()
            for idx in batch_indices(len(x), bs):
                idx = idx.to(ctx.device)
                delta[idx] = sign_pgd(
                    model,
                    x[idx],
                    take_targets(y, idx),
                    delta[idx],
                    loss_fn=ctx.task_loss,
                    epsilon=p.epsilon,
                    step_size=p.step_size,
                    steps=steps,
                    value_range=vr,
                    descend=True,
                )
            if self._stop(rnd, model, clamp_to_range(x + delta, vr), y, ctx, bs, stop):
                break
        return clamp_to_range(x + delta, vr)

    def _stop(
        self,
        rnd: int,
        model: torch.nn.Module,
        x: Tensor,
        y: Tensor | dict,
        ctx: PoisonContext,
        bs: int,
        stop: float,
    ) -> bool:
        """The original's stop rule: classification error on x+δ at most `stop`.

        A non-classification crafting task has no classification error: every round runs, and
        the progress line reports the surrogate's loss on x+δ instead.
        """
        self.rounds_run = rnd + 1
        fraction = min(0.99, (rnd + 1) / self.params.max_rounds)
        if not ctx.classification:
            loss = crafting_loss(model, x, y, ctx.task_loss, bs)
            ctx.progress(
                f"round {rnd + 1}: surrogate crafting-task loss on x+δ {loss:.4f}", fraction
            )
            return False
        error = classification_error(model, x, y, bs)
        self.final_error = error
        ctx.progress(
            f"round {rnd + 1}: surrogate error on x+δ {error:.4f} (stop at {stop})", fraction
        )
        return error <= stop

    # --- class-wise ----------------------------------------------------------------------------
    def _class_wise(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        n_classes = data.num_classes
        size = max(n_classes, round(p.class_subset * len(data.train)))
        seed = derived_seed(ctx, SALT_SUBSET) % 2**32
        sub = torch.as_tensor(stratified_indices(data.train.y.numpy(), size, seed))
        x = data.train.x[sub].to(ctx.device)
        y = data.train.y[sub].to(ctx.device)  # classes: one noise per class
        t = targets_to(
            take_targets(ctx.train_targets(data), sub), ctx.device
        )  # what the loss reads
        model = build_surrogate(ctx, p.surrogate, SALT_INIT)
        optimizer = make_sgd(model, p.surrogate)
        bs = p.surrogate.batch_size
        noise = torch.zeros((n_classes, *x.shape[1:]), device=ctx.device)
        if p.random_start:
            noise = uniform_start(noise.shape, p.epsilon, ctx.generator(SALT_NOISE), ctx.device)
        order = ctx.generator(SALT_ORDER)
        # the original's class-wise loaders shuffle and drop the last short batch
        stream = BatchStream(len(x), bs, order, drop_last=True)
        steps, stop = p.resolved_steps(), p.resolved_stop_error()
        for rnd in range(p.max_rounds):
            for _ in range(p.train_steps):
                idx = stream.next().to(ctx.device)
                train_step(
                    model,
                    clamp_to_range(x[idx] + noise[y[idx]], vr),
                    take_targets(t, idx),
                    ctx.task_loss,
                    optimizer,
                    p.surrogate.grad_clip,
                )
            model.eval()
            for idx in batch_indices(len(x), bs, order, drop_last=True):
                idx = idx.to(ctx.device)
                xb, yb = x[idx], y[idx]
                eta = sign_pgd(
                    model,
                    xb,
                    take_targets(t, idx),
                    noise[yb],
                    loss_fn=ctx.task_loss,
                    epsilon=p.epsilon,
                    step_size=p.step_size,
                    steps=steps,
                    value_range=vr,
                    descend=True,
                    project_range=False,
                )
                for cls in torch.unique(yb).tolist():
                    noise[cls] = eta[yb == cls].mean(dim=0).clamp(-p.epsilon, p.epsilon)
            if self._stop(rnd, model, clamp_to_range(x + noise[y], vr), t, ctx, bs, stop):
                break
        self.class_noise = noise.detach().cpu()
        full_x = data.train.x.to(ctx.device)
        return clamp_to_range(full_x + noise[data.train.y.to(ctx.device)], vr)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="em",
            budget=PoisonBudget("linf", "epsilon"),
            factory=ErrorMinimizingNoise,
            params=EMParams,
            task_aware=True,
            description="error-minimizing noise: bi-level min-min against a surrogate trained on x+δ "
            "(sample-wise or class-wise)",
            paper="Huang, Ma, Erfani, Bailey, Wang. Unlearnable Examples: Making Personal Data "
            "Unexploitable. ICLR 2021",
            deviations=(
                "x+δ is clamped into the data's value range when the surrogate trains on it and when "
                "the stop condition is checked; the original adds the noise unclamped there (only its "
                "saved poisons are clipped).",
                "The bi-level loop is capped at max_rounds (default 1000); the original loops until the "
                "stop condition holds.",
                "Class-wise: the 20% subset is drawn stratified (every class kept), where the original "
                "takes a plain random split.",
                "Cross-task (a `crafting_task` other than classification, as the paper's §3.4 does): "
                "the loss minimised is that task's (or the weighted sum of all tasks' for 'all'); there "
                "is no classification error to stop on, so every one of max_rounds runs.",
            ),
        )
    ]
