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

from harness.defence import Defence
from harness.pluginmanager import get_components
from harness.runner import Arm, Runner
from harness.specfile import load_spec
from harness.training import make_optimizer, train_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="specs/quickstart.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    components = get_components()
    loaded = load_spec(args.spec, components)
    runner = Runner(loaded, components, output_root="/nonexistent-unused")
    runner.data = runner.load_data()
    runner.task = runner._build("task", loaded.spec.task)
    torch.manual_seed(0)
    model = runner.build_model().to(runner.device)
    from harness.backbone import scored_layers

    runner.layers = scored_layers(model)
    recipe = loaded.spec.training
    optimizer = make_optimizer(model, recipe.optimizer)
    generator = torch.Generator().manual_seed(0)
    arm = Arm(0, None, loaded.spec.defences[0])
    n_train = len(runner.data.train)
    sal = loaded.spec.sal
    spec_probe = sal.probe_size
    probe_sizes = sorted({spec_probe, 128, 512, n_train})
    print(f"spec {args.spec}: {n_train} training samples, {len(runner.layers)} scored layers, "
          f"{sal.iterations} iterations, device {runner.device}, {torch.get_num_threads()} threads")
    print(f"{'epoch':>5} {'train s':>8} " + " ".join(f"{'SAL@' + str(p):>10} {'×train':>7}" for p in probe_sizes))
    ratios: dict[int, list[float]] = {p: [] for p in probe_sizes}
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        loss = train_epoch(model, runner.data.train, runner.task, Defence(), recipe, optimizer, generator,
                           runner.device, epoch, runner.data.num_classes, runner.data.value_range)
        train_s = time.perf_counter() - t0
        cells = []
        for p in probe_sizes:
            runner.spec.sal.probe_size = p
            t1 = time.perf_counter()
            runner.sal(model, arm, runner.data.train, Defence(), runner.probe_indices(0), epoch, loss)
            sal_s = time.perf_counter() - t1
            ratios[p].append(sal_s / train_s)
            cells.append(f"{sal_s:>10.2f} {sal_s / train_s:>7.1f}")
        print(f"{epoch:>5} {train_s:>8.2f} " + " ".join(cells))
    print("\nmedian SAL cost per epoch, as a multiple of one training epoch:")
    for p in probe_sizes:
        passes = len(runner.layers) * sal.iterations * 4 * p / n_train
        note = " (spec setting)" if p == spec_probe else (" (whole training set)" if p == n_train else "")
        print(f"  probe {p:>6}: {statistics.median(ratios[p]):6.1f}×   "
              f"({passes:.0f} training-set passes of work by count){note}")


if __name__ == "__main__":
    main()
