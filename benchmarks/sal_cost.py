"""SAL cost per epoch of each estimator, as a multiple of one training epoch.

    OMP_NUM_THREADS=1 python benchmarks/sal_cost.py [--cases quickstart,cifar-resnet18] [--epochs 2]

Cases: the quickstart spec as shipped; and `specs/cifar10-folder-cpu.yaml` with the CIFAR
ResNet-18 of width 16 (21 scored layers), batch 32, a 256-image probe at batch 256 and 10
iterations (the spec defaults). Each case trains its clean arm in memory (no run folder) and
times, after every epoch, one training epoch and SAL of every scored layer with each
estimator: the reference through the exact prefix cache (what a run uses), the reference on the
plain path, and `normalized-steps` with 1 and 2 steps, all built through the plugin registry
from the spec's SAL section. Times are CPU seconds of this process (`time.process_time`), so
other jobs on a shared machine do not distort the ratios; medians over epochs are printed.
Nothing is asserted: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.api import BuildContext, ReferenceEstimator, SALEstimator
from harness.assembly import Assembly
from harness.defence import Defence
from harness.pluginmanager import Components, get_components
from harness.probe import SALProbe
from harness.specfile import load_spec
from harness.training import make_optimizer, train_epoch

CASES: dict[str, tuple[str, list[str]]] = {
    "quickstart": ("specs/quickstart.yaml", []),
    "cifar-resnet18": (
        "specs/cifar10-folder-cpu.yaml",
        [
            "backbone={name: resnet18, params: {width: 16}}",
            "training.batch_size=32",
            "sal={estimator: reference, iterations: 10, probe_size: 256, probe_batch_size: 256}",
        ],
    ),
}


def estimators(assembly: Assembly, components: Components) -> dict[str, SALEstimator]:
    sal = assembly.spec.sal
    context = BuildContext(sal=sal)
    return {
        "reference (cached prefix)": components.build("sal_estimator", "reference", {}, context),
        "reference (plain path)": ReferenceEstimator(
            sal.epsilon, sal.iterations, sal.inner_lr, cache=False
        ),
        "normalized-steps, 1 step": components.build(
            "sal_estimator", "normalized-steps", {"steps": 1}, context
        ),
        "normalized-steps, 2 steps": components.build(
            "sal_estimator", "normalized-steps", {"steps": 2}, context
        ),
    }


def run_case(name: str, epochs: int, components: Components) -> None:
    path, overrides = CASES[name]
    loaded = load_spec(path, components, overrides)
    assembly = Assembly.from_spec(loaded, components)
    data, tasks, device = assembly.data, assembly.tasks, assembly.device
    spec = loaded.spec
    torch.manual_seed(0)
    model = assembly.build_model().to(device)
    optimizer = make_optimizer(model, spec.training.optimizer)
    generator = torch.Generator().manual_seed(0)
    chosen = estimators(assembly, components)
    probes = {
        label: SALProbe(
            spec.sal,
            spec.training.augmentation,
            tasks,
            assembly.layers,
            assembly.task_layers,
            data.train,
            Defence(),
            seed=0,
            autocast=assembly.sal_autocast,
            estimator=estimator,
        )
        for label, estimator in chosen.items()
    }
    print(
        f"\n{name}: {path} {' '.join(overrides)}\n  {len(data.train)} training samples, "
        f"{len(assembly.layers)} scored layers, probe {spec.sal.probe_size} at batch "
        f"{spec.sal.probe_batch_size}, {spec.sal.iterations} iterations, device {device}, "
        f"{torch.get_num_threads()} threads"
    )
    train_seconds: list[float] = []
    seconds: dict[str, list[float]] = {label: [] for label in chosen}
    for epoch in range(1, epochs + 1):
        started = time.process_time()
        loss = train_epoch(
            model,
            data.train,
            tasks,
            Defence(),
            spec.training,
            optimizer,
            generator,
            device,
            epoch,
            data.num_classes,
            data.value_range,
        )
        train_seconds.append(time.process_time() - started)
        for label, probe in probes.items():
            started = time.process_time()
            probe.measure(model, epoch, loss)
            seconds[label].append(time.process_time() - started)
    train = statistics.median(train_seconds)
    reference = statistics.median(seconds["reference (cached prefix)"])
    print(f"  {'':28} {'CPU s':>8} {'× training epoch':>17} {'/ reference':>12}")
    print(f"  {'training epoch':28} {train:8.2f} {1:17.1f}")
    for label in chosen:
        s = statistics.median(seconds[label])
        print(f"  {label:28} {s:8.2f} {s / train:17.1f} {s / reference:12.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="quickstart,cifar-resnet18")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    components = get_components()
    for name in args.cases.split(","):
        run_case(name.strip(), args.epochs, components)


if __name__ == "__main__":
    main()
