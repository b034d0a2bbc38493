"""Cost of each SAL estimator per epoch, and the exact cache's speed-up, within one process.

    OMP_NUM_THREADS=1 python benchmarks/sal_estimators.py [--cases digits,cifar-resnet18]
        [--epochs 3] [--repeats 2] [--train 1000]

For each case it trains a model a few epochs (in memory), then on one fixed probe (256
stratified training images, unaugmented, the runner's shuffles) times one training epoch and
the SAL of every scored layer with: the reference on the plain path (today's code), the
reference with the cached frozen prefix, and the normalised-step estimators. Times are CPU
seconds of this process (`time.process_time`; run it with one thread), so other processes on
the machine do not inflate them; each is the best of `--repeats` interleaved runs.
It prints a table of seconds, multiples of one training epoch and ratios to the plain and cached
reference, and the largest relative difference between the cached and plain reference (values,
ascent and descent losses; the bar is 1e-5). Nothing is asserted: timings depend on the machine.

Cases: `digits` is the quickstart (scikit-learn digits, small CNN width 16, probe batch 128);
`cifar-resnet18` is CIFAR ResNet-18 width 16 on 1,000 CIFAR-10 training images (probe batch 256,
the spec default), which needs the archive: `harness data extract ../shared/data/cifar10-jpg.tar.xz`
(the script extracts it into the cache itself when it is at /work/shared/data).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.backbone import TaskModel, scored_layers
from harness.context import BuildContext
from harness.data import DataBundle, Subset, stratified_indices
from harness.defence import Defence
from harness.sal_estimators import (
    NormalizedStepsEstimator,
    ProbeBatches,
    ReferenceEstimator,
    SALEstimator,
    SALResult,
)
from harness.spec import TrainingSpec
from harness.training import batch_order, make_optimizer, train_epoch

ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.xz")


@dataclass(frozen=True)
class Case:
    data: str
    backbone: str
    params: dict
    batch_size: int
    augment: bool
    probe_batch: int


CASES = {
    "digits": Case("digits", "small-cnn", {"width": 16, "blocks": 3}, 64, False, 128),
    "cifar-cnn": Case("cifar", "small-cnn", {"width": 16, "blocks": 3}, 32, True, 256),
    "cifar-resnet18": Case("cifar", "resnet18", {"width": 16}, 32, True, 256),
}
ESTIMATORS: dict[str, Callable[[], SALEstimator]] = {
    "reference, plain path": lambda: ReferenceEstimator(cache=False),
    "reference, cached prefix": lambda: ReferenceEstimator(),
    "normalized-steps, 1 step": lambda: NormalizedStepsEstimator(steps=1),
    "normalized-steps, 2 steps": lambda: NormalizedStepsEstimator(steps=2),
}


def load(case: Case, train: int) -> DataBundle:
    if case.data == "digits":
        from harness_plugins.datasets import DigitsParams, load_digits_bundle

        return load_digits_bundle(DigitsParams())
    from harness.archive import extract_archive
    from harness_plugins.datasets import ImageFolderParams, load_image_folder

    root = extract_archive(ARCHIVE, Path("~/.cache/harness/data/cifar10-jpg").expanduser())
    return load_image_folder(
        ImageFolderParams(root=str(root)),
        BuildContext(subset=Subset(train=train, test=200, seed=0)),
    )


def build(case: Case, data: DataBundle, task) -> TaskModel:
    from harness.pluginmanager import get_components

    record = get_components().get("backbone", case.backbone).record
    backbone = record.factory(
        record.params.model_validate(case.params), BuildContext(input_shape=data.input_shape)
    )
    return TaskModel(backbone, task.build(backbone.num_features, data))


def probe_for(data: DataBundle, batch: int, epoch: int) -> ProbeBatches:
    """The runner's probe: fixed stratified indices, its seeded shuffles, eval batches in order."""
    idx = torch.as_tensor(stratified_indices(data.train.y.numpy(), 256, 0))
    x, y = data.train.x[idx], data.train.y[idx]
    g = torch.Generator().manual_seed(epoch)
    n = len(x)
    return ProbeBatches.from_samples(
        x,
        y,
        lambda _: batch_order(n, batch, g, drop_last=True),
        lambda _: list(torch.arange(n).split(batch)),
    )


def max_relative_difference(a: SALResult, b: SALResult) -> float:
    """Largest |a − b| / |b| over values, ascent and descent losses (|b| floored at 1e-12)."""
    worst = 0.0
    for field in ("values", "ascent_losses", "descent_losses"):
        x, y = np.array(getattr(a, field)), np.array(getattr(b, field))
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-12))))
    return worst


def run_case(name: str, case: Case, epochs: int, repeats: int, train: int) -> None:
    from harness_plugins.tasks import Classification

    data = load(case, train)
    task = Classification()
    torch.manual_seed(0)
    model = build(case, data, task)
    layers = scored_layers(model)
    recipe = TrainingSpec(
        epochs=epochs + 1,
        batch_size=case.batch_size,
        augmentation=["crop", "flip"] if case.augment else [],
        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    )
    optimizer = make_optimizer(model, recipe.optimizer)
    g = torch.Generator().manual_seed(0)

    def one_epoch(epoch: int) -> float:
        t0 = time.process_time()
        train_epoch(model, data.train, task, Defence(), recipe, optimizer, g, torch.device("cpu"), epoch,
                    data.num_classes, data.value_range)  # fmt: skip
        return time.process_time() - t0

    for epoch in range(1, epochs + 1):
        one_epoch(epoch)
    train_s = []
    seconds: dict[str, list[float]] = {label: [] for label in ESTIMATORS}
    results: dict[str, SALResult] = {}
    for _ in range(repeats):
        train_s.append(one_epoch(epochs + 1))
        for label, make in ESTIMATORS.items():
            probe = probe_for(data, case.probe_batch, epochs)
            t0 = time.process_time()
            results[label] = make().estimate(model, layers, task.loss, probe)
            seconds[label].append(time.process_time() - t0)
    train_best = min(train_s)
    best = {label: min(s) for label, s in seconds.items()}
    plain, cached = best["reference, plain path"], best["reference, cached prefix"]
    print(f"\n{name}: {len(data.train)} training images, {len(layers)} scored layers, probe 256 at batch "
          f"{case.probe_batch}, {torch.get_num_threads()} thread(s), best of {repeats}")  # fmt: skip
    print(f"one training epoch (batch {case.batch_size}): {train_best:.2f} CPU s\n")
    print(
        "| SAL estimator | CPU seconds | × training epoch | cost / plain ref. | cost / cached ref. |"
    )
    print("|---|---|---|---|---|")
    for label, s in best.items():
        print(f"| {label} | {s:.2f} | {s / train_best:.1f} | {s / plain:.3f} | {s / cached:.3f} |")
    diff = max_relative_difference(
        results["reference, cached prefix"], results["reference, plain path"]
    )
    identical = (
        results["reference, cached prefix"].values == results["reference, plain path"].values
    )
    print(f"\ncached vs plain reference: {plain / cached:.2f}× faster, max relative difference {diff:.1e}"
          f" ({'bit-identical' if identical else 'not bit-identical'}); "
          f"paths {sorted(set(results['reference, cached prefix'].paths))}")  # fmt: skip
    notes = results["reference, cached prefix"].notes
    if notes:
        print("notes: " + "; ".join(notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="digits,cifar-resnet18")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs before timing")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train", type=int, default=1000, help="CIFAR training images")
    args = parser.parse_args()
    for name in args.cases.split(","):
        run_case(name, CASES[name], args.epochs, args.repeats, args.train)


if __name__ == "__main__":
    main()
