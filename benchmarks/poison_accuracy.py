"""Clean-test accuracy of a model trained on each poison, next to clean training and random noise.

    python benchmarks/poison_accuracy.py [--root ~/.cache/harness/data/cifar10-jpg]
        [--train 2000] [--test 1000] [--epochs 15] [--methods em,ops,...]

Unpack the data first: `harness data extract ../shared/data/cifar10-jpg.tar.xz`.
Each method is generated at CPU scale (the surrogate budgets below, far under the papers'),
timed, and a model is trained on the protected subset with the usual crop-and-flip augmentation.

Two settings matter, both measured on this benchmark:
- enough SGD steps (defaults: batch 32, 30 epochs, ~1,900 steps). With ~200 steps (batch 128,
  12 epochs) no shortcut is learned yet: accuracy on the poisoned training images equals accuracy
  on their clean versions, and every method looks harmless;
- the victim: the CIFAR ResNet-18 (default, width 16 to fit a CPU). A 3-layer CNN with global
  average pooling (`--backbone small-cnn`) cannot read *where* a pattern sits, so OPS (one pixel
  position) and LSP (a 4×4 patch layout) barely hurt it, while texture-like poisons (EM, AR) do.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from harness.assembly import Assembly
from harness.defence import Defence
from harness.plan import Arm
from harness.pluginmanager import get_components
from harness.poisoning import PoisonedInputs
from harness.spec import ComponentRef
from harness.specfile import spec_from_data
from harness.training import evaluate, make_optimizer, make_scheduler, train_epoch

TINY_SURROGATE = {"backbone": "small-cnn", "backbone_params": {"width": 16, "blocks": 3}}

# CPU-scale parameters: the papers' defaults except for surrogate size and training budget.
METHODS: dict[str, tuple[str, dict]] = {
    "random-noise": ("random-noise", {}),
    "random-noise-class": ("random-noise", {"mode": "class-wise"}),
    "em": ("em", {"surrogate": TINY_SURROGATE, "max_rounds": 15}),
    "em-class": ("em", {"mode": "class-wise", "surrogate": TINY_SURROGATE, "max_rounds": 15}),
    # REM's min-min-max inner loop is the costliest of all: the CPU Table 1 spec's budget
    "rem": (
        "rem",
        {
            "surrogate": TINY_SURROGATE,
            "train_steps": 100,
            "lr_decay_every": 75,
            "attack_steps": 3,
            "attack_step_size": 0.0105,
            "eot_samples": 2,
        },
    ),
    "tap": ("tap", {"surrogate": TINY_SURROGATE, "epochs": 10, "steps": 50, "restarts": 1}),
    "hypo": ("hypo", {"surrogate": TINY_SURROGATE, "epochs": 10, "steps": 50}),
    "dc": ("dc", {"classifier": TINY_SURROGATE, "rounds": 3, "classifier_epochs": 3}),
    "lsp": ("lsp", {}),
    "ops": ("ops", {}),
    "ar": ("ar", {}),
    "cuda": ("cuda", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="~/.cache/harness/data/cifar10-jpg")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="small batches: a 2,000-image subset needs many SGD steps before a shortcut is learned",
    )
    parser.add_argument("--methods", default=",".join(["clean", *METHODS]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backbone", default="resnet18", help="the trained model (not the surrogates)"
    )
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--no-augment", action="store_true", help="train without crop and flip")
    args = parser.parse_args()

    victim = {"width": args.width, **({"blocks": 3} if args.backbone == "small-cnn" else {})}
    methods = [m for m in args.methods.split(",") if m != "clean"]
    spec = spec_from_data(
        {
            "name": "poison-accuracy",
            "data": {
                "name": "image-folder",
                "params": {"root": str(Path(args.root).expanduser())},
                "subset": {"train": args.train, "test": args.test, "seed": args.seed},
            },
            "backbone": {"name": args.backbone, "params": victim},
            "training": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "augmentation": [] if args.no_augment else ["crop", "flip"],
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                "schedule": {"name": "cosine"},
            },
            "poisons": [
                {"name": METHODS[m][0], "label": m, "params": METHODS[m][1]} for m in methods
            ],
            "seeds": [args.seed],
        },
        get_components(),
        origin="benchmarks/poison_accuracy.py",
    )
    assembly = Assembly.from_spec(spec, get_components())
    poisons = PoisonedInputs(
        assembly
    )  # generation time is the first run's, kept with the cached poison
    data, tasks, device, recipe = assembly.data, assembly.tasks, assembly.device, spec.spec.training
    none = spec.spec.defences[0]

    def train_and_test(x: torch.Tensor) -> tuple[float, float]:
        torch.manual_seed(args.seed)
        model = assembly.build_model(ComponentRef(name=args.backbone, params=victim)).to(device)
        optimizer = make_optimizer(model, recipe.optimizer)
        scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs)
        g = torch.Generator().manual_seed(args.seed)
        train = data.train.with_inputs(x)
        accs = []
        for epoch in range(1, recipe.epochs + 1):
            train_epoch(
                model,
                train,
                tasks,
                Defence(),
                recipe,
                optimizer,
                g,
                device,
                epoch,
                data.num_classes,
                data.value_range,
            )
            scheduler.step()
            accs.append(evaluate(model, data.test, tasks, 512, device)[1])
        return accs[-1], max(accs)

    print(
        f"CIFAR-10 folder, {len(data.train)} train / {len(data.test)} test, {args.backbone} width "
        f"{args.width}, {args.epochs} epochs of batch {args.batch_size}, augmentation "
        f"{[a.name for a in recipe.augmentation] or 'none'}, device {device}"
    )
    print("| method | test acc (final) | test acc (best) | generation s (a cache hit: load time) |")
    print("|---|---|---|---|")
    for label in args.methods.split(","):
        generation = 0.0
        if label == "clean":
            x = data.train.x
        else:
            ref = next(p for p in spec.spec.poisons if p.key == label)
            started = time.perf_counter()
            x = poisons.for_arm(Arm(args.seed, ref, none))
            generation = time.perf_counter() - started
        final, best = train_and_test(x)
        print(f"| {label} | {final:.4f} | {best:.4f} | {generation:.1f} |", flush=True)


if __name__ == "__main__":
    main()
