"""Agreement of the cheap SAL estimators with the reference, on the same snapshots and probe.

    OMP_NUM_THREADS=1 python benchmarks/sal_agreement_study.py \
        [--cases digits,cifar-resnet18,cifar-cnn] [--out ~/.cache/harness/sal-study] \
        [--epochs 8] [--train 1000] [--report-only]

For each case (the quickstart-like digits setup; 1,000 stratified CIFAR-10 training images with
the small CNN and with ResNet-18 width 16) it trains four arms, clean, class-wise random noise
(ε 8/255), OPS and sample-wise EM (a tiny budget: small-CNN surrogate, at most 10 rounds), SGD
0.05 / 0.9 / 5e-4, 8 epochs, and keeps a snapshot after every epoch. On the snapshots it then
computes, on the arm's own fixed probe (256 stratified training images, unaugmented, eval mode,
the runner's seeded shuffles), the reference (10 iterations) and the normalised-step estimators
with 1 and 2 steps, each timed in CPU seconds of this process (so other processes on a shared
machine do not distort the ratios). Probe batches: 128 (the quickstart's), 256 and 64 on digits,
on every snapshot; 256 on every snapshot and 64 on every other one for the small CNN; 256 on
every other snapshot and 64 on every fourth for ResNet-18 (the reference costs ~150 CPU s per
ResNet-18 snapshot). The reference records every iteration, so "the reference with k
iterations" and "with the convergence stop" are read from the same run (their cost is the run's,
scaled by the iterations they use).

Each estimator is scored as a run is: β from its own clean arm, UD against its own clean arm.
The report (printed, and written to OUT/report.md) gives per case and probe batch: Spearman per
epoch, learnable/not decision agreement per (epoch, layer), Jaccard of learnable sets, #LP and
UD per arm, the cost ratio against the reference, and whether the issue's bar is met (≥ 98%
decisions, |ΔUD| ≤ 0.05, ≤ 1/10 of the cost); how often the reference's copies end on the edge
of the ball; and the reference at two probe batches against itself. Results are kept per
snapshot in OUT, so a killed study resumes, and `--report-only` rebuilds the report from them
(listing unfinished settings as incomplete). Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.backbone import TaskModel, scored_layers
from harness.context import BuildContext
from harness.data import DataBundle, Subset, stratified_indices
from harness.defence import Defence
from harness.sal_agreement import Agreement, agreement
from harness.sal_estimators import (
    NormalizedStepsEstimator,
    ProbeBatches,
    ReferenceEstimator,
    SALEstimator,
    sal_value,
)
from harness.spec import TrainingSpec
from harness.training import batch_order, make_optimizer, train_epoch

TINY_SURROGATE = {"backbone": "small-cnn", "backbone_params": {"width": 16, "blocks": 3}}
ARMS: dict[str, tuple[str, dict] | None] = {
    "clean": None,
    "noise-class": ("random-noise", {"epsilon": 8 / 255, "mode": "class-wise"}),
    "ops": ("ops", {}),
    "em": ("em", {"surrogate": TINY_SURROGATE, "max_rounds": 10}),
}
PROBE = 256
ITERATIONS = 10


@dataclass(frozen=True)
class Case:
    data: str  # "digits" or "cifar"
    backbone: str
    params: dict
    batch_size: int
    augment: bool
    #: (probe batch, k): SAL with that probe batch on every k-th snapshot (the same snapshots
    #: for every estimator; k > 1 only where the reference is too costly for every epoch)
    probes: tuple[tuple[int, int], ...]
    note: str = ""


CASES = {
    "digits": Case(
        "digits",
        "small-cnn",
        {"width": 16, "blocks": 3},
        64,
        False,
        ((128, 1), (256, 1), (64, 1)),
        "quickstart: scikit-learn digits, small CNN width 16, batch 64, no augmentation",
    ),
    "cifar-cnn": Case(
        "cifar",
        "small-cnn",
        {"width": 16, "blocks": 3},
        32,
        True,
        ((256, 1), (64, 2)),
        "CIFAR-10 1,000 images, small CNN width 16 (3 conv + head), batch 32, crop+flip",
    ),
    "cifar-resnet18": Case(
        "cifar",
        "resnet18",
        {"width": 16},
        32,
        True,
        ((256, 2), (64, 4)),
        "CIFAR-10 1,000 images, CIFAR ResNet-18 width 16 (21 layers), batch 32, crop+flip",
    ),
}


def load_data(case: Case, train: int, seed: int) -> DataBundle:
    if case.data == "digits":
        from harness_plugins.datasets import DigitsParams, load_digits_bundle

        return load_digits_bundle(DigitsParams())
    from harness.archive import extract_archive
    from harness_plugins.datasets import ImageFolderParams, load_image_folder

    root = extract_archive(
        Path("/work/shared/data/cifar10-jpg.tar.xz"),
        Path("~/.cache/harness/data/cifar10-jpg").expanduser(),
    )
    return load_image_folder(
        ImageFolderParams(root=str(root)),
        BuildContext(subset=Subset(train=train, test=500, seed=seed)),
    )


def poisoned_inputs(
    arm: str,
    data: DataBundle,
    build_model: Callable[..., TaskModel],
    task: Any,
    seed: int,
) -> torch.Tensor:
    """The arm's training inputs (generated once, then read from the harness's poison cache)."""
    from harness.pluginmanager import get_components
    from harness.poison import PoisonContext
    from harness.poison_cache import PoisonCache, data_fingerprint, poison_key

    if ARMS[arm] is None:
        return data.train.x
    name, params = ARMS[arm]
    record = get_components().get("poison", name).record
    validated = record.params.model_validate(params)
    cache = PoisonCache()
    key = poison_key(
        {"name": name, "params": validated.model_dump(mode="json"), "benchmark": "sal_study"},
        {"data": data.name, "train": len(data.train)},
        data_fingerprint(data.train.x, data.train.y),
        seed,
    )
    hit = cache.load(key, tuple(data.train.x.shape))
    if hit is not None:
        return hit[0]
    started = time.perf_counter()
    ctx = PoisonContext(
        seed=seed,
        device=torch.device("cpu"),
        data=data,
        build_model=build_model,
        task_loss=task.loss,
    )
    x = record.factory(validated, BuildContext()).generate(data, ctx)
    seconds = time.perf_counter() - started
    cache.save(key, x, {"seconds": seconds})
    print(f"  generated {arm} in {seconds:.0f} s", flush=True)
    return x


@dataclass
class Study:
    name: str
    case: Case
    out: Path
    epochs: int
    train: int
    seed: int = 0
    data: DataBundle | None = None
    task: Any = None
    layers: list[str] = field(default_factory=list)

    def model(self, name: str | None = None, params: dict | None = None) -> TaskModel:
        from harness.pluginmanager import get_components

        record = get_components().get("backbone", name or self.case.backbone).record
        chosen = (params or {}) if name else self.case.params
        backbone = record.factory(
            record.params.model_validate(chosen), BuildContext(input_shape=self.data.input_shape)
        )
        return TaskModel(backbone, self.task.build(backbone.num_features, self.data))

    def prepare(self) -> None:
        from harness_plugins.tasks import Classification

        self.data = load_data(self.case, self.train, self.seed)
        self.task = Classification()
        self.layers = scored_layers(self.model())

    def recipe(self) -> TrainingSpec:
        return TrainingSpec(
            epochs=self.epochs,
            batch_size=self.case.batch_size,
            augmentation=["crop", "flip"] if self.case.augment else [],
            optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            schedule={"name": "constant"},
        )

    def sal_epochs(self, batch: int) -> list[int]:
        """The snapshots SAL is computed on at this probe batch: every k-th, ending at the last."""
        every = dict(self.case.probes)[batch]
        return list(range(self.epochs, 0, -every))[::-1]

    def complete(self, batch: int) -> bool:
        return all(
            (self.arm_dir(arm) / f"sal-epoch{e}-b{batch}.json").exists()
            for arm in ARMS
            for e in self.sal_epochs(batch)
        )

    def arm_dir(self, arm: str) -> Path:
        return self.out / self.name / arm

    def train_arm(self, arm: str) -> None:
        """Snapshots after every epoch, and each epoch's training time and running loss."""
        folder = self.arm_dir(arm)
        log = folder / "training.json"
        if log.exists():
            return
        folder.mkdir(parents=True, exist_ok=True)
        x = poisoned_inputs(arm, self.data, self.model, self.task, self.seed)
        torch.save(x, folder / "inputs.pt")
        torch.manual_seed(self.seed)
        model = self.model()
        recipe = self.recipe()
        optimizer = make_optimizer(model, recipe.optimizer)
        g = torch.Generator().manual_seed(self.seed)
        split = self.data.train.with_inputs(x)
        rows = []
        for epoch in range(1, self.epochs + 1):
            t0 = time.perf_counter()
            loss = train_epoch(
                model,
                split,
                self.task,
                Defence(),
                recipe,
                optimizer,
                g,
                torch.device("cpu"),
                epoch,
                self.data.num_classes,
                self.data.value_range,
            )
            rows.append(
                {"epoch": epoch, "train_seconds": time.perf_counter() - t0, "train_loss": loss}
            )
            torch.save(model.state_dict(), folder / f"epoch{epoch}.pt")
            print(
                f"  {self.name} {arm} epoch {epoch}: loss {loss:.3f} ({rows[-1]['train_seconds']:.1f} s)",
                flush=True,
            )
        log.write_text(json.dumps(rows, indent=1))

    def probe(self, arm: str, epoch: int, batch: int) -> ProbeBatches:
        """The runner's probe: fixed stratified indices, its seeded shuffles, eval batches in order."""
        x = torch.load(self.arm_dir(arm) / "inputs.pt")
        idx = torch.as_tensor(stratified_indices(self.data.train.y.numpy(), PROBE, self.seed))
        xp, yp = x[idx], self.data.train.y[idx]
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(xp)
        return ProbeBatches.from_samples(
            xp,
            yp,
            lambda _: batch_order(n, batch, g, drop_last=True),
            lambda _: list(torch.arange(n).split(batch)),
        )

    def sal_snapshot(self, arm: str, epoch: int, batch: int) -> dict:
        path = self.arm_dir(arm) / f"sal-epoch{epoch}-b{batch}.json"
        if path.exists():
            return json.loads(path.read_text())
        model = self.model()
        model.load_state_dict(torch.load(self.arm_dir(arm) / f"epoch{epoch}.pt"))
        estimators: dict[str, SALEstimator] = {
            "reference": ReferenceEstimator(iterations=ITERATIONS, record=True),
            "normalized-steps-1": NormalizedStepsEstimator(steps=1),
            "normalized-steps-2": NormalizedStepsEstimator(steps=2),
        }
        out: dict[str, Any] = {}
        for label, estimator in estimators.items():
            probe = self.probe(arm, epoch, batch)
            t0, c0 = time.perf_counter(), time.process_time()
            result = estimator.estimate(model, self.layers, self.task.loss, probe)
            out[label] = {
                "seconds": time.process_time() - c0,
                "wall_seconds": time.perf_counter() - t0,
                "values": result.values,
                "up": result.ascent_losses,
                "down": result.descent_losses,
                "base": result.base_loss,
                "paths": result.paths,
                "notes": result.notes,
            }
            if result.traces:
                out[label]["traces"] = {
                    name: [
                        [s.ascent_loss, s.descent_loss, s.ascent_distance, s.descent_distance]
                        for s in steps
                    ]
                    for name, steps in result.traces.items()
                }
        path.write_text(json.dumps(out))
        return out

    def run(self) -> None:
        for arm in ARMS:
            self.train_arm(arm)
        for batch, _ in self.case.probes:
            for arm in ARMS:
                for epoch in self.sal_epochs(batch):
                    t0 = time.perf_counter()
                    self.sal_snapshot(arm, epoch, batch)
                    print(
                        f"  {self.name} b{batch} {arm} epoch {epoch}: SAL done ({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )


# --- derived estimators and the report -------------------------------------------------------------


def truncated_reference(
    snapshot: dict, iterations: int | None, stop: bool = False
) -> tuple[list[float], float]:
    """SAL from the first `iterations` of the recorded reference (or up to its convergence stop),
    and the share of the run's iterations used (its cost relative to the full run)."""
    ref = snapshot["reference"]
    values, used = [], []
    for name, steps in ref["traces"].items():
        best_up, best_down, n = -np.inf, np.inf, 0
        for up, down, _, _ in steps[: iterations or len(steps)]:
            n += 1
            improved = up > best_up or down < best_down
            best_up, best_down = max(best_up, up), min(best_down, down)
            if stop and not improved:
                break
        values.append(sal_value(ref["base"], best_up, best_down))
        used.append(n / len(steps))
        del name
    return values, float(np.mean(used))


def collect(
    study: Study, batch: int, epochs: list[int] | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """Per estimator: arm → SAL array (epochs × layers); and per estimator: total CPU seconds."""
    arrays: dict[str, dict[str, list]] = {}
    seconds: dict[str, float] = {}

    def add(label: str, arm: str, values: list[float], secs: float) -> None:
        arrays.setdefault(label, {}).setdefault(arm, []).append(values)
        seconds[label] = seconds.get(label, 0.0) + secs

    for arm in ARMS:
        for epoch in epochs or study.sal_epochs(batch):
            snap = study.sal_snapshot(arm, epoch, batch)
            for label in ("reference", "normalized-steps-1", "normalized-steps-2"):
                add(label, arm, snap[label]["values"], snap[label]["seconds"])
            ref_s = snap["reference"]["seconds"]
            for k in (1, 2, 3, 5):
                values, share = truncated_reference(snap, k)
                add(f"reference-{k}-iterations", arm, values, ref_s * share)
            values, share = truncated_reference(snap, None, stop=True)
            add("reference-convergence-stop", arm, values, ref_s * share)
    return {
        label: {arm: np.array(v) for arm, v in per.items()} for label, per in arrays.items()
    }, seconds


def ball_reach(study: Study, batch: int) -> dict[str, float]:
    """How the reference's copies end: on the sphere, and still improving at the last iteration."""
    up_on, down_on, improving, cells = 0, 0, 0, 0
    for arm in ARMS:
        for epoch in study.sal_epochs(batch):
            snap = study.sal_snapshot(arm, epoch, batch)
            for steps in snap["reference"]["traces"].values():
                cells += 1
                up_on += int(steps[-1][2] >= 0.999)
                down_on += int(steps[-1][3] >= 0.999)
                ups = [s[0] for s in steps]
                downs = [s[1] for s in steps]
                improving += int(ups[-1] > max(ups[:-1]) or downs[-1] < min(downs[:-1]))
    n = max(cells, 1)
    return {"cells": cells, "up_on": up_on / n, "down_on": down_on / n, "improving": improving / n}


def format_case(study: Study, batch: int) -> str:
    arrays, seconds = collect(study, batch)
    ref = arrays["reference"]
    epochs = study.sal_epochs(batch)
    snapshots = len(ARMS) * len(epochs)
    lines = [
        f"### {study.name}, probe {PROBE} at batch {batch}",
        "",
        f"{study.case.note}; {len(ARMS)} arms, SAL on the snapshots of epochs {', '.join(map(str, epochs))}. "
        f"Reference (cached path): {seconds['reference'] / snapshots:.1f} CPU s per snapshot.",
        "",
        "| estimator | Spearman | decisions | Jaccard | max abs ΔUD | cost vs reference | bar |",
        "|---|---|---|---|---|---|---|",
    ]
    results: dict[str, Agreement] = {}
    for label, per_arm in arrays.items():
        if label == "reference":
            continue
        a = agreement(ref, per_arm, "clean", seconds["reference"], seconds[label])
        results[label] = a
        lines.append(
            f"| {label} | {a.spearman:.3f} | {a.decisions:.1%} | {a.jaccard:.3f} | {a.max_ud_difference:.3f} | "
            f"1/{1 / a.cost_ratio:.1f} | {'passes' if a.passes() else 'fails'} |"
        )
    lines += [
        "",
        "| arm | " + " | ".join(["reference", *results]) + " |",
        "|---|" + "---|" * (len(results) + 1),
    ]
    base = next(iter(results.values()))
    for i, arm in enumerate(ARMS):
        cells = [f"{base.arms[i].lp_reference:.2f} / {_ud(base.arms[i].ud_reference)}"]
        cells += [
            f"{r.arms[i].lp_estimate:.2f} / {_ud(r.arms[i].ud_estimate)}" for r in results.values()
        ]
        lines.append(f"| {arm} (#LP / UD) | " + " | ".join(cells) + " |")
    reach = ball_reach(study, batch)
    lines += [
        "",
        f"Reference after its 10 iterations, over {reach['cells']} (epoch, layer) cells: the ascent copy "
        f"ends on the edge of the ball in {reach['up_on']:.0%}, the descent copy in {reach['down_on']:.0%}; "
        f"the 10th iteration still improved a best loss in {reach['improving']:.0%}.",
        "",
    ]
    return "\n".join(lines)


def _ud(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def cross_batch(study: Study) -> str:
    """The reference at its first and last probe batch, against each other: the probe's own effect."""
    b0, b1 = study.case.probes[0][0], study.case.probes[-1][0]
    common = sorted(set(study.sal_epochs(b0)) & set(study.sal_epochs(b1)))
    r0, _ = collect(study, b0, common)
    r1, _ = collect(study, b1, common)
    a = agreement(r0["reference"], r1["reference"], "clean")
    uds = ", ".join(f"{x.arm} {_ud(x.ud_reference)}→{_ud(x.ud_estimate)}" for x in a.arms)
    return (
        f"Reference at batch {b1} against the reference at batch {b0} ({study.name}, epochs "
        f"{', '.join(map(str, common))}): Spearman {a.spearman:.3f}, decisions {a.decisions:.1%}, "
        f"max abs ΔUD {a.max_ud_difference:.3f} (UD {uds}).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="digits,cifar-resnet18,cifar-cnn")
    parser.add_argument("--out", default="~/.cache/harness/sal-study")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--train", type=int, default=1000, help="CIFAR training images (stratified)"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).expanduser()
    studies = []
    for name in args.cases.split(","):
        study = Study(name, CASES[name], out, args.epochs, args.train)
        study.prepare()
        print(
            f"{name}: {len(study.data.train)} training images, {len(study.layers)} scored layers, "
            f"{torch.get_num_threads()} threads",
            flush=True,
        )
        if not args.report_only:
            study.run()
        studies.append(study)
    report = ["# SAL estimators against the reference", ""]
    for study in studies:
        done = [batch for batch, _ in study.case.probes if study.complete(batch)]
        for batch, _ in study.case.probes:
            if batch in done:
                report.append(format_case(study, batch))
            else:
                report.append(f"### {study.name}, probe batch {batch}: incomplete\n")
        if len(done) == len(study.case.probes):
            report.append(cross_batch(study))
    text = "\n".join(report)
    (out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
