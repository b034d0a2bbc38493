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

from harness.backbone import TaskModel
from harness.defence import Defence
from harness.pluginmanager import get_components
from harness.poison import PoisonContext
from harness.poison_cache import PoisonCache, data_fingerprint, poison_key
from harness.spec import TrainingSpec
from harness.training import evaluate, make_optimizer, train_epoch

TINY_SURROGATE = {"backbone": "small-cnn", "backbone_params": {"width": 16, "blocks": 3}}

# CPU-scale parameters: the papers' defaults except for surrogate size and training budget.
METHODS: dict[str, tuple[str, dict]] = {
    "random-noise": ("random-noise", {}),
    "random-noise-class": ("random-noise", {"mode": "class-wise"}),
    "em": ("em", {"surrogate": TINY_SURROGATE, "max_rounds": 15}),
    "em-class": ("em", {"mode": "class-wise", "surrogate": TINY_SURROGATE, "max_rounds": 15}),
    # REM's min-min-max inner loop is the costliest of all: the CPU Table 1 spec's budget
    "rem": ("rem", {"surrogate": TINY_SURROGATE, "train_steps": 100, "lr_decay_every": 75, "attack_steps": 3,
                    "attack_step_size": 0.0105, "eot_samples": 2}),
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
    parser.add_argument("--batch-size", type=int, default=32,
                        help="small batches: a 2,000-image subset needs many SGD steps before a shortcut is learned")
    parser.add_argument("--methods", default=",".join(["clean", *METHODS]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18", help="the trained model (not the surrogates)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--no-augment", action="store_true", help="train without crop and flip")
    args = parser.parse_args()

    from harness_plugins.datasets import ImageFolderParams, load_image_folder
    from harness_plugins.tasks import Classification

    components = get_components()
    cache = PoisonCache()  # generation time is the first run's, kept with the cached poison
    data = load_image_folder(ImageFolderParams(root=str(Path(args.root).expanduser())),
                             subset={"train": args.train, "test": args.test, "seed": args.seed})
    task = Classification()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = TrainingSpec(epochs=args.epochs, batch_size=args.batch_size,
                          augmentation=[] if args.no_augment else ["crop", "flip"],
                          optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                          schedule={"name": "cosine"})

    victim = {"width": args.width, **({"blocks": 3} if args.backbone == "small-cnn" else {})}

    def build_model(name: str | None = None, params: dict | None = None) -> TaskModel:
        record = components.get("backbone", name or args.backbone).record
        backbone = record.factory(record.params.model_validate((params or {}) if name else victim), data.input_shape)
        return TaskModel(backbone, task.build(backbone.num_features, data))

    def train_and_test(x: torch.Tensor) -> tuple[float, float]:
        torch.manual_seed(args.seed)
        model = build_model().to(device)
        optimizer = make_optimizer(model, recipe.optimizer)
        from harness.training import make_scheduler

        scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs)
        g = torch.Generator().manual_seed(args.seed)
        train = data.train.with_inputs(x)
        accs = []
        for epoch in range(1, recipe.epochs + 1):
            train_epoch(model, train, task, Defence(), recipe, optimizer, g, device, epoch,
                        data.num_classes, data.value_range)
            scheduler.step()
            accs.append(evaluate(model, data.test, task, 512, device)[1])
        return accs[-1], max(accs)

    print(f"CIFAR-10 folder, {len(data.train)} train / {len(data.test)} test, {args.backbone} width "
          f"{args.width}, {args.epochs} epochs of batch {args.batch_size}, augmentation {recipe.augmentation or 'none'}, device {device}")
    print("| method | test acc (final) | test acc (best) | generation s |")
    print("|---|---|---|---|")
    for label in args.methods.split(","):
        started = time.perf_counter()
        generation = 0.0
        if label == "clean":
            x = data.train.x
        else:
            name, params = METHODS[label]
            record = components.get("poison", name).record
            poison = record.factory(record.params.model_validate(params))
            ctx = PoisonContext(seed=args.seed, device=device, data=data, build_model=build_model,
                                task_loss=task.loss)
            key = poison_key({"name": name, "params": record.params.model_validate(params).model_dump(mode="json"),
                              "benchmark": "poison_accuracy"}, {"root": args.root, "train": args.train},
                             data_fingerprint(data.train.x, data.train.y), args.seed)
            hit = cache.load(key, tuple(data.train.x.shape))
            if hit is not None:
                x, generation = hit[0], float(hit[1].get("seconds", float("nan")))
            else:
                x = poison.generate(data, ctx)
                generation = time.perf_counter() - started
                cache.save(key, x, {"seconds": generation})
        final, best = train_and_test(x)
        print(f"| {label} | {final:.4f} | {best:.4f} | {generation:.1f} |", flush=True)


if __name__ == "__main__":
    main()
