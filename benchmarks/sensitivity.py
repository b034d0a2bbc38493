"""docs/sensitivity.md: which settings UD's verdicts depend on, from a finished paper run.

    python benchmarks/sensitivity.py RUN [--arms em,tap] [--small-cnn RUN2]
        [--out docs/sensitivity.md] [--skip-recompute | --measured EARLIER.json]

RUN is a run of `specs/paper-table1-cpu.yaml` (CIFAR ResNet-18 w16, 21 scored layers) made with
`harness eval SPEC --save-snapshots 5`. For each poisoned arm asked for (default: EM and TAP, the
paper's lowest and highest UD) against the run's clean arm, UD is computed again with one setting
changed at a time:

- from the SAL the run recorded (no computation): the epochs counted (the first 5, 10, 15, all)
  and the number of scored layers (4 and 8 of the 21, evenly spaced, beside all 21); with
  `--small-cnn RUN2` (a run of `specs/table1-cifar10-cpu.yaml`: a 4-layer small CNN) its UD too;
- from the model snapshots (SAL measured again on the arm's own probe, every snapshot epoch):
  probe size 64 and 256 (the run: 128), 1 and 3 SAL iterations (the run: 10), the
  `train-running-mean` base loss (the run: `eval`) and the augmented probe (the run: plain),
  each beside the run's own settings measured on the same snapshot epochs.

The variants were fixed in this file before any of their numbers were seen; they are not tuned.
Writes OUT (markdown), OUT with `.json` and `figures/sensitivity.png` beside it.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.agreement_run import measure_snapshots
from harness.assembly import Assembly
from harness.context import BuildContext
from harness.plan import plan_arms
from harness.pluginmanager import get_components
from harness.runfolder import RunFolder
from harness.scoring import score
from harness.spec import Spec

#: settings measured again on the snapshots: (label, changes to the spec's `sal` section)
SNAPSHOT_VARIANTS: list[tuple[str, dict]] = [
    ("run's settings", {}),
    ("probe 64 images", {"probe_size": 64}),
    ("probe 256 images", {"probe_size": 256}),
    ("1 iteration", {"iterations": 1}),
    ("3 iterations", {"iterations": 3}),
    ("base loss train-running-mean", {"base_loss": "train-running-mean"}),
    ("augmented probe", {"probe_augment": True}),
]
EPOCH_CUTS = (5, 10, 15)
MEASURED = "measured again on snapshots"
LAYER_COUNTS = (4, 8)


@dataclass
class Row:
    group: str
    setting: str
    ud: dict[str, float | None]  # poison label -> UD
    epochs: str


def ud_of(sal: np.ndarray, clean: np.ndarray) -> float | None:
    return score(sal, clean).ud


def recorded(folder: RunFolder, arm_ids: dict[str, str], clean_id: str) -> list[Row]:
    """UD from the run's recorded SAL, cut by epochs and by layers."""
    store = folder.store()
    clean = store.read_arm(clean_id).sal
    sal = {label: store.read_arm(arm_id).sal for label, arm_id in arm_ids.items()}
    epochs = min(clean.shape[0], *(s.shape[0] for s in sal.values()))
    rows = [
        Row(
            "all recorded",
            f"all {clean.shape[1]} layers, {epochs} epochs",
            {label: ud_of(s[:epochs], clean[:epochs]) for label, s in sal.items()},
            f"1-{epochs}",
        )
    ]
    for cut in EPOCH_CUTS:
        if cut < epochs:
            rows.append(
                Row(
                    "epochs counted",
                    f"first {cut} epochs",
                    {label: ud_of(s[:cut], clean[:cut]) for label, s in sal.items()},
                    f"1-{cut}",
                )
            )
    layers = clean.shape[1]
    for count in (c for c in LAYER_COUNTS if c < layers):
        keep = np.unique(np.linspace(0, layers - 1, count).round().astype(int))
        rows.append(
            Row(
                "scored layers",
                f"{len(keep)} of {layers} layers (evenly spaced)",
                {
                    label: ud_of(s[:epochs][:, keep], clean[:epochs][:, keep])
                    for label, s in sal.items()
                },
                f"1-{epochs}",
            )
        )
    return rows


def seed0_arms(folder: RunFolder, labels: list[str]) -> tuple[str, dict[str, str]]:
    """The run's clean arm of seed 0, and its seed-0 arm of each poison label it has."""
    arms = [a for a in plan_arms(Spec.model_validate(folder.stored_spec())) if a.seed == 0]
    clean_id = next(a.id for a in arms if a.is_clean_reference)
    return clean_id, {a.poison_key: a.id for a in arms if a.poison_key in labels}


def small_cnn(run: Path, labels: list[str]) -> Row | None:
    folder = RunFolder(run)
    store = folder.store()
    clean_id, arm_ids = seed0_arms(folder, labels)
    found = {
        label: store.read_arm(arm_id).sal
        for label, arm_id in arm_ids.items()
        if store.has_arm(arm_id)
    }
    if not found or not store.has_arm(clean_id):
        return None
    clean_sal = store.read_arm(clean_id).sal
    epochs = min(clean_sal.shape[0], *(s.shape[0] for s in found.values()))
    return Row(
        "scored layers",
        f"small CNN, {clean_sal.shape[1]} layers ({run.name})",
        {label: ud_of(s[:epochs], clean_sal[:epochs]) for label, s in found.items()},
        f"1-{epochs}",
    )


def snapshots(folder: RunFolder, arm_ids: dict[str, str], clean_id: str) -> list[Row]:
    """UD from SAL measured again on the snapshots, one changed setting at a time."""
    components = get_components()
    base = Assembly.for_run(folder, components)
    only = {clean_id, *arm_ids.values()}
    rows = []
    for label, changes in SNAPSHOT_VARIANTS:
        assembly = copy.copy(base)
        sal = base.spec.sal.model_copy(update=changes)
        assembly.spec = base.spec.model_copy(update={"sal": sal})
        ref = sal.estimator
        estimator = components.build("sal_estimator", ref.name, ref.params, BuildContext(sal=sal))
        print(f"measuring: {label}", flush=True)
        values = measure_snapshots(
            folder, assembly, {label: estimator}, lambda s: print(f"  {s}", flush=True), only
        )
        common = set(values.epochs.get(clean_id, []))
        for arm_id in arm_ids.values():
            common &= set(values.epochs.get(arm_id, []))
        epochs = sorted(common)
        if not epochs:
            continue

        measured = {
            arm_id: values.values[label][arm_id][[values.epochs[arm_id].index(e) for e in epochs]]
            for arm_id in only
        }
        rows.append(
            Row(
                MEASURED,
                label,
                {
                    poison: ud_of(measured[arm_id], measured[clean_id])
                    for poison, arm_id in arm_ids.items()
                },
                ",".join(map(str, epochs)),
            )
        )
    return rows


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def markdown(run: Path, labels: list[str], rows: list[Row], measured: Path | None = None) -> str:
    lines = [
        "# Sensitivity of UD to the SAL and scoring settings",
        "",
        "Generated by `python benchmarks/sensitivity.py RUN --small-cnn RUN2` "
        f"(RUN: `{run.name}`); not edited by hand. One setting changed at a time; the "
        "variants were fixed before their numbers were seen. UD < 1: the poison lowers the "
        "number of learnable layers (the paper's verdict for EM); UD > 1: raises it (TAP).",
        *(
            []
            if measured is None
            else [
                "",
                f"The rows measured on snapshots come from `{measured.name}`, this script's "
                "earlier output on the same run (`--measured`), not measured a second time.",
            ]
        ),
        "",
        "| what changes | setting | epochs | " + " | ".join(f"UD({p})" for p in labels) + " |",
        "|---|---|---|" + "---|" * len(labels),
    ]
    for row in rows:
        lines.append(
            f"| {row.group} | {row.setting} | {row.epochs} | "
            + " | ".join(fmt(row.ud.get(p)) for p in labels)
            + " |"
        )
    lines += ["", "![sensitivity](figures/sensitivity.png)", ""]
    return "\n".join(lines)


def figure(rows: list[Row], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    names = [f"{r.setting} [{r.group}]" for r in rows]
    y = np.arange(len(rows))
    for i, poison in enumerate(labels):
        values = [np.nan if r.ud.get(poison) is None else r.ud[poison] for r in rows]
        ax.scatter(values, y + (i - (len(labels) - 1) / 2) * 0.2, label=f"UD({poison})", s=18)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("UD (1: as many learnable layers as the clean data)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--arms", default="em,tap", help="poison labels, comma-separated")
    parser.add_argument("--small-cnn", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/sensitivity.md"))
    parser.add_argument("--skip-recompute", action="store_true", help="recorded SAL only")
    parser.add_argument(
        "--measured",
        type=Path,
        default=None,
        help="an earlier output's .json: take its rows measured on the snapshots from there "
        "instead of measuring them again (hours of SAL) when only the recorded rows change",
    )
    args = parser.parse_args()
    labels = [p.strip() for p in args.arms.split(",") if p.strip()]
    folder = RunFolder(args.run)
    clean_id, arm_ids = seed0_arms(folder, labels)
    missing = [label for label in labels if label not in arm_ids]
    if missing:
        raise SystemExit(f"{args.run}: no arm {', '.join(missing)}")
    rows = recorded(folder, arm_ids, clean_id)
    if args.small_cnn is not None:
        extra = small_cnn(args.small_cnn, labels)
        if extra is not None:
            rows.append(extra)
    if args.measured is not None:
        earlier = [Row(**row) for row in json.loads(args.measured.read_text())]
        rows += [row for row in earlier if row.group == MEASURED]
    elif not args.skip_recompute:
        with folder.locked("sensitivity"):
            rows += snapshots(folder, arm_ids, clean_id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(args.run, labels, rows, args.measured))
    args.out.with_suffix(".json").write_text(
        json.dumps([row.__dict__ for row in rows], indent=2) + "\n"
    )
    figure(rows, labels, args.out.parent / "figures" / "sensitivity.png")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
