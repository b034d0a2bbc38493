"""`harness sal-agreement RUN`: each SAL estimator against the reference, on a run's snapshots.

A run started with `harness eval SPEC --save-snapshots K` keeps the model after every K-th
epoch. On those snapshots this module computes SAL again with the reference (the spec's ε,
iterations and learning rate) and with each estimator asked for, on exactly the probe the run
used (the arm's own stratified subset, seen through its defence, with the seeded shuffles of
that epoch), timing each in CPU seconds of this process. Each estimator is then scored against
the reference the way a run is scored (`harness.sal_agreement`): β and UD from its own clean
arm, per seed. The report says whether it clears the bar an estimator must clear to become a
default (≥ 98% of decisions, |ΔUD| ≤ 0.05, ≤ 1/10 of the reference's cost).

Where the run itself used the reference, its recorded values at the snapshot epochs are compared
with the recomputed ones: the largest difference is reported (0 for a run on this machine with
the same thread count).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ruamel.yaml import YAML

from harness.assembly import Assembly
from harness.context import BuildContext
from harness.errors import RunStateError, SpecError
from harness.plan import Arm, plan_arms, select_arms
from harness.pluginmanager import Components
from harness.poisoning import PoisonedInputs
from harness.probe import SALProbe
from harness.runfolder import RunFolder
from harness.runner import stored_poison
from harness.sal_agreement import COST_BAR, DECISION_BAR, UD_BAR, Agreement, agreement
from harness.sal_estimators import ReferenceEstimator, SALEstimator
from harness.spec import ComponentRef
from harness.training import on_device

REFERENCE = "reference"


def parse_estimator(text: str) -> ComponentRef:
    """`NAME` or `NAME:KEY=VALUE,KEY=VALUE` (values read as YAML scalars: `steps=2` is 2)."""
    name, _, rest = text.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"--estimator {text!r}: {item!r} is not KEY=VALUE")
        params[key.strip()] = YAML(typ="safe").load(value)
    return ComponentRef(name=name.strip(), params=params)


def label_of(ref: ComponentRef) -> str:
    if not ref.params:
        return ref.name
    return f"{ref.name}:" + ",".join(f"{k}={v}" for k, v in sorted(ref.params.items()))


@dataclass
class SnapshotValues:
    """SAL per estimator label and arm (epochs × layers, at `epochs`), and CPU seconds spent."""

    epochs: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    #: largest |recorded − recomputed| of the run's own estimator, when it was recomputed
    recorded_difference: float | None = None


@dataclass
class AgreementReport:
    run: Path
    estimators: list[str]
    #: (estimator label, seed) -> agreement with the reference over that seed's arms
    results: dict[tuple[str, int], Agreement]
    snapshots: SnapshotValues

    def markdown(self) -> str:
        lines = [
            f"# SAL estimators against the reference: {self.run}",
            "",
            f"Snapshots per arm: epochs {sorted({e for v in self.snapshots.epochs.values() for e in v})}. "
            f"Bar to become a default: ≥ {DECISION_BAR:.0%} decisions, |ΔUD| ≤ {UD_BAR}, "
            f"≤ {COST_BAR:g} of the reference's cost.",
            "",
            "| estimator | seed | Spearman (mean per epoch) | decisions | Jaccard | max abs ΔUD | "
            "cost / reference | bar |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for (label, seed), result in sorted(self.results.items()):
            ratio = "" if result.cost_ratio is None else f"{result.cost_ratio:.3f}"
            lines.append(
                f"| {label} | {seed} | {result.spearman:.3f} | {result.decisions:.1%} | "
                f"{result.jaccard:.3f} | {result.max_ud_difference:.3f} | {ratio} | "
                f"{_bar(result)} |"
            )
        lines += [
            "",
            "| estimator | arm | Spearman | decisions | Jaccard | #LP ref | #LP est | UD ref | UD est |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (label, _), result in sorted(self.results.items()):
            for arm in result.arms:
                lines.append(
                    f"| {label} | {arm.arm} | {arm.spearman:.3f} | {arm.decisions:.1%} | "
                    f"{arm.jaccard:.3f} | {arm.lp_reference:.2f} | {arm.lp_estimate:.2f} | "
                    f"{_num(arm.ud_reference)} | {_num(arm.ud_estimate)} |"
                )
        if self.snapshots.recorded_difference is not None:
            lines += [
                "",
                "The run's own estimator recomputed on the snapshots differs from the values the "
                f"run recorded by at most {self.snapshots.recorded_difference:.3g}.",
            ]
        return "\n".join(lines) + "\n"

    def as_json(self) -> dict[str, Any]:
        return {
            "run": str(self.run),
            "estimators": self.estimators,
            "epochs": self.snapshots.epochs,
            "cpu_seconds": self.snapshots.seconds,
            "recorded_difference": self.snapshots.recorded_difference,
            "results": [
                {
                    "estimator": label,
                    "seed": seed,
                    "spearman": _finite(r.spearman),
                    "decisions": r.decisions,
                    "jaccard": _finite(r.jaccard),
                    "max_ud_difference": _finite(r.max_ud_difference),
                    "cost_ratio": r.cost_ratio,
                    "passes": r.passes() if len(r.arms) > 1 else None,
                    "arms": [
                        {
                            "arm": a.arm,
                            "spearman": _finite(a.spearman),
                            "decisions": a.decisions,
                            "jaccard": a.jaccard,
                            "lp_reference": a.lp_reference,
                            "lp_estimate": a.lp_estimate,
                            "ud_reference": a.ud_reference,
                            "ud_estimate": a.ud_estimate,
                        }
                        for a in r.arms
                    ],
                }
                for (label, seed), r in sorted(self.results.items())
            ],
        }


def _bar(result: Agreement) -> str:
    """Whether the bar is met; not judged on a clean arm alone, whose UD is 1 by definition."""
    if len(result.arms) < 2:
        return "not judged (no poisoned arm)"
    return "met" if result.passes() else "not met"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _estimators(
    assembly: Assembly, components: Components, asked: Sequence[ComponentRef]
) -> dict[str, SALEstimator]:
    """The reference (the spec's settings, plain) and each estimator asked for (default: every
    registered one but the reference, with its default params)."""
    sal = assembly.spec.sal
    chosen = list(asked) or [
        ComponentRef(name=name) for name in components["sal_estimator"].names() if name != REFERENCE
    ]
    built: dict[str, SALEstimator] = {
        REFERENCE: ReferenceEstimator(sal.epsilon, sal.iterations, sal.inner_lr)
    }
    for ref in chosen:
        if label_of(ref) == REFERENCE:
            continue
        built[label_of(ref)] = components.build(
            "sal_estimator", ref.name, ref.params, BuildContext(sal=sal)
        )
    return built


def measure_snapshots(
    folder: RunFolder,
    assembly: Assembly,
    estimators: dict[str, SALEstimator],
    stage: Callable[[str], None] = lambda message: None,
    only: set[str] | None = None,
) -> SnapshotValues:
    """Every estimator's SAL on every snapshot of every arm, on the arm's own probe."""
    spec, device = assembly.spec, assembly.device
    out = SnapshotValues(seconds=dict.fromkeys(estimators, 0.0))
    for label in estimators:
        out.values[label] = {}
    poisons = PoisonedInputs(assembly)
    store = folder.store()
    run_label = (
        REFERENCE
        if spec.sal.estimator.name == REFERENCE and not spec.sal.estimator.params
        else label_of(spec.sal.estimator)
    )
    differences: list[float] = []
    for arm in plan_arms(spec):
        if only is not None and arm.id not in only:
            continue
        epochs = folder.snapshot_epochs(arm.id)
        if not epochs:
            continue
        out.epochs[arm.id] = epochs
        recorded = store.read_arm(arm.id) if store.has_arm(arm.id) else None
        split = assembly.data.train
        if arm.poison is not None:
            split = split.with_inputs(
                stored_poison(poisons.for_arm(arm), spec.training.poison_storage)
            )
        train = on_device(split, device)
        defence = assembly.components.build("defence", arm.defence.name, arm.defence.params)
        rows: dict[str, list[list[float]]] = {label: [] for label in estimators}
        for epoch in epochs:
            stage(f"{arm.id} epoch {epoch}")
            model = assembly.build_model().to(device)
            state = torch.load(folder.snapshot(arm.id, epoch), map_location=device)
            model.load_state_dict(state)
            train_loss = None
            if recorded is not None and recorded.rows_recorded >= epoch:
                train_loss = float(recorded.metrics["train_loss"][epoch - 1])
            for label, estimator in estimators.items():
                probe = _probe(assembly, arm, train, defence, estimator)
                started = time.process_time()
                values = probe.measure(model, epoch, train_loss).sal.values
                out.seconds[label] += time.process_time() - started
                rows[label].append(values)
                if label == run_label and recorded is not None and recorded.rows_recorded >= epoch:
                    differences.append(
                        float(np.max(np.abs(np.asarray(values) - recorded.sal[epoch - 1])))
                    )
        for label in estimators:
            out.values[label][arm.id] = np.asarray(rows[label], dtype=np.float64)
    if differences:
        out.recorded_difference = max(differences)
    return out


def _probe(assembly: Assembly, arm: Arm, train, defence, estimator: SALEstimator) -> SALProbe:
    spec = assembly.spec
    return SALProbe(
        spec.sal,
        spec.training.augmentation,
        assembly.tasks,
        assembly.layers,
        [],  # the summed loss's SAL only: per-task SAL is not what the estimators are compared on
        train,
        defence,
        arm.seed,
        assembly.sal_autocast,
        estimator=estimator,
    )


def sal_agreement(
    run: Path,
    components: Components,
    asked: Sequence[ComponentRef] = (),
    stage: Callable[[str], None] = lambda message: None,
    arms: Sequence[str] = (),
) -> AgreementReport:
    """Measure, score and write `RUN/sal-agreement.md` and `.json`; the report.

    `arms`: arm ids or labels (`em` for every seed's `em__none__sN`) to measure; none: every arm
    with snapshots. The clean arm of each seed is always measured: it sets β and UD's denominator.
    """
    folder = RunFolder(run)
    with folder.locked("sal-agreement"):
        assembly = Assembly.for_run(folder, components)
        estimators = _estimators(assembly, components, asked)
        if not any(folder.snapshot_epochs(arm.id) for arm in plan_arms(assembly.spec)):
            raise RunStateError(
                f"{folder.snapshots_dir}: no model snapshots in this run. Run its spec with "
                "`harness eval SPEC --save-snapshots K` (K: every how many epochs) first"
            )
        only = {arm.id for arm in select_arms(plan_arms(assembly.spec), arms)} if arms else None
        values = measure_snapshots(folder, assembly, estimators, stage, only)
        results: dict[tuple[str, int], Agreement] = {}
        arms = [arm for arm in plan_arms(assembly.spec) if arm.id in values.epochs]
        for seed in sorted({arm.seed for arm in arms}):
            group = [arm for arm in arms if arm.seed == seed]
            clean = next((arm for arm in group if arm.is_clean_reference), None)
            if clean is None:
                continue
            epochs = set.intersection(*(set(values.epochs[arm.id]) for arm in group))
            keep = {
                arm.id: [i for i, e in enumerate(values.epochs[arm.id]) if e in epochs]
                for arm in group
            }
            reference = {a: values.values[REFERENCE][a][rows] for a, rows in keep.items()}
            for label in estimators:
                if label == REFERENCE:
                    continue
                estimate = {a: values.values[label][a][rows] for a, rows in keep.items()}
                results[(label, seed)] = agreement(
                    reference,
                    estimate,
                    clean=clean.id,
                    reference_seconds=values.seconds[REFERENCE],
                    estimate_seconds=values.seconds[label],
                )
        report = AgreementReport(
            folder.path, [label for label in estimators if label != REFERENCE], results, values
        )
        folder.write_text(folder.path / "sal-agreement.md", report.markdown())
        folder.write_text(
            folder.path / "sal-agreement.json", json.dumps(report.as_json(), indent=2) + "\n"
        )
    return report


__all__ = ["AgreementReport", "label_of", "parse_estimator", "sal_agreement"]
