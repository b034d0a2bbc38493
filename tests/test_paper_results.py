"""docs/results.md is generated from run folders: the generator on a tiny stand-in run."""

from __future__ import annotations

import sys

import h5py
import numpy as np
from conftest import load_benchmark, tiny_spec, write_spec

from harness import figures
from harness.cli import main
from harness.scoring import learnable_counts, learnable_threshold, score


def test_results_are_generated_from_the_runs_and_missing_ones_say_so(tmp_path, monkeypatch):
    # a stand-in for the Table 1 run: same run name, arms labelled as the spec's (em, ops)
    poisons = [
        {"name": "random-noise", "label": "em", "params": {"epsilon": 0.1}},
        {"name": "random-noise", "label": "ops", "params": {"epsilon": 0.1, "mode": "class-wise"}},
        {"name": "random-noise", "label": "cuda", "params": {"epsilon": 0.05}},  # not a seeded one
    ]
    settings = {"iterations": 3, "probe_size": 64, "estimator": {"name": "normalized-steps"}}
    spec = write_spec(
        tmp_path / "t1.yaml",
        tiny_spec("paper-table1-cpu", poisons=poisons, seeds=[0, 1], sal=settings),
    )
    runs = tmp_path / "runs"
    eval_args = ["eval", str(spec), "--output", str(runs), "--save-snapshots", "1", "--quiet"]
    assert main(eval_args) == 0
    # the spot check of the run's estimator on its snapshots, as docs/results.md reports it
    run = str(runs / "paper-table1-cpu")
    assert main(["sal-agreement", run, "--estimator", "normalized-steps", "--arms", "em"]) == 0
    out = tmp_path / "docs" / "results.md"
    # no filed entries yet (the default is the repository's leaderboard, which holds the real ones)
    nothing_filed = ["--filed", str(tmp_path / "no-board"), "--kept", str(tmp_path / "no-kept")]
    argv = ["paper_results", "--runs", str(runs), "--out", str(out), *nothing_filed]
    monkeypatch.setattr(sys, "argv", argv)
    drawn = []
    draw = figures.learnable_proportion
    monkeypatch.setattr(
        figures,
        "learnable_proportion",
        lambda series, n: drawn.append((series, n)) or draw(series, n),
    )
    load_benchmark("paper_results").main()
    text = out.read_text()
    assert "| paper-table1-cpu | started; 8 arm(s) complete, 8 scored |" in text
    assert "| paper-table2-cpu | not started |" in text
    em = next(line for line in text.splitlines() if line.startswith("| em |"))
    assert "not run yet" not in em and "| 26.52 |" in em  # ours beside the paper's
    rem = next(line for line in text.splitlines() if line.startswith("| rem |"))
    assert rem.count("not run yet") == 3
    claim = next(line for line in text.splitlines() if line.startswith("| UD < 1 for EM |"))
    assert "| agrees |" in claim or "| does not agree |" in claim
    assert claim.endswith("(2 of 3 seed(s)) |")  # the stand-in ran seeds 0 and 1
    assert "| UD > 1 for TAP | not run yet |  |" in text
    tables = text
    # the analyses of Table 1's SAL arrays are in a second file, beside the first
    assert "(results-table1.md)" in text and "## Seed-to-seed noise" not in text
    text = (out.parent / "results-table1.md").read_text()
    assert (out.parent / "figures" / "table1-sal-heatmap.png").stat().st_size > 0
    assert (out.parent / "figures" / "table1-learnable-proportion.png").stat().st_size > 0
    # the proportion figure is given λ(t), the counts of learnable layers, once per arm
    ((series, layers),) = drawn
    with h5py.File(runs / "paper-table1-cpu" / "run.h5", "r") as f:
        sal = {a: f[f"arms/{a}__none__s0/sal"][()] for a in ("clean", "em", "ops")}
        clean_s1 = f["arms/clean__none__s1/sal"][()]
    beta, _ = learnable_threshold(sal["clean"])
    assert layers == sal["clean"].shape[1]
    for label, counts in series:
        assert list(counts) == list(learnable_counts(sal[label], beta))
    # the noise floor: each seed's clean arm scored against the other's
    floor = next(line for line in text.splitlines() if line.startswith("| clean s1 |"))
    assert floor == f"| clean s1 | {score(clean_s1, sal['clean']).ud:.3f} | 1 (itself) |"
    assert any(line.startswith("| em s1 |") for line in text.splitlines())
    # an arm outside the seeded four is read against every seed's clean arm too
    with h5py.File(runs / "paper-table1-cpu" / "run.h5", "r") as f:
        cuda_s0 = f["arms/cuda__none__s0/sal"][()]
    cuda = next(line for line in text.splitlines() if line.startswith("| cuda s0 |"))
    assert cuda == (
        f"| cuda s0 | {score(cuda_s0, sal['clean']).ud:.3f} | {score(cuda_s0, clean_s1).ud:.3f} |"
    )
    # and the spread over every pair: two clean seeds give two clean-vs-clean pairs
    floor_uds = [score(clean_s1, sal["clean"]).ud, score(sal["clean"], clean_s1).ud]
    spread = next(line for line in text.splitlines() if line.startswith("| clean vs clean |"))
    below = sum(ud < 1 for ud in floor_uds)
    assert spread == (
        f"| clean vs clean | 2 | {min(floor_uds):.3f} | {float(np.median(floor_uds)):.3f} | "
        f"{max(floor_uds):.3f} | {below} of 2 |"
    )
    # which layer carries each arm's #LP: the clean arm's row, from the same arrays
    above = sal["clean"] > beta
    top = int(above.sum(axis=0).argmax())
    section = text.split("## Where the learnable layers are")[1].split("## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| clean | "))
    assert row.startswith(f"| clean | {above.sum(axis=1).mean():.2f} | ")
    assert f"{above[:, top].sum() / above.sum():.0%}" in row
    # post hoc: each arm scored again without that layer, against its own seed's clean arm
    with h5py.File(runs / "paper-table1-cpu" / "run.h5", "r") as f:
        em_s1 = f["arms/em__none__s1/sal"][()]
    keep = [i for i in range(layers) if i != top]
    cut = [
        score(sal["em"][:, keep], sal["clean"][:, keep]).ud,
        score(em_s1[:, keep], clean_s1[:, keep]).ud,
    ]
    section = text.split("## Post hoc: UD without")[1].split("## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| em | "))
    mean, sd = float(np.mean(cut)), float(np.std(cut, ddof=1))
    assert row.startswith("| em | 0, 1 | ")
    assert f"| {mean:.3f} ± {sd:.3f} | {sum(ud < 1 for ud in cut)} of 2 |" in row
    # the spot check: the estimator measured again on every epoch's snapshot gives the UD the
    # run recorded (it is the run's own estimator), beside the full reference's
    section = text.split("## Spot check")[1].split("## ")[0]
    row = next(line for line in section.splitlines() if "| em__none__s0 |" in line)
    assert row.startswith("| paper-table1-cpu | normalized-steps | em__none__s0 | 1,2,3 | ")
    assert row.endswith(f"| {score(sal['em'], sal['clean']).ud:.3f} |")
    assert "differs from the SAL the run recorded by at most 0." in section

    # Without the run folder (another machine ran it, or it was lost) the tables are read from
    # the entries `harness submit` filed for the run; the SAL analyses are left as they were
    board = tmp_path / "board"
    assert main(["submit", run, "--leaderboard", str(board)]) == 0
    elsewhere = tmp_path / "elsewhere"
    (runs / "paper-table1-cpu").rename(elsewhere)
    sal_analyses = (out.parent / "results-table1.md").read_text()
    filed = ["--filed", str(board / "entries"), "--kept", str(tmp_path / "no-kept")]
    # the spec plans one poison more than was run: the status names its arms as never run
    specs = tmp_path / "specs"
    more = [*poisons, {"name": "random-noise", "label": "rem", "params": {"epsilon": 0.2}}]
    planned = tiny_spec("paper-table1-cpu", poisons=more, seeds=[0, 1], sal=settings)
    write_spec(specs / "paper-table1-cpu.yaml", planned)
    argv = ["paper_results", "--runs", str(runs), "--out", str(out), *filed, "--specs", str(specs)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("paper_results").main()
    again = out.read_text()
    assert (
        "| paper-table1-cpu | run folder not here; 8 arm(s) read from the entries filed; "
        "not run: rem__none__s0, rem__none__s1 |"
    ) in again
    for row in ("| em |", "| ops |", "| rem |", "| UD < 1 for EM |"):
        line = next(line for line in tables.splitlines() if line.startswith(row))
        assert line in again.splitlines()
    assert (out.parent / "results-table1.md").read_text() == sal_analyses


def _cell(pr, ud: float, acc: float = 40.0, lp: float = 1.0):
    return pr.Cell([acc], [lp], [ud])


def test_table_2_and_3_claims_read_the_changes_against_the_undefended_arms():
    pr = load_benchmark("paper_results")
    t1 = {(p, "none"): _cell(pr, ud) for p, ud in [("clean", 1.0), ("em", 0.5), ("tap", 1.5)]}
    # Table 2: every defence raises EM's and OPS's UD, CutOut the most; all but MixUp lower TAP's
    t2 = {("clean", "none"): _cell(pr, 1.0)}
    for poison, undefended in [("em", 0.5), ("ops", 0.4), ("tap", 1.5)]:
        t2[(poison, "none")] = _cell(pr, undefended)
        for gain, defence in enumerate(pr.T2_DEFENCES):
            if poison == "tap":
                t2[(poison, defence)] = _cell(pr, 1.6 if defence == "mixup" else 1.0)
            else:
                t2[(poison, defence)] = _cell(pr, undefended + 0.1 * (gain + 1))
    t3 = {bb: {} for bb in pr.T3_BACKBONES}
    t3["resnet18"] = {(p, "none"): _cell(pr, ud) for p, ud in [("em", 0.5), ("ops", 0.4)]}
    t3["vit"] = {(p, "none"): _cell(pr, ud) for p, ud in [("em", 0.9), ("ops", 0.3)]}
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")[1:]
        for line in pr.claims(t1, t2, t3)
        if line.startswith("| ")
    }
    assert rows["Most defences raise the UD of EM and OPS (the paper: 8 of 10)"] == [
        "agrees",
        "10 of 10 (defence, data) pairs |",
    ]
    jpeg = rows["JPEG raises UD the most among the defences (mean over EM and OPS)"]
    assert jpeg == ["does not agree", "largest: cutout (+0.500) |"]
    assert rows["Every defence lowers TAP's UD"] == [
        "does not agree",
        "4 of 5 (defence, data) pairs |",
    ]
    # ViT above ResNet-18 on EM only; TAP not run on either yet
    assert rows["ViT's UD is higher than ResNet-18's (EM and OPS)"] == [
        "does not agree",
        "EM 0.900 vs 0.500, OPS 0.300 vs 0.400 |",
    ]
    assert rows["TAP's UD is lower on ViT than on ResNet-18"] == ["not run yet", " |"]
    # Table 2's own undefended arms read Table 1's claims a second time, beside the verdicts
    again = next(line for line in pr.claims(t1, t2, t3) if line.startswith("Read again"))
    assert again.endswith(
        "EM 0.500 (UD < 1: agrees); OPS 0.400 (UD < 1: agrees); TAP 1.500 (UD > 1: agrees)."
    )
    t2_without_tap = {k: v for k, v in t2.items() if k != ("tap", "none")}
    assert not any(line.startswith("Read again") for line in pr.claims(t1, t2_without_tap, t3))
    # one defended arm missing leaves the Table 2 claims open rather than judged on the rest
    del t2[("ops", "jpeg")]
    rows = [line for line in pr.claims(t1, t2, t3) if "JPEG" in line or "Most defences" in line]
    assert all("| not run yet |" in line for line in rows)
    # Table 2 prints each change beside the paper's (its Table 1 UD as the undefended one)
    em_jpeg = next(line for line in pr.table2(t2) if line.startswith("| em | jpeg |"))
    assert em_jpeg == "| em | jpeg | 40.0 | 1.00 | 1.24 | 0.600 | 0.373 | +0.100 | +0.186 |"
    # a change read against an undefended arm borrowed from Table 1 says so: UD is a ratio to
    # a clean arm, and Table 1's need not be Table 2's
    own = next(line for line in pr.table2(t2) if line.startswith("UD change:"))
    assert "the Table 2 run's own undefended arms" in own and "Table 1's arms" not in own
    mixed = next(line for line in pr.table2(t2, ["em__none__s0"]) if line.startswith("UD change:"))
    assert "Table 1's arms em__none__s0" in mixed and "mix two clean references" in mixed
    # each data's undefended row comes first, beside the paper's Table 1
    em_none = next(line for line in pr.table2(t2) if line.startswith("| em | none |"))
    assert em_none == "| em | none | 40.0 | 1.00 | 0.62 | 0.500 | 0.187 |  |  |"
    clean_jpeg = next(line for line in pr.table2(t2) if line.startswith("| clean | jpeg |"))
    assert clean_jpeg.endswith("| not run yet | 0.747 |  | -0.253 |")
    vit_em = next(line for line in pr.table3(t3) if line.startswith("| vit | em |"))
    assert vit_em == "| vit | em | 40.0 | 1.00 | 0.900 |  |"


def test_an_arm_at_chance_accuracy_is_named_under_its_table():
    pr = load_benchmark("paper_results")
    t2 = {
        ("clean", "ueraser-max"): pr.Cell([10.0], [0.0], [0.0]),
        ("em", "jpeg"): pr.Cell([35.0], [1.2], [0.9]),
    }
    (note,) = [line for line in pr.table2(t2) if line.startswith("At chance")]
    assert "clean/ueraser-max (10.0%)" in note and "em/jpeg" not in note
    t3 = {bb: {} for bb in pr.T3_BACKBONES}
    t3["vit"] = {("tap", "none"): pr.Cell([11.5], [0.0], [0.0])}
    assert any("vit tap/none (11.5%)" in line for line in pr.table3(t3))
    t3["vit"] = {("tap", "none"): pr.Cell([12.5], [0.0], [0.0])}  # above chance + 2 points
    assert not any(line.startswith("At chance") for line in pr.table3(t3))


def test_undefended_arms_trained_again_by_table_2_are_compared_with_table_1s(tmp_path):
    # Table 2's undefended arms are Table 1's computation: trained twice (no --reuse-arms) on the
    # same machine, they must give the same results, and the comparison says so arm by arm
    pr = load_benchmark("paper_results")
    poisons = [{"name": "random-noise", "label": "em", "params": {"epsilon": 0.1}}]
    runs = tmp_path / "runs"
    for name in ("paper-table1-cpu", "paper-table2-cpu"):
        spec = write_spec(tmp_path / f"{name}.yaml", tiny_spec(name, poisons=poisons))
        assert main(["eval", str(spec), "--output", str(runs), "--quiet"]) == 0
    lines = pr.retrained(runs)
    rows = [line for line in lines if line.startswith("| clean__") or line.startswith("| em__")]
    assert [row.split(" | ")[:4] for row in rows] == [
        ["| clean__none__s0", "yes", "yes", "yes"],
        ["| em__none__s0", "yes", "yes", "yes"],
    ]
    em = rows[1].removesuffix(" |").split(" | ")
    assert em[4] == em[5] and em[6] == em[7]  # the same final training loss and UD
    # an adopted arm is not compared: there is nothing to compare
    (runs / "paper-table2-cpu" / "reused_arms.json").write_text("{}")
    assert pr.retrained(runs) == []
