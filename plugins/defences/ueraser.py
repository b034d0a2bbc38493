"""UEraser (Qin et al. 2023): adversarial augmentations, the worst of K augmented copies.

Per training step, every image gets K independently augmented copies (plasma brightness, plasma
contrast, channel shuffle, TrivialAugment) and the loss is the per-sample *maximum* over the
copies, averaged over the batch: the network is trained on the augmentation that currently
hurts it most, which is what breaks the shortcut a poison plants. This lasts for the first
`max_epochs` epochs; afterwards each step trains ordinarily on one augmented copy, as the
authors' code does. The variants differ only there: Lite 0 epochs (never the max; one augmented
copy per step throughout), standard 50, Max 300.

It acts on the training step (`training_loss`), after the harness's crop and flip, as the
original augments on top of its loader's crop and flip. The SAL probe and the test set are not
augmented by it.
"""

from __future__ import annotations

from typing import Literal

import kornia.augmentation as K
import torch
from pydantic import Field
from torch import Tensor, nn
from torchvision.transforms import v2

from harness.api import BuildContext, Defence, DefenceRecord, Params, StepContext, hookimpl

from ._common import from_uint8, global_rng_from, require_images, to_uint8

VARIANT_EPOCHS: dict[str, int] = {"lite": 0, "standard": 50, "max": 300}


class UEraserParams(Params):
    variant: Literal["lite", "standard", "max"] = Field(
        default="max",
        description="how long the max-over-copies loss lasts: lite 0, standard 50, max 300 epochs "
        "(max is the variant the SAL paper's Table 2 reports)",
    )
    k: int = Field(
        default=5, ge=1, description="augmented copies per image while the max loss is on"
    )
    max_epochs: int | None = Field(
        default=None,
        ge=0,
        description="epochs with the max-over-copies loss; null: the variant's",
    )
    per_image_trivial_augment: bool = Field(
        default=True,
        description="true: a TrivialAugment operation drawn for every image copy; false: one per copy "
        "batch (cheaper on a GPU, closer to the authors' kornia call)",
    )


def trivial_augment_per_image(augment: v2.TrivialAugmentWide, images: Tensor) -> Tensor:
    """`torch.stack([augment(image) for image in images])`, batched by drawn operation.

    TrivialAugmentWide draws, per call, an operation, then (for operations with a magnitude) a
    magnitude bin and a sign, from the global RNG; applying the operation draws nothing. So the
    draws are made first, image by image in the same order (the same random numbers as the
    loop), and each distinct (operation, magnitude) is then applied once to all its images: the
    same images as the loop, with a few dozen calls per batch instead of one per image copy.
    """
    height, width = images.shape[-2:]
    space = augment._AUGMENTATION_SPACE
    names = tuple(space)
    bins = augment.num_magnitude_bins
    drawn: list[tuple[str, float]] = []
    for _ in range(images.shape[0]):  # the draws of one forward call, in its order
        name = names[int(torch.randint(len(names), ()))]
        magnitudes_fn, signed = space[name]
        magnitudes = magnitudes_fn(bins, height, width)
        magnitude = 0.0
        if magnitudes is not None:
            magnitude = float(magnitudes[int(torch.randint(bins, ()))])
            if signed and torch.rand(()) <= 0.5:
                magnitude *= -1
        drawn.append((name, magnitude))
    out = torch.empty_like(images)
    groups: dict[tuple[str, float], list[int]] = {}
    for i, key in enumerate(drawn):
        groups.setdefault(key, []).append(i)
    for (name, magnitude), rows in groups.items():
        index = torch.tensor(rows, device=images.device)
        out[index] = augment._apply_image_or_video_transform(
            images[index],
            name,
            magnitude,
            interpolation=augment.interpolation,
            fill=augment._fill,
        )
    return out


class UEraser(Defence):
    """The UEraser augmentation and its max-over-K-copies loss.

    Plasma parameters are those of the authors' latest `ueraser.py`: brightness with roughness
    0.3–0.7 and intensity 0.5–1.0, contrast with roughness 0.3–0.7, each applied with probability
    0.5; channel shuffle with probability 0.5 (a no-op on 1-channel images); then TrivialAugmentWide
    on the 8-bit image. kornia and torchvision draw from the global RNG, so the augmentation runs
    inside `global_rng_from(ctx.generator)`: one seed per step, drawn from the arm's checkpointed
    generator. The augmentation runs outside autocast, in the batch's own precision.
    """

    def __init__(self, params: UEraserParams, context: BuildContext | None = None) -> None:
        super().__init__(params, context)
        self.k = params.k
        self.max_epochs = (
            params.max_epochs if params.max_epochs is not None else VARIANT_EPOCHS[params.variant]
        )
        self.plasma_brightness = K.RandomPlasmaBrightness(
            roughness=(0.3, 0.7), intensity=(0.5, 1.0), same_on_batch=False, p=0.5, keepdim=True
        )
        self.plasma_contrast = K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=0.5, keepdim=True)
        self.channel_shuffle = K.RandomChannelShuffle(same_on_batch=False, p=0.5, keepdim=True)
        self.trivial_augment = v2.TrivialAugmentWide()

    def max_loss_on(self, epoch: int) -> bool:
        """Whether `epoch` (1-based, as the harness counts) trains on the max over K copies."""
        return epoch <= self.max_epochs

    def augmented_copies(self, x: Tensor, copies: int, generator: torch.Generator) -> Tensor:
        """`copies` independently augmented versions of the batch, copy-major: [copies·B, C, H, W].

        Row `c·B + i` is copy `c` of image `i`. The same generator state gives the same copies.
        """
        require_images(x, "ueraser")
        tiled = x.detach().repeat(copies, 1, 1, 1)
        with global_rng_from(generator, x.device), torch.autocast(x.device.type, enabled=False):
            tiled = self.channel_shuffle(self.plasma_contrast(self.plasma_brightness(tiled)))
            u8 = to_uint8(tiled)
            if self.params.per_image_trivial_augment:
                u8 = trivial_augment_per_image(self.trivial_augment, u8)
            else:
                u8 = torch.cat([self.trivial_augment(chunk) for chunk in u8.split(x.shape[0])])
        return from_uint8(u8, x)

    def training_loss(
        self, model: nn.Module, x: Tensor, targets: Tensor, ctx: StepContext
    ) -> Tensor:
        if not self.max_loss_on(ctx.epoch):
            return ctx.loss(model(self.augmented_copies(x, 1, ctx.generator)), targets)
        b = x.shape[0]
        copies = self.augmented_copies(x, self.k, ctx.generator)
        tiled_targets = targets.repeat(self.k, *([1] * (targets.dim() - 1)))
        # one forward pass over all K·B copies, as the authors' adversarial_augmentation_loss
        losses = ctx.per_sample_loss(model(copies), tiled_targets).view(self.k, b)
        return losses.max(dim=0).values.mean()


@hookimpl
def harness_register_defences() -> list[DefenceRecord]:
    return [
        DefenceRecord(
            name="ueraser",
            factory=UEraser,
            params=UEraserParams,
            description="per-sample max loss over K=5 adversarially augmented copies for max_epochs "
            "epochs (lite 0, standard 50, max 300), then one augmented copy",
            paper=(
                "Qin, Gao, Zhao, Ye & Xu 2023, 'Learning the Unlearnable: Adversarial Augmentations "
                "Suppress Unlearnable Example Attacks' (arXiv 2303.15127; ICCV 2023 AROW workshop)"
            ),
            deviations=(
                "TrivialAugment is torchvision's TrivialAugmentWide on 8-bit images, one operation per "
                "image copy by default; the authors used kornia's TrivialAugment, which draws one "
                "operation per call for the whole batch (magnitudes per image) on float images.",
                "The K copies go through the model as one batch of K·B, as the authors' "
                "adversarial_augmentation_loss does; their LSP script ran K separate forward passes, "
                "which gives different BatchNorm batch statistics.",
            ),
        )
    ]
