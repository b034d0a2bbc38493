"""The GPU check: training throughput, each SAL estimator's cost, 2 epochs of a Table 1 arm.

    bash benchmarks/gpu_check.sh            # on a machine with one CUDA GPU, under 8 minutes
    python benchmarks/gpu_check.py --device cpu --images 512 --probe 128   # a CPU smoke run

1. Training throughput of the CIFAR ResNet-18 (width 64, the paper's) on CIFAR-size tensors
   (random images, 10 classes), batch 256, in float32 and under AMP, with the engine as a run
   uses it (channels_last, cudnn.benchmark, the loss summed on the device).
2. Each estimator's SAL cost on that model after one epoch, on the Table 1 spec's probe
   (5,000 images at batch 256, float32): the reference at 1 and 2 iterations (extrapolated to
   the spec's 10, the per-iteration cost being linear), normalised steps with 1 and 2 steps;
   as seconds and as a multiple of one training epoch over 50,000 images; then the projected
   GPU-hours of the paper-scale Table 1 (7 arms × 50 epochs) with each.
3. Two epochs of one Table 1 arm end to end (`harness eval`, OPS, the normalised-step
   estimator) on a synthetic CIFAR-size image folder written to a temporary folder.

Times are wall-clock seconds around `torch.cuda.synchronize()`. Results are printed; with
`--out DIR` also written to DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from harness.api import (
    BuildContext,
    NormalizedStepsEstimator,
    ProbeBatches,
    ReferenceEstimator,
    SALEstimator,
)
from harness.backbone import TaskModel, scored_layers
from harness.data import Split
from harness.defence import Defence
from harness.pluginmanager import get_components
from harness.spec import TrainingSpec
from harness.training import batch_order, make_optimizer, prefer_channels_last, train_epoch

FULL_TRAIN = 50_000
TABLE1_ARMS, TABLE1_EPOCHS = 7, 50


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(device: torch.device, width: int) -> TaskModel:
    components = get_components()
    record = components.get("backbone", "resnet18").record
    backbone = record.factory(
        record.params.model_validate({"width": width}), BuildContext(input_shape=(3, 32, 32))
    )
    task = components.build("task", "classification", {})
    model = TaskModel(backbone, task.build(backbone.num_features, SimpleNamespace(num_classes=10)))
    return prefer_channels_last(model.to(device), device), task


def throughput(
    device: torch.device, images: int, width: int, amp: bool
) -> tuple[float, TaskModel, object, Split]:
    torch.manual_seed(0)
    x = torch.rand(images, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (images,), device=device)
    train = Split(x, y)
    model, task = build_model(device, width)
    recipe = TrainingSpec(
        epochs=1,
        batch_size=256,
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        augmentation=["crop", "flip"],
        amp=amp,
    )
    optimizer = make_optimizer(model, recipe.optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    generator = torch.Generator().manual_seed(0)

    def epoch(e: int) -> float:
        sync(device)
        started = time.perf_counter()
        train_epoch(
            model,
            train,
            task,
            Defence(),
            recipe,
            optimizer,
            generator,
            device,
            e,
            10,
            (0, 1),
            scaler,
        )
        sync(device)
        return time.perf_counter() - started

    epoch(1)  # warm-up: cudnn.benchmark picks its algorithms
    seconds = min(epoch(2), epoch(3))
    return images / seconds, model, task, train


def estimator_costs(
    model: TaskModel, task, train: Split, device: torch.device, probe: int
) -> dict[str, float]:
    layers = scored_layers(model)
    x, y = train.x[:probe], train.y[:probe]
    g = torch.Generator().manual_seed(0)
    batches = ProbeBatches.from_samples(
        x,
        y,
        train_order=lambda _: batch_order(len(x), 256, g, drop_last=True),
        eval_order=lambda _: list(torch.arange(len(x)).split(256)),
    )

    def timed(estimator: SALEstimator) -> float:
        sync(device)
        started = time.perf_counter()
        estimator.estimate(model, layers, task.loss, batches)
        sync(device)
        return time.perf_counter() - started

    timed(NormalizedStepsEstimator(steps=1))  # warm-up
    one = timed(ReferenceEstimator(iterations=1))
    two = timed(ReferenceEstimator(iterations=2))
    return {
        "reference, 10 iterations (from 1 and 2)": one + 9 * max(two - one, 0.0),
        "normalized-steps, 1 step": timed(NormalizedStepsEstimator(steps=1)),
        "normalized-steps, 2 steps": timed(NormalizedStepsEstimator(steps=2)),
    }


def table1_arm(device: str, images: int, epochs: int) -> float:
    """Two epochs of clean and OPS arms of the Table 1 spec on a synthetic image folder."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        rng = np.random.default_rng(0)
        for split, count in (("train", images), ("test", max(images // 5, 20))):
            for c in range(10):
                folder = root / split / f"class{c}"
                folder.mkdir(parents=True)
                for i in range(count // 10):
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
        sets = [
            f"data.params.root={root}",
            f"training.epochs={epochs}",
            f"training.device={device}",
            "poisons=[{name: ops}]",
            "sal.estimator=normalized-steps",
            "sal.probe_size=5000",
        ]
        if device == "cpu":
            sets += ["training.amp=false", "backbone.params={width: 8}", "sal.probe_size=128"]
        command = [
            sys.executable,
            "-m",
            "harness.cli",
            "eval",
            "specs/table1-cifar10-resnet18.yaml",
        ]
        command += [arg for s in sets for arg in ("--set", s)]
        command += ["--output", str(Path(tmp) / "runs"), "--quiet"]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=10_000, help="images per training epoch")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--probe", type=int, default=5_000)
    parser.add_argument("--arm-images", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run with --device cpu for a smoke run")
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    }
    print(f"device: {results['device']}, torch {torch.__version__}")

    fp32, model, task, train = throughput(device, args.images, args.width, amp=False)
    amp, *_ = throughput(device, args.images, args.width, amp=True)
    epoch_fp32, epoch_amp = FULL_TRAIN / fp32, FULL_TRAIN / amp
    results["images_per_second"] = {"float32": fp32, "amp": amp}
    print(f"1. training ResNet-18 w{args.width}: {fp32:,.0f} images/s float32, {amp:,.0f} AMP")
    print(f"   one epoch of 50,000 images: {epoch_fp32:.1f} s float32, {epoch_amp:.1f} s AMP")

    costs = estimator_costs(model, task, train, device, min(args.probe, args.images))
    results["sal_seconds"] = costs
    print(f"2. SAL per epoch ({len(scored_layers(model))} layers, probe {args.probe} at 256):")
    projected = {}
    for label, seconds in costs.items():
        hours = TABLE1_ARMS * TABLE1_EPOCHS * (epoch_amp + seconds) / 3600
        projected[label] = hours
        print(
            f"   {label:42} {seconds:8.1f} s  {seconds / epoch_amp:6.1f}× an AMP epoch  "
            f"Table 1: {hours:5.2f} GPU-hours"
        )
    results["table1_gpu_hours"] = projected

    seconds = table1_arm(args.device, args.arm_images, 2)
    results["table1_two_epochs_seconds"] = seconds
    print(
        f"3. Table 1 spec, clean + OPS arms, 2 epochs on {args.arm_images} images: {seconds:.0f} s"
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
