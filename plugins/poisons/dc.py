"""DeepConfuse (DC, Feng, Cai and Zhou 2019, "Learning to confuse").

A generator g (a U-Net, output ε·tanh) learns a perturbation x + g(x) such that a classifier
trained on the perturbed data does badly on clean data. Following the authors' code:

* outer rounds (`rounds`): a fresh classifier is trained for `classifier_epochs` epochs with
  plain SGD (lr 0.01, batch 256) on x + g_atk(x), where g_atk is a frozen copy of the
  generator from the end of the previous round;
* alongside every classifier step, the generator g being learnt takes one Adam step (1e-4)
  that *maximises* the clean loss of the one-step look-ahead classifier
  θ' = θ − lr·∇_θ L(f_θ(x + g(x)), y), evaluated with `torch.func.functional_call` so the
  gradient flows through the look-ahead into g (second order);
* at the end of a round g_atk ← g. The poison is x + g_atk(x), clipped to the value range.

Scaling: the original U-Net downsamples a 32×32 image four times (to 2×2); here the number of
downsamplings is min(4, log2(min(H, W)) − 1), so 8×8 digits get two (to 2×2) and 32×32 keeps
four; `generator_width` (64 in the original) sets the first level's channels, doubling per
level up to 8× (64-128-256-512-512).

Cost: at the original's 1,000 rounds × 20 classifier epochs this is days of GPU time; the
rounds and epochs are parameters so tiny CPU runs (and partial GPU runs) are possible.
"""

from __future__ import annotations

import copy
import math

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call
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
)

from ._surrogate import SurrogateParams, batch_indices, build_surrogate, make_sgd, seeded

SALT_GEN, SALT_ORDER, SALT_CLASSIFIER = 51, 52, 53


class DCClassifierParams(SurrogateParams):
    """The victim classifier trained alongside the generator.

    The original uses VGG-11, which the harness does not register; the default is the closest
    registered network, a plain VGG-like stack: small-cnn with 4 conv-BN-ReLU blocks of
    64-128-256-512 channels and max-pooling. Plain SGD (no momentum, no weight decay) at 0.01,
    batch 256, as the authors' script.
    """

    backbone: str = Field(default="small-cnn", description="registered backbone of the classifier")
    backbone_params: dict = Field(default_factory=lambda: {"width": 64, "blocks": 4})
    lr: float = Field(
        default=0.01, gt=0, description="SGD learning rate (also the look-ahead step)"
    )
    momentum: float = Field(
        default=0.0, ge=0, lt=1, description="SGD momentum (none in the original)"
    )
    weight_decay: float = Field(
        default=0.0, ge=0, description="SGD weight decay (none in the original)"
    )
    batch_size: int = Field(default=256, gt=0, description="batch size of classifier and generator")
    grad_clip: float | None = Field(
        default=None, gt=0, description="gradient-norm clip; null: none"
    )


class DCParams(Params):
    epsilon: float = Field(
        default=0.032, gt=0, le=1, description="L∞ bound: g(x) = ε·tanh(U-Net(x))"
    )
    rounds: int = Field(
        default=1000, ge=0, description="outer rounds (a fresh classifier each); very expensive"
    )
    classifier_epochs: int = Field(default=20, ge=1, description="classifier epochs per round")
    generator_lr: float = Field(
        default=1e-4, gt=0, description="Adam learning rate of the generator"
    )
    generator_width: int = Field(
        default=64, ge=1, le=256, description="channels of the U-Net's first level"
    )
    generator_depth: int | None = Field(
        default=None, ge=1, le=6, description="downsamplings; null: min(4, log2(min(H, W)) − 1)"
    )
    classifier: DCClassifierParams = Field(default_factory=DCClassifierParams)


# --------------------------------------------------------------------------------------------
# the generator


class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with max-pool downsampling, bilinear upsampling and skip connections; tanh output.

    Skips are resized to match when a side is odd, so any size of at least 2^depth works.
    """

    def __init__(self, channels: int, width: int, depth: int) -> None:
        super().__init__()
        widths = [width * min(2**i, 8) for i in range(depth + 1)]
        self.inc = DoubleConv(channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(
            DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([skip, h], dim=1))
        return torch.tanh(self.out(h))


def default_depth(height: int, width: int) -> int:
    """Four downsamplings at 32×32 (to 2×2), fewer on smaller images so the bottleneck is ≥ 2×2."""
    side = min(height, width)
    if side < 4:
        raise ValueError(f"DeepConfuse's U-Net needs images of at least 4×4, got {height}×{width}")
    return max(1, min(4, int(math.floor(math.log2(side))) - 1))


# --------------------------------------------------------------------------------------------


class DeepConfuse(Poison):
    """DC; see the module docstring. After `generate`, `generator` is the final g (eval mode)."""

    def __init__(self, params: DCParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.generator: UNet | None = None

    def build_generator(self, data: DataBundle, ctx: PoisonContext) -> UNet:
        if not data.is_image:
            raise ValueError(f"dc needs image inputs [C, H, W], got shape {data.input_shape}")
        c, h, w = data.input_shape
        depth = self.params.generator_depth or default_depth(h, w)
        if min(h, w) < 2**depth:
            raise ValueError(
                f"generator_depth {depth} needs images of at least {2**depth}×{2**depth}, got {h}×{w}"
            )
        with seeded(ctx, SALT_GEN):
            return UNet(c, self.params.generator_width, depth).to(ctx.device)

    def generate(self, data: DataBundle, ctx: PoisonContext) -> Tensor:
        p = self.params
        vr = data.value_range
        eps = p.epsilon
        lr = p.classifier.lr
        x = data.train.x.to(ctx.device)
        y = data.train.y.to(ctx.device)
        with seeded(ctx, SALT_GEN + 1000):
            target = self.build_generator(data, ctx)  # g being learnt ("tgtmodel")
            attacker = copy.deepcopy(target).eval()  # frozen copy that poisons the classifier
            for q in attacker.parameters():
                q.requires_grad_(False)
            g_opt = torch.optim.Adam(target.parameters(), lr=p.generator_lr)
            order = ctx.generator(SALT_ORDER)
            steps_per_round = p.classifier_epochs * len(
                batch_indices(len(x), p.classifier.batch_size)
            )
            for rnd in range(p.rounds):
                classifier = build_surrogate(ctx, p.classifier, SALT_CLASSIFIER + 7919 * rnd)
                c_opt = make_sgd(classifier, p.classifier)
                names = [name for name, _ in classifier.named_parameters()]
                step = 0
                for _ in range(p.classifier_epochs):
                    for idx in batch_indices(len(x), p.classifier.batch_size, order):
                        idx = idx.to(ctx.device)
                        xb, yb = x[idx], y[idx]
                        classifier.train()
                        target.train()
                        # generator step: maximise the clean loss after a look-ahead SGD step
                        poisoned = clamp_to_range(xb + eps * target(xb), vr)
                        loss = ctx.task_loss(classifier(poisoned), yb)
                        params = list(classifier.parameters())
                        grads = torch.autograd.grad(loss, params, create_graph=True)
                        ahead = {
                            n: w - lr * gw for n, w, gw in zip(names, params, grads, strict=True)
                        }
                        # fresh buffers, as the original's temporary network: the look-ahead's
                        # batch-norm statistics never touch the real classifier
                        buffers = {n: b.detach().clone() for n, b in classifier.named_buffers()}
                        clean_loss = ctx.task_loss(
                            functional_call(classifier, {**ahead, **buffers}, (xb,)), yb
                        )
                        g_opt.zero_grad(set_to_none=True)
                        (-clean_loss).backward()
                        g_opt.step()
                        # classifier step on the frozen generator's poison
                        with torch.no_grad():
                            poisoned = clamp_to_range(xb + eps * attacker(xb), vr)
                        c_opt.zero_grad(set_to_none=True)
                        ctx.task_loss(classifier(poisoned), yb).backward()
                        if p.classifier.grad_clip is not None:
                            nn.utils.clip_grad_norm_(
                                classifier.parameters(), p.classifier.grad_clip
                            )
                        c_opt.step()
                        step += 1
                        ctx.progress(
                            f"round {rnd + 1}/{p.rounds}, step {step}/{steps_per_round}, "
                            f"look-ahead clean loss {float(clean_loss.detach()):.3f}",
                            min(0.99, (rnd + step / steps_per_round) / max(p.rounds, 1)),
                        )
                attacker.load_state_dict(target.state_dict())
            self.generator = attacker
            out = torch.empty_like(x)
            with torch.no_grad():
                for idx in batch_indices(len(x), p.classifier.batch_size):
                    idx = idx.to(ctx.device)
                    out[idx] = clamp_to_range(x[idx] + eps * attacker(x[idx]), vr)
        ctx.progress("done", 1.0)
        return out.detach().to("cpu", torch.float32)


@hookimpl
def harness_register_poisons() -> list[PoisonRecord]:
    return [
        PoisonRecord(
            name="dc",
            budget=PoisonBudget("linf", "epsilon"),
            factory=DeepConfuse,
            params=DCParams,
            description="DeepConfuse: a U-Net generator trained so that a classifier fitted to its "
            "output fails on clean data (one-step look-ahead, second order)",
            paper="Feng, Cai, Zhou. Learning to Confuse: Generating Training Time Adversarial Data "
            "with Auto-Encoder. NeurIPS 2019",
            deviations=(
                "The classifier defaults to small-cnn (4 blocks, 64-512 channels), the closest "
                "registered network to the original's VGG-11.",
                "The generator of the last round is the poison; the authors keep the round whose "
                "scratch-trained classifier had the lowest clean test accuracy, which would need the "
                "test split (the harness never shows it to a poison).",
                "The U-Net is this module's own (max-pool down, bilinear up, batch norm, tanh); its "
                "depth shrinks on images smaller than 32×32 so the bottleneck stays at least 2×2.",
            ),
        )
    ]
