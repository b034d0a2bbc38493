"""The repository's leaderboard/ folder: the example every submitter follows, built by the harness.

Its entry files must be valid submitted entries named as `harness submit` names them, and its
Markdown table and HTML data must be exactly what the harness builds from those entries, so that
nothing in it can have been edited by hand.
"""

from __future__ import annotations

from pathlib import Path

from harness import leaderboard
from harness.entries import Entry
from harness.submit import entry_file_name

FOLDER = Path(__file__).resolve().parent.parent / "leaderboard"
CPU_SPECS = {
    "quickstart",
    "toy-linear",
    "cifar10-folder-cpu",
    "table1-cifar10-cpu",
    "table2-cifar10-cpu",
    "multitask-shapes-cpu",
    # the paper's tables at CPU scale (docs/results.md), filed as their runs complete
    "paper-table1-cpu",
    "paper-table1-seeds-cpu",
    "paper-table2-cpu",
    "paper-table3-resnet50-cpu",
    "paper-table3-senet18-cpu",
    "paper-table3-vit-cpu",
}


def entries() -> list[Entry]:
    return [
        Entry.model_validate_json(p.read_text(encoding="utf-8"))
        for p in sorted((FOLDER / "entries").glob("*.json"))
    ]


def test_entry_files_are_valid_entries_named_as_submit_names_them():
    files = sorted((FOLDER / "entries").glob("*.json"))
    assert files
    for path, entry in zip(files, entries(), strict=True):
        assert path.name == entry_file_name(entry)


def test_it_holds_the_cpu_scale_runs_of_the_specs():
    runs = {e.run for e in entries()}
    assert runs <= CPU_SPECS
    assert {"quickstart", "multitask-shapes-cpu"} <= runs
    assert all((FOLDER.parent / "specs" / f"{run}.yaml").exists() for run in runs)


def test_its_pages_are_exactly_what_the_harness_builds_from_the_entries(tmp_path: Path):
    rebuilt = leaderboard.write(leaderboard.gather([FOLDER]), tmp_path)
    for path in rebuilt:  # leaderboard.md, index.html, entries.json
        assert (FOLDER / path.name).read_text(encoding="utf-8") == path.read_text(
            encoding="utf-8"
        ), path.name


def test_its_headline_is_the_papers_table_1_at_resnet_18_depth():
    # issue 12: the paper's tables at ResNet-18 depth replace the 4-layer tracks as the headline
    first = leaderboard.build(entries())[0]
    assert first.detail["backbone"]["name"] == "resnet18"
    assert {e.run for r in first.rows for e in r.entries} >= {"paper-table1-cpu"}
    assert len(first.methods) >= 7
