"""Adversarial training (Madry et al. 2018): train on PGD examples of the current model."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from harness.api import Defence, DefenceRecord, Params, StepContext, hookimpl


class AdversarialTrainingParams(Params):
    epsilon: float = Field(default=8 / 255, gt=0, description="L∞ radius, in the data's units (8/255)")
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
        """PGD examples within ε of `x` (L∞) and within `ctx.value_range`."""
        p = self.params
        x0 = x.detach()
        low, high = ctx.value_range if ctx.value_range is not None else (None, None)

        def project(z: Tensor) -> Tensor:
            z = torch.minimum(torch.maximum(z, x0 - p.epsilon), x0 + p.epsilon)
            return z.clamp(low, high) if low is not None else z

        x_adv = x0.clone()
        if p.random_start:
            noise = torch.rand(x0.shape, generator=ctx.generator) * 2 - 1
            x_adv = project(x0 + noise.to(device=x0.device, dtype=x0.dtype) * p.epsilon)
        was_training = model.training
        model.eval()
        try:
            for _ in range(p.steps):
                x_adv.requires_grad_(True)
                loss = ctx.loss(model(x_adv), targets)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = project(x_adv.detach() + p.step_size * grad.sign())
        finally:
            model.train(was_training)
        return x_adv.detach()

    def training_loss(self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext) -> Tensor:
        return ctx.loss(model(self.perturb(model, x, targets, ctx)), targets)


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="adversarial-training", factory=AdversarialTraining, params=AdversarialTrainingParams,
            description="train on L∞ PGD examples of the current model (ε 8/255, 10 steps of 2/255, random start)",
            paper="Madry, Makelov, Schmidt, Tsipras & Vladu 2018, 'Towards Deep Learning Models Resistant to Adversarial Attacks' (ICLR)",
            deviations=(
                "The attack runs with the model in eval mode, as the UE literature's PyTorch code "
                "does; Madry et al.'s TensorFlow code attacked the model in training mode.",
            ),
        )
    ]
