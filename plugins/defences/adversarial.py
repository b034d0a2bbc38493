"""Adversarial training (Madry et al. 2018): train on PGD examples of the current model."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from harness.api import (
    Defence,
    DefenceRecord,
    Params,
    StepContext,
    clamp_to_range,
    hookimpl,
    sign_pgd,
    uniform_start,
)


class AdversarialTrainingParams(Params):
    epsilon: float = Field(
        default=8 / 255, gt=0, description="L∞ radius, in the data's units (8/255)"
    )
    step_size: float = Field(default=2 / 255, gt=0, description="sign-gradient step (2/255)")
    steps: int = Field(default=10, ge=1, description="PGD iterations (10)")
    random_start: bool = Field(default=True, description="start from a uniform point of the ε-ball")


class AdversarialTraining(Defence):
    """Each step trains on L∞ PGD examples crafted against the model being trained.

    The attack maximises the task's loss on the step's own targets: uniform random start in the
    ε-ball, `steps` sign-gradient ascent steps of `step_size`, each followed by projection onto the
    ε-ball around the (augmented) batch and onto the data's value range. Only the adversarial
    examples are trained on (Madry's objective, no clean term).

    During the attack the model is in eval mode, as in the PyTorch code the UE literature uses
    for this defence (Huang et al. 2021's MadrysLoss, TRADES, REM): BatchNorm then uses its
    running statistics and the attack's extra forward passes do not update them, and dropout is
    off, so the attack sees the network that is being hardened rather than a noisier one. The
    mode the model was in is restored before the training forward pass. Gradients are taken with
    respect to the input only (`torch.autograd.grad`), so the attack leaves no parameter gradients.

    ε and the step are absolute, in the data's units: an L∞ bound does not depend on the image
    size, so nothing is scaled. The random start is drawn from the step's generator on the CPU, so it is reproducible and
    the same on every device.
    """

    def perturb(self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext) -> Tensor:
        """PGD examples within ε of `x` (L∞) and within `ctx.value_range`, the model in eval mode."""
        p = self.params
        x0 = x.detach()
        start = torch.zeros_like(x0)
        if p.random_start:
            start = uniform_start(x0.shape, p.epsilon, ctx.generator, x0.device).to(x0.dtype)
        was_training = model.training
        model.eval()
        try:
            delta = sign_pgd(
                model,
                x0,
                targets,
                start,
                loss_fn=ctx.loss,
                epsilon=p.epsilon,
                step_size=p.step_size,
                steps=p.steps,
                value_range=ctx.value_range,
                descend=False,
            )
        finally:
            model.train(was_training)
        return clamp_to_range(x0 + delta, ctx.value_range)

    def training_loss(
        self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext
    ) -> Tensor:
        return ctx.loss(model(self.perturb(model, x, targets, ctx)), targets)


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="adversarial-training",
            factory=AdversarialTraining,
            params=AdversarialTrainingParams,
            description="train on L∞ PGD examples of the current model (ε 8/255, 10 steps of 2/255, random start)",
            paper="Madry, Makelov, Schmidt, Tsipras & Vladu 2018, 'Towards Deep Learning Models Resistant to Adversarial Attacks' (ICLR)",
            deviations=(
                "The attack runs with the model in eval mode, as the UE literature's PyTorch code "
                "does; Madry et al.'s TensorFlow code attacked the model in training mode.",
            ),
        )
    ]
