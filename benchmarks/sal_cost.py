"""SAL cost per epoch as a multiple of one training epoch, on the quickstart spec.

    python benchmarks/sal_cost.py [--spec specs/quickstart.yaml] [--epochs 3]

Trains the clean arm of the spec in memory (no run folder) and times, per epoch, the training
pass and the SAL of every scored layer, first with the spec's own SAL settings, then with other
probe sizes (the main lever on cost), including the whole training set as the reference code
uses. Prints timings and ratios; nothing is asserted, since timings depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.assembly import Assembly
from harness.defence import Defence
from harness.pluginmanager import get_components
from harness.probe import SALProbe
from harness.specfile import load_spec
from harness.training import make_optimizer, train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/quickstart.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    components = get_components()
    loaded = load_spec(args.spec, components)
    assembly = Assembly.from_spec(loaded, components)
    data, tasks, device = assembly.data, assembly.tasks, assembly.device
    torch.manual_seed(0)
    model = assembly.build_model().to(device)
    recipe = loaded.spec.training
    optimizer = make_optimizer(model, recipe.optimizer)
    generator = torch.Generator().manual_seed(0)
    n_train = len(data.train)
    sal = loaded.spec.sal
    probe_sizes = sorted({sal.probe_size, 128, 512, n_train})
    probes = {
        p: SALProbe(
            sal.model_copy(update={"probe_size": p}),
            recipe.augmentation,
            tasks,
            assembly.layers,
            assembly.task_layers,
            data.train,
            Defence(),
            seed=0,
            autocast=assembly.autocast,
        )
        for p in probe_sizes
    }
    print(
        f"spec {args.spec}: {n_train} training samples, {len(assembly.layers)} scored layers, "
        f"{sal.iterations} iterations, device {device}, {torch.get_num_threads()} threads"
    )
    print(
        f"{'epoch':>5} {'train s':>8} "
        + " ".join(f"{'SAL@' + str(p):>10} {'×train':>7}" for p in probe_sizes)
    )
    ratios: dict[int, list[float]] = {p: [] for p in probe_sizes}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(
            model,
            data.train,
            tasks,
            Defence(),
            recipe,
            optimizer,
            generator,
            device,
            epoch,
            data.num_classes,
            data.value_range,
        )
        train_s = time.perf_counter() - t0
        cells = []
        for p, probe in probes.items():
            t1 = time.perf_counter()
            probe.measure(model, epoch, loss)
            sal_s = time.perf_counter() - t1
            ratios[p].append(sal_s / train_s)
            cells.append(f"{sal_s:>10.2f} {sal_s / train_s:>7.1f}")
        print(f"{epoch:>5} {train_s:>8.2f} " + " ".join(cells))
    print("\nmedian SAL cost per epoch, as a multiple of one training epoch:")
    for p in probe_sizes:
        passes = len(assembly.layers) * sal.iterations * 4 * p / n_train
        note = (
            " (spec setting)"
            if p == sal.probe_size
            else (" (whole training set)" if p == n_train else "")
        )
        print(
            f"  probe {p:>6}: {statistics.median(ratios[p]):6.1f}×   "
            f"({passes:.0f} training-set passes of work by count){note}"
        )


if __name__ == "__main__":
    main()
