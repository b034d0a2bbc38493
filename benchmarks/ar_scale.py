"""docs/ar.md's scale study: does AR bite a CIFAR ResNet-18 w16 given more steps or more images?

    python benchmarks/ar_scale.py [--root ~/.cache/harness/data/cifar10-jpg] [--out FILE.md]
        [--scales 2000x30,2000x60,5000x30]

Unpack the data first: `harness data extract ../shared/data/cifar10-jpg.tar.xz`.

At each scale (training images × epochs) the same victim is trained three times, on the clean
subset and on the subset poisoned by the `ar` plugin with each of its two process searches
(`max-min`, the default, and `sequential`, the authors' acceptance rule). Reported at the last
epoch: test accuracy, and accuracy on the poisoned training images beside their clean versions
(a model that learned the noise shortcut does better on the former).

Everything here was fixed before any number of the 60-epoch and 5,000-image scales was seen
(the 2,000 × 30 scale repeats the first study of docs/ar.md): CIFAR-10 image folder, stratified
subsets (subset seed 0), 1,000 test images; CIFAR ResNet-18 width 16; crop and flip; batch 32;
SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine schedule; seed 0; AR noise scaled to L2
norm 1 (the authors' default). "Bites", decided in advance: final test accuracy ≤ 0.35, or
poisoned-train accuracy at least 0.10 above clean-train accuracy.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
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

#: the `ar` plugin's two process searches, each a poison of the study
SEARCHES = {"ar max-min": {"search": "max-min"}, "ar sequential": {"search": "sequential"}}
VICTIM = {"width": 16}
BITES_TEST = 0.35
BITES_GAP = 0.10


@dataclass
class Outcome:
    scale: str
    data: str
    test: float
    train_poisoned: float
    train_clean: float
    seconds: float

    @property
    def bites(self) -> bool | None:
        if self.data == "clean":
            return None
        return self.test <= BITES_TEST or self.train_poisoned - self.train_clean >= BITES_GAP


def spec_for(root: Path, train: int, epochs: int):
    return spec_from_data(
        {
            "name": "ar-scale",
            "data": {
                "name": "image-folder",
                "params": {"root": str(root)},
                "subset": {"train": train, "test": 1000, "seed": 0},
            },
            "backbone": {"name": "resnet18", "params": VICTIM},
            "training": {
                "epochs": epochs,
                "batch_size": 32,
                "augmentation": ["crop", "flip"],
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
                "schedule": {"name": "cosine"},
            },
            "poisons": [
                {"name": "ar", "label": label.replace(" ", "-"), "params": params}
                for label, params in SEARCHES.items()
            ],
            "seeds": [0],
        },
        get_components(),
        origin="benchmarks/ar_scale.py",
    )


def study(root: Path, train: int, epochs: int) -> list[Outcome]:
    spec = spec_for(root, train, epochs)
    assembly = Assembly.from_spec(spec, get_components())
    poisons = PoisonedInputs(assembly)
    data, tasks, device, recipe = assembly.data, assembly.tasks, assembly.device, spec.spec.training
    none = spec.spec.defences[0]
    scale = f"{len(data.train)} images × {epochs} epochs"
    inputs = {"clean": data.train.x}
    for label in SEARCHES:
        ref = next(p for p in spec.spec.poisons if p.key == label.replace(" ", "-"))
        inputs[label] = poisons.for_arm(Arm(0, ref, none))
    outcomes = []
    for label, x in inputs.items():
        started = time.perf_counter()
        torch.manual_seed(0)
        model = assembly.build_model(ComponentRef(name="resnet18", params=VICTIM)).to(device)
        optimizer = make_optimizer(model, recipe.optimizer)
        scheduler = make_scheduler(optimizer, recipe.schedule, recipe.epochs)
        g = torch.Generator().manual_seed(0)
        train_split = data.train.with_inputs(x)
        for epoch in range(1, epochs + 1):
            train_epoch(
                model,
                train_split,
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
        outcome = Outcome(
            scale,
            label,
            evaluate(model, data.test, tasks, 512, device)[1],
            evaluate(model, train_split, tasks, 512, device)[1],
            evaluate(model, data.train, tasks, 512, device)[1],
            time.perf_counter() - started,
        )
        print(f"  {outcome}", flush=True)
        outcomes.append(outcome)
    return outcomes


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "| scale | data | test accuracy | train acc. (poisoned images) | "
        "train acc. (clean versions) | bites | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        bites = "—" if o.bites is None else ("yes" if o.bites else "no")
        lines.append(
            f"| {o.scale} | {o.data} | {o.test:.3f} | {o.train_poisoned:.3f} | "
            f"{o.train_clean:.3f} | {bites} | {o.seconds / 60:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="~/.cache/harness/data/cifar10-jpg")
    parser.add_argument("--scales", default="2000x30,2000x60,5000x30", help="IMAGESxEPOCHS,...")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    root = Path(args.root).expanduser()
    outcomes = []
    for scale in args.scales.split(","):
        train, epochs = (int(v) for v in scale.split("x"))
        print(f"scale {train} x {epochs}", flush=True)
        outcomes += study(root, train, epochs)
    table = markdown(outcomes)
    print(table)
    if args.out is not None:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
