"""The paper campaign across sessions on machines that do not persist: each session trains the
arms not kept yet (`harness eval --arms`), keeps those it finished (benchmarks/paper_arms.py), and
docs/results.md reads the kept ones where no run folder holds them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import load_benchmark, tiny_spec, write_spec

from harness.cli import main

NO_BOARD = Path("/nonexistent/leaderboard/entries")  # nothing filed
TWO_EPOCHS = {"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}}


def stand_in(tmp_path: Path) -> Path:
    """A tiny stand-in for the Table 2 spec: its run name, labels the table knows."""
    poisons = [
        {"name": "random-noise", "label": "em", "params": {"epsilon": 0.1}},
        {"name": "random-noise", "label": "ops", "params": {"epsilon": 0.1, "mode": "class-wise"}},
    ]
    spec = tiny_spec(
        "paper-table2-cpu",
        poisons=poisons,
        defences=[{"name": "none"}, {"name": "cutout"}],
        training=TWO_EPOCHS,
    )
    return write_spec(tmp_path / "paper-table2-cpu.yaml", spec)


def session(spec: Path, machine: Path, arms: str) -> Path:
    """A session on a new machine: the arms asked, into a run folder of its own."""
    assert main(["eval", str(spec), "--output", str(machine), "--arms", arms, "--quiet"]) == 0
    return machine / "paper-table2-cpu"


def test_arms_kept_session_by_session_complete_the_table(tmp_path, monkeypatch, capsys):
    arms = load_benchmark("paper_arms")
    spec, kept = stand_in(tmp_path), tmp_path / "kept"
    everything = arms.todo(spec, kept, NO_BOARD)
    assert everything == [
        "em__none__s0",
        "ops__none__s0",
        "clean__cutout__s0",
        "em__cutout__s0",
        "ops__cutout__s0",
    ]

    first = session(spec, tmp_path / "machine-1", "em")
    assert sorted(arms.keep(first, kept)) == [
        "paper-table2-cpu: kept clean__none__s0",
        "paper-table2-cpu: kept em__cutout__s0",
        "paper-table2-cpu: kept em__none__s0",
    ]
    assert arms.keep(first, kept) == []  # nothing new
    left = arms.todo(spec, kept, NO_BOARD)
    assert left == ["ops__none__s0", "clean__cutout__s0", "ops__cutout__s0"]

    # the next machine trains the clean arm again (β needs it) and the arms left
    second = session(spec, tmp_path / "machine-2", ",".join(left))
    assert sorted(arms.keep(second, kept)) == sorted(f"paper-table2-cpu: kept {a}" for a in left)
    assert arms.todo(spec, kept, NO_BOARD) == []
    assert len(list((kept / "paper-table2-cpu").glob("*.json"))) == 6

    # docs/results.md from the kept arms alone: the run folders are gone
    out = tmp_path / "docs" / "results.md"
    argv = ["paper_results", "--runs", str(tmp_path / "none"), "--out", str(out)]
    argv += ["--filed", str(tmp_path / "no-board"), "--kept", str(kept), "--specs", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("paper_results").main()
    text = out.read_text()
    # every arm the spec plans is kept, so none is listed as not run
    assert "| paper-table2-cpu | run folder not here; 6 arm(s) kept from earlier sessions |" in text
    for data in ("em", "ops"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {data} | cutout |"))
        assert "not run yet" not in row
    # the same table as one run on one machine gives
    once = tmp_path / "machine-3"
    assert main(["eval", str(spec), "--output", str(once), "--quiet"]) == 0
    argv = ["paper_results", "--runs", str(once), "--out", str(tmp_path / "once.md")]
    argv += ["--filed", str(tmp_path / "no-board"), "--kept", str(tmp_path / "no-kept")]
    monkeypatch.setattr(sys, "argv", argv)
    load_benchmark("paper_results").main()
    rows = ("| em |", "| ops |", "| clean |", "| UD ")
    table = [line for line in text.splitlines() if line.startswith(rows)]
    assert len(table) > 6
    assert table == [
        line for line in (tmp_path / "once.md").read_text().splitlines() if line.startswith(rows)
    ]


def test_table_2_reads_the_undefended_arms_it_did_not_train_from_table_1(tmp_path):
    arms, results = load_benchmark("paper_arms"), load_benchmark("paper_results")
    spec, kept = stand_in(tmp_path), tmp_path / "kept"
    assert arms.todo(spec, kept, NO_BOARD, defended_only=True) == [
        "clean__cutout__s0",
        "em__cutout__s0",
        "ops__cutout__s0",
    ]
    arms.keep(session(spec, tmp_path / "machine", "cutout"), kept)
    # Table 1 trained EM undefended (not OPS): its entry, as filed for that run
    once = session(spec, tmp_path / "table1", "em")
    entry = json.loads((once / "entries" / "em__none__s0.json").read_text())
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "t1.json").write_text(json.dumps(entry | {"run": "paper-table1-cpu"}))
    assert arms.filed_arms(tmp_path / "board", "paper-table1-cpu") == {"em__none__s0"}
    # arms filed for the run itself are done: todo leaves them out
    (tmp_path / "board" / "t2.json").write_text(json.dumps(entry))
    assert arms.todo(spec, tmp_path / "nothing-kept", tmp_path / "board") == [
        "ops__none__s0",
        "clean__cutout__s0",
        "em__cutout__s0",
        "ops__cutout__s0",
    ]
    (tmp_path / "board" / "t2.json").unlink()
    elsewhere = results.Elsewhere(filed=tmp_path / "board", kept=kept)
    got = {e.arm_id: e.run for e in results.table2_entries(tmp_path / "none", elsewhere)}
    assert got == {
        "clean__none__s0": "paper-table2-cpu",
        "clean__cutout__s0": "paper-table2-cpu",
        "em__cutout__s0": "paper-table2-cpu",
        "ops__cutout__s0": "paper-table2-cpu",
        "em__none__s0": "paper-table1-cpu",
    }


def test_a_clean_arm_another_machine_trained_otherwise_is_kept_beside_the_first(tmp_path):
    arms = load_benchmark("paper_arms")
    spec, kept = stand_in(tmp_path), tmp_path / "kept"
    assert arms.keep(session(spec, tmp_path / "machine-1", "em"), kept)
    # the first machine's clean arm, as if it had rounded otherwise than the next one
    clean = kept / "paper-table2-cpu" / "clean__none__s0.json"
    record = json.loads(clean.read_text())
    record["results"]["beta"] *= 1.01
    clean.write_text(json.dumps(record))
    second = session(spec, tmp_path / "machine-2", "ops")
    said = arms.keep(second, kept)
    assert sorted(said) == [
        "paper-table2-cpu: clean__none__s0 differs from the one kept (another CPU, torch build or "
        "thread count): kept beside it as clean__none__s0~2; this run's arms are scored against "
        "it (their entries hold its β and #LP)",
        "paper-table2-cpu: kept ops__cutout__s0",
        "paper-table2-cpu: kept ops__none__s0",
    ]
    assert arms.keep(second, kept) == []  # that replica is kept already
    (replica,) = arms.clean_replicas(kept, "paper-table2-cpu", "clean__none__s0")
    ops = json.loads((kept / "paper-table2-cpu" / "ops__none__s0.json").read_text())
    assert ops["results"]["beta"] == replica.results.beta != record["results"]["beta"]
    assert (
        arms.kept_entries(kept, "paper-table2-cpu")["clean__none__s0"].results.beta
        == (record["results"]["beta"])
    )
    assert arms.todo(spec, kept, NO_BOARD) == ["clean__cutout__s0"]
    # docs/results.md says how the two machines' clean arms compare
    results = load_benchmark("paper_results")
    section = results.machines(results.Elsewhere(kept=kept))
    assert section[0] == "## Clean arms trained again on other machines"
    (row,) = [line for line in section if line.startswith("| paper-table2-cpu |")]
    assert row.startswith("| paper-table2-cpu | clean__none__s0 | ")
    assert f"| {record['results']['beta']:.4g} / {replica.results.beta:.4g} |" in row


def test_keeping_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    arms = load_benchmark("paper_arms")
    (tmp_path / "empty").mkdir()
    assert arms.main(["--kept", str(tmp_path / "kept"), "keep", str(tmp_path / "empty")]) == 1
    said = capsys.readouterr().err
    assert said.startswith("error: ") and "Traceback" not in said
    assert not (tmp_path / "kept").exists()


def test_a_run_still_training_is_kept_from_the_entries_it_wrote(tmp_path):
    arms = load_benchmark("paper_arms")
    run = session(stand_in(tmp_path), tmp_path / "machine", "em")
    (run / "entries" / "em__cutout__s0.json").unlink()  # as if that arm were still training
    holder = subprocess.Popen(  # the lanes' run, holding the folder
        [
            sys.executable,
            "-c",
            "import sys, time; from harness.runfolder import RunFolder; "
            "RunFolder(sys.argv[1]).lock(); print('locked', flush=True); time.sleep(60)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        said = arms.keep(run, tmp_path / "kept")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(said) == [
        "paper-table2-cpu: kept clean__none__s0",
        "paper-table2-cpu: kept em__none__s0",
    ]
