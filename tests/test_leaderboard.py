"""Leaderboard (ranking per track, aggregation over seeds) and submission checks.

Runs (conftest `small_runs`): `figs` (small CNN, one seed, three arms) and `lin` (linear
backbone, two seeds, two arms): two tracks that must never be ranked together.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import h5py
import pytest

from harness import leaderboard
from harness.cli import main
from harness.entries import read_entries
from harness.submit import SubmissionError, submit, verify_run


@pytest.fixture(scope="module")
def board(small_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("board")
    assert (
        main(["leaderboard", str(small_runs["figs"]), str(small_runs["lin"]), "--out", str(out)])
        == 0
    )
    return out


def md_tracks(text: str) -> dict[str, list[list[str]]]:
    """{track id: table rows as cells} from leaderboard.md."""
    out: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"## Track `([0-9a-f]+)`", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current and line.startswith("| ") and not line.startswith("| rank"):
            out[current].append([c.strip() for c in line.strip("|").split(" | ")])
    return out


def test_markdown_ranks_by_ud_within_each_track_and_never_mixes_tracks(board, small_runs):
    figs = {e.arm_id: e for e in read_entries(small_runs["figs"])}
    lin = read_entries(small_runs["lin"])
    tracks = md_tracks((board / "leaderboard.md").read_text())
    assert set(tracks) == {figs["clean__none__s0"].track.id, lin[0].track.id}
    assert len({e.track.id for e in lin}) == 1
    cnn_rows = tracks[figs["clean__none__s0"].track.id]
    lin_rows = tracks[lin[0].track.id]
    # every arm of a run in its own track's table, and only there
    assert sorted(r[1] for r in cnn_rows) == ["clean", "noise-class", "noise-sample"]
    assert sorted(r[1] for r in lin_rows) == ["clean", "noise-class"]
    for rows in (cnn_rows, lin_rows):
        uds = [float(r[3].split(" ± ")[0]) for r in rows]
        assert uds == sorted(uds)
        assert [r[0] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    by_poison = {r[1]: r for r in cnn_rows}
    assert by_poison["noise-class"][3] == f"{figs['noise-class__none__s0'].results.ud:.3f}"
    assert by_poison["clean"][6] == "1: 0"
    text = (board / "leaderboard.md").read_text()
    assert "small-cnn" in text and "linear" in text


def test_seeds_are_aggregated_as_mean_and_spread(board, small_runs):
    import statistics

    lin = [e for e in read_entries(small_runs["lin"]) if e.poison is not None]
    assert sorted(e.seed for e in lin) == [0, 1]
    rows = md_tracks((board / "leaderboard.md").read_text())[lin[0].track.id]
    noisy = next(r for r in rows if r[1] == "noise-class")
    uds = [e.results.ud for e in lin]
    assert noisy[3] == f"{statistics.fmean(uds):.3f} ± {statistics.stdev(uds):.3f}"
    accs = [e.results.test_metric.final for e in lin]
    assert noisy[5] == f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
    assert noisy[6] == "2: 0, 1"
    assert noisy[7] == "0.1.0" and noisy[8] == "harness 0.1.0"


def test_an_arm_without_ud_comes_last_unranked_and_the_page_inlines_its_data(small_runs, board):
    entries = read_entries(small_runs["figs"])
    odd = entries[0].model_copy(
        update={
            "arm_id": "odd__none__s0",
            "poison": entries[1].poison.model_copy(update={"label": "odd", "params": {"x": 1}}),
            "results": entries[0].results.model_copy(update={"ud": None}),
        }
    )
    (track,) = leaderboard.build([*entries, odd])
    assert track.rows[-1].poison == "odd" and track.rows[-1].rank is None
    assert [r.rank for r in track.rows[:-1]] == [1, 2, 3]
    page = (board / "index.html").read_text()
    block = re.search(
        r'<script type="application/json" id="leaderboard-data">(.*?)</script>', page, re.S
    ).group(1)
    data = json.loads(block)
    assert {t["id"] for t in data["tracks"]} == {
        e.track.id for e in read_entries(small_runs["lin"])
    } | {entries[0].track.id}
    assert "src=" not in page.split("<script", 1)[0] and "http" not in page  # nothing fetched
    assert len(json.loads((board / "entries.json").read_text())) == 3 + 4


def test_entry_text_cannot_break_out_of_the_page(small_runs):
    entry = read_entries(small_runs["figs"])[1]
    evil = entry.model_copy(
        update={"poison": entry.poison.model_copy(update={"label": "</script><b>x</b>"})}
    )
    page = leaderboard.render_html(leaderboard.build([evil]))
    assert page.count("</script>") == 2 and "<b>x</b>" not in page


# --- submission ----------------------------------------------------------------------------------


def copy_run(small_runs, tmp_path: Path) -> Path:
    return Path(shutil.copytree(small_runs["figs"], tmp_path / "figs"))


def test_a_good_run_is_accepted_and_filed_then_resubmitting_changes_nothing(
    small_runs, tmp_path, capsys
):
    board = tmp_path / "lb"
    assert main(["submit", str(small_runs["figs"]), "--leaderboard", str(board)]) == 0
    names = sorted(p.name for p in (board / "entries").glob("*.json"))
    assert names == [
        "figs__clean__none__s0.json",
        "figs__noise-class__none__s0.json",
        "figs__noise-sample__none__s0.json",
    ]
    assert (board / "leaderboard.md").exists() and (board / "index.html").exists()
    written, unchanged = submit(small_runs["figs"], board)
    assert written == [] and len(unchanged) == 3
    # a different entry under the same name is never overwritten silently
    path = board / "entries" / "figs__clean__none__s0.json"
    raw = json.loads(path.read_text())
    raw["wall_time_s"] += 1
    path.write_text(json.dumps(raw))
    assert main(["submit", str(small_runs["figs"]), "--leaderboard", str(board)]) == 2
    assert "already holds a different entry" in capsys.readouterr().err
    assert main(["submit", str(small_runs["figs"]), "--leaderboard", str(board), "--replace"]) == 0


def test_a_tampered_entry_is_refused_with_the_field(small_runs, tmp_path, capsys):
    run = copy_run(small_runs, tmp_path)
    path = run / "entries" / "noise-sample__none__s0.json"
    raw = json.loads(path.read_text())
    raw["results"]["ud"] = raw["results"]["ud"] / 2 + 0.01
    path.write_text(json.dumps(raw, indent=2))
    assert main(["submit", str(run), "--leaderboard", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: entry noise-sample__none__s0 disagrees with the one recomputed from run.h5"
    )
    assert "results.ud (stored" in err
    assert not (tmp_path / "lb").exists()


def test_an_incomplete_run_is_refused(small_runs, tmp_path):
    run = copy_run(small_runs, tmp_path)
    with h5py.File(run / "run.h5", "a") as f:
        f["arms/noise-class__none__s0"].attrs["complete"] = False
    with pytest.raises(
        SubmissionError, match=r"incomplete: arm noise-class__none__s0 is not complete \(3 of 3"
    ):
        verify_run(run)
    with h5py.File(run / "run.h5", "a") as f:
        del f["arms/noise-class__none__s0"]
    with pytest.raises(SubmissionError, match="arm noise-class__none__s0 never started"):
        verify_run(run)


def test_a_spec_hash_mismatch_is_refused(small_runs, tmp_path):
    run = copy_run(small_runs, tmp_path)
    spec_file = run / "spec.resolved.json"
    stored = json.loads(spec_file.read_text())
    stored["spec"]["training"]["epochs"] = 30  # the spec claims a recipe the run did not follow
    spec_file.write_text(json.dumps(stored))
    with pytest.raises(SubmissionError, match="spec.resolved.json: spec hash mismatch"):
        verify_run(run)


def test_a_changed_run_file_or_unrecorded_plugin_is_refused(small_runs, tmp_path):
    run = copy_run(small_runs, tmp_path)
    with h5py.File(run / "run.h5", "a") as f:
        f.attrs["note"] = "edited"
    with pytest.raises(SubmissionError, match="the file changed after the entries were written"):
        verify_run(run)
    run = Path(shutil.copytree(small_runs["figs"], tmp_path / "again"))
    path = run / "entries" / "noise-class__none__s0.json"
    raw = json.loads(path.read_text())
    raw["poison"]["distribution"] = "<local>"
    path.write_text(json.dumps(raw))
    with pytest.raises(SubmissionError, match="noise-class__none__s0 disagrees"):
        verify_run(run)  # a stored entry never disagrees with its run silently
    from harness.submit import _check_versions

    with pytest.raises(SubmissionError, match="records no installable plugin"):
        _check_versions(read_entries(run))


# --- a leaderboard folder that third parties write into ------------------------------------------


def test_an_invalid_file_in_the_entries_folder_is_reported_and_skipped_never_blocking(
    small_runs, tmp_path, capsys
):
    board = tmp_path / "lb"
    assert main(["submit", str(small_runs["figs"]), "--leaderboard", str(board)]) == 0
    (board / "entries" / "broken.json").write_text('{"schema_version": 1, "run": "half-writ')
    raw = json.loads((board / "entries" / "figs__clean__none__s0.json").read_text())
    raw["run"], raw["results"]["final_train_loss"] = "diverged", float("nan")
    (board / "entries" / "nan.json").write_text(
        json.dumps(raw)
    )  # valid JSON to Python, not to a browser
    capsys.readouterr()
    # a later submission still files its entries and rebuilds the pages
    assert main(["submit", str(small_runs["lin"]), "--leaderboard", str(board)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {board / 'entries' / 'broken.json'}: not a valid entry" in err
    assert f"warning: {board / 'entries' / 'nan.json'}: not a valid entry" in err
    assert "skipped" in err
    assert len(json.loads((board / "entries.json").read_text())) == 3 + 4
    assert "linear" in (board / "leaderboard.md").read_text()
    # and so does `harness leaderboard`
    assert main(["leaderboard", str(board), "--out", str(tmp_path / "site")]) == 0
    assert "broken.json: not a valid entry" in capsys.readouterr().err
    assert (tmp_path / "site" / "index.html").exists()
    # with nothing valid left there is nothing to build: that is an error, not an empty page
    for path in (board / "entries").glob("*__*.json"):
        path.unlink()
    assert main(["leaderboard", str(board), "--out", str(tmp_path / "empty")]) == 2
    assert "no entries found" in capsys.readouterr().err


def test_the_same_arm_and_seed_from_two_runs_counts_once(small_runs, capsys):
    """A second run of the same experiment and seed (another run name) is not a second seed:
    the first run by name is counted, the other is listed as not counted."""
    figs = read_entries(small_runs["figs"])
    again = [e.model_copy(update={"run": "figs-again"}) for e in figs]
    (track,) = leaderboard.build([*figs, *again])
    noisy = next(r for r in track.rows if r.poison == "noise-class")
    assert noisy.seeds == [0] and [e.run for e in noisy.entries] == ["figs"]
    assert len(track.rows) == 3
    assert sorted((d.entry.run, d.entry.arm_id, d.counted.run) for d in track.duplicates) == [
        ("figs-again", arm, "figs") for arm in sorted(e.arm_id for e in figs)
    ]
    assert "figs-again" in capsys.readouterr().err  # reported when the pages are built
    text = leaderboard.markdown([track])
    assert "Not counted" in text and "figs-again" in text
    assert "1: 0" in text and "2: 0, 0" not in text


def test_two_poisons_with_one_label_but_different_params_are_told_apart(small_runs):
    figs = read_entries(small_runs["figs"])
    noisy = next(e for e in figs if e.arm_id == "noise-class__none__s0")
    stronger = noisy.model_copy(
        update={
            "run": "stronger",
            "poison": noisy.poison.model_copy(
                update={"params": {**noisy.poison.params, "epsilon": 0.2}}
            ),
        }
    )
    (track,) = leaderboard.build([*figs, stronger])
    names = sorted(r.poison for r in track.rows if r.poison.startswith("noise-class"))
    assert names == ["noise-class (epsilon=0.1)", "noise-class (epsilon=0.2)"]
    assert len({r.poison for r in track.rows}) == len(track.rows)  # one name per row
