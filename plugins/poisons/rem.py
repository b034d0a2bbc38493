"""Robust error-minimizing noise (REM, Fu et al. 2022).

EM breaks under adversarial training, because a network trained on adversarial examples of
x + δ no longer sees δ as an easy shortcut. REM makes the noise survive that: min-min-max.

* The surrogate is *adversarially* trained: each step takes a batch, computes its δ (below),
  augments x + δ, attacks the result with L∞ PGD of radius ρ_a (10 steps of ρ_a/5, random
  start) and takes an SGD step on the adversarial example.
* δ minimises the loss of that adversarial example, in expectation over the training
  augmentations (EOT, 5 samples): 10 sign steps of 1.6/255 from a random start in the 8/255
  ball. The gradient of the inner maximum is taken at the attack's optimum and carried back
  through the augmentation to δ (Danskin), as the authors' defender does.
* After the surrogate's 5,000 steps, δ is regenerated for every training image with the final
  model; that is the poison.

Schedule: SGD 0.1 (×0.1 every 2,000 steps), momentum 0.9, weight decay 5e-4, batch 128,
ResNet-18. The crop padding (4 px at 32×32) scales with the image size; see `AugmentParams`.

A generation cut short (Ctrl-C, a lost worker) resumes through `ctx.checkpoint` from its last
saved surrogate step or final-noise batch, and gives the same poison as one that ran through.

Cost: each surrogate step is steps × EOT × (attack steps + 1) forward/backward passes (550 at
the defaults), so the defaults are GPU-scale; the budget parameters make tiny CPU runs possible.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from harness.api import (
    DataBundle,
    LossFn,
    Params,
    Poison,
    PoisonBudget,
    PoisonContext,
    PoisonRecord,
    ValueRange,
    clamp_to_range,
    frozen,
    hookimpl,
    input_gradient,
    project_linf,
    sign_pgd,
    uniform_start,
)

from ._resume import ResumableStream, generator_states, restore_generators
from ._surrogate import (
    Augment,
    AugmentParams,
    UnclippedSurrogateParams,
    batch_indices,
    build_surrogate,
    make_sgd,
    seeded,
    train_step,
)

SALT_INIT, SALT_ORDER, SALT_NOISE, SALT_FINAL = 21, 22, 23, 24


class REMParams(Params):
    epsilon: float = Field(
        default=8 / 255, gt=0, le=1, description="L∞ bound of the defensive noise δ"
    )
    step_size: float = Field(default=1.6 / 255, gt=0, description="sign step of δ")
    steps: int = Field(default=10, ge=1, description="PGD steps of δ")
    random_start: bool = Field(default=True, description="δ starts from U(−ε, ε)")
    attack_epsilon: float = Field(
        default=4 / 255, ge=0, le=1, description="ρ_a: radius of the adversarial training attack"
    )
    attack_step_size: float = Field(default=0.8 / 255, gt=0, description="sign step of the attack")
    attack_steps: int = Field(
        default=10,
        ge=0,
        description="PGD steps of the attack (0: no adversarial step, i.e. EM with EOT)",
    )
    attack_random_start: bool = Field(
        default=True, description="the attack starts from U(−ρ_a, ρ_a)"
    )
    eot_samples: int = Field(
        default=5,
        ge=1,
        description="augmentations averaged per δ step (expectation over transformations)",
    )
    train_steps: int = Field(default=5000, ge=0, description="surrogate training steps (batches)")
    lr_decay: float = Field(default=0.1, gt=0, le=1, description="learning-rate factor ...")
    lr_decay_every: int = Field(default=2000, ge=1, description="... applied every this many steps")
    augment: AugmentParams = Field(default_factory=AugmentParams)
    surrogate: UnclippedSurrogateParams = Field(default_factory=UnclippedSurrogateParams)


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool,
    value_range: ValueRange,
    generator: torch.Generator,
) -> Tensor:
    """L∞ PGD that *ascends* the loss around x (the adversarial trainer's inner maximum)."""
    if steps == 0 or epsilon == 0:
        return x.detach().clone()
    start = (
        uniform_start(x.shape, epsilon, generator, x.device)
        if random_start
        else torch.zeros_like(x)
    )
    delta = sign_pgd(
        model,
        x,
        y,
        start,
        loss_fn=loss_fn,
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        value_range=value_range,
        descend=False,
    )
    return clamp_to_range(x + delta, value_range).detach()


class RobustErrorMinimizingNoise(Poison):
    """REM noise; see the module docstring."""

    def defensive_noise(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        ctx: PoisonContext,
        augment: Augment | None,
        value_range: ValueRange,
        generator: torch.Generator,
    ) -> Tensor:
        """δ for one batch: min over δ of E_aug max_{‖ρ‖≤ρ_a} loss(aug(x + δ) + ρ)."""
        p = self.params
        model.eval()
        delta = torch.zeros_like(x)
        if p.random_start:
            delta = uniform_start(x.shape, p.epsilon, generator, x.device)
        delta = project_linf(delta, x, p.epsilon, value_range)
        with frozen(model):
            for _ in range(p.steps):
                z = clamp_to_range(x + delta, value_range).detach().requires_grad_(True)
                total = torch.zeros_like(x)
                for _ in range(p.eot_samples):
                    defended = augment(z, generator) if augment is not None else z
                    adv = attack(
                        model,
                        defended.detach(),
                        y,
                        ctx.task_loss,
                        p.attack_epsilon,
                        p.attack_step_size,
                        p.attack_steps,
                        p.attack_random_start,
                        value_range,
                        generator,
                    )
                    grad_adv, _ = input_gradient(model, adv, y, ctx.task_loss)
                    # Danskin: the adversarial offset is held fixed and its loss gradient is
                    # carried back through the augmentation to the defended image
                    (g,) = torch.autograd.grad((defended * grad_adv).sum(), z)
                    total += g
                stepped = z.detach() - x - p.step_size * total.sign()
                delta = project_linf(stepped, x, p.epsilon, value_range)
        return delta

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        augment = Augment.from_params(p.augment, data)
        x = data.train.x.to(ctx.device)
        y = data.train.y.to(ctx.device)
        saved = ctx.checkpoint.load()
        with seeded(ctx, SALT_INIT + 1000):
            model = build_surrogate(ctx, p.surrogate, SALT_INIT)
            optimizer = make_sgd(model, p.surrogate)
            stream = ResumableStream(
                len(x), p.surrogate.batch_size, ctx.generator(SALT_ORDER), drop_last=True
            )
            g = ctx.generator(SALT_NOISE)
            final = ctx.generator(SALT_FINAL)
            generators = {"noise": g, "final": final}
            out = torch.empty_like(x)
            batches = batch_indices(len(x), p.surrogate.batch_size)
            first_step, first_batch = 0, 0

            def state(steps_done: int, batches_done: int) -> dict[str, Any]:
                """Everything the rest of the generation depends on (see `_resume`)."""
                return {
                    "steps_done": steps_done,
                    "batches_done": batches_done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "stream": stream.state(),
                    "rng": generator_states(generators, ctx.device),
                    # a copy: a slice of `out` would carry its whole storage into the file
                    "out": out[: batches_done * p.surrogate.batch_size].clone().cpu(),
                }

            if saved is not None:
                model.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
                stream.restore(saved["stream"])
                restore_generators(generators, saved["rng"], ctx.device)
                first_step, first_batch = saved["steps_done"], saved["batches_done"]
                out[: len(saved["out"])] = saved["out"].to(ctx.device)
            total = p.train_steps + 1
            for step in range(first_step, p.train_steps):
                for group in optimizer.param_groups:
                    group["lr"] = p.surrogate.lr * p.lr_decay ** (step // p.lr_decay_every)
                idx = stream.next().to(ctx.device)
                xb, yb = x[idx], y[idx]
                delta = self.defensive_noise(model, xb, yb, ctx, augment, vr, g)
                defended = clamp_to_range(xb + delta, vr)
                if augment is not None:
                    defended = augment(defended, g)
                model.eval()
                adv = attack(
                    model,
                    defended,
                    yb,
                    ctx.task_loss,
                    p.attack_epsilon,
                    p.attack_step_size,
                    p.attack_steps,
                    p.attack_random_start,
                    vr,
                    g,
                )
                loss = train_step(model, adv, yb, ctx.task_loss, optimizer, p.surrogate.grad_clip)
                if (step + 1) % max(1, p.train_steps // 100) == 0:
                    ctx.progress(
                        f"surrogate step {step + 1}/{p.train_steps}, adversarial loss {loss:.3f}",
                        (step + 1) / total,
                    )
                ctx.checkpoint.save_if_due(functools.partial(state, step + 1, 0))
            # batch_indices without a generator is in order: batch i is rows i·B .. (i+1)·B
            for i, idx in enumerate(batches):
                if i < first_batch:
                    continue
                idx = idx.to(ctx.device)
                delta = self.defensive_noise(model, x[idx], y[idx], ctx, augment, vr, final)
                out[idx] = clamp_to_range(x[idx] + delta, vr)
                ctx.progress(
                    f"final noise batch {i + 1}/{len(batches)}",
                    (p.train_steps + (i + 1) / len(batches)) / total,
                )
                ctx.checkpoint.save_if_due(functools.partial(state, p.train_steps, i + 1))
        ctx.progress("done", 1.0)
        return out.detach().to("cpu", torch.float32)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="rem",
            budget=PoisonBudget("linf", "epsilon"),
            factory=RobustErrorMinimizingNoise,
            params=REMParams,
            description="robust error-minimizing noise: min-min-max against an adversarially trained "
            "surrogate, with EOT over training augmentations",
            paper="Fu, He, Liu, Shen, Tao. Robust Unlearnable Examples: Protecting Data Against "
            "Adversarial Learning. ICLR 2022",
            deviations=(
                "δ stays in floating point; the authors' script rounds it to whole multiples of 1/255 "
                "(int8), both for the surrogate's training batches and in the saved poison.",
                "The gradient for δ is taken at the clamped image x+δ (straight through the clamp); "
                "the authors' code differentiates through the clamp, which freezes any pixel pushed past "
                "the value range (rare on CIFAR, most of the black background of digits).",
                "The crop padding scales with the image size (4 px at 32×32, 1 px on 8×8); the original "
                "is defined for 32×32 (and 64×64 Tiny-ImageNet) only.",
            ),
        )
    ]
