"""Leaderboard (ranking per track and defence, aggregation over seeds, the poison × defence
matrix, track titles, papers, a folder third parties write into) and submission checks.

Runs (conftest `small_runs`): `figs` (small CNN, one seed, three arms) and `lin` (linear
backbone, two seeds, two arms): two tracks that must never be ranked together; `defended`
(here): clean and two poisons, each undefended and under cutout.
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


def md_tables(text: str) -> dict[str, list[list[list[str]]]]:
    """{track id: [ranking table, matrix table if any]} as rows of cells, from leaderboard.md."""
    out: dict[str, list[list[list[str]]]] = {}
    current, table = None, None
    for line in text.splitlines():
        m = re.match(r"Track `([0-9a-f]+)`: ", line)
        if m:
            current, table = m.group(1), None
            out[current] = []
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("| "):
            if table is None:
                table = []
                out[current].append(table)
                continue  # the header
            table.append([c.strip() for c in line.strip("|").split(" | ")])
        elif not line.startswith("|"):
            table = None
    return out


def md_tracks(text: str) -> dict[str, list[list[str]]]:
    """{track id: the ranking table's rows} from leaderboard.md: defence, rank, poison, UD, ΔUD,
    #LP, test metric, seeds, harness, plugins."""
    return {track: tables[0] for track, tables in md_tables(text).items()}


def expected_ranks(uds: list[float]) -> list[str]:
    """Competition ranking: equal UDs share a place."""
    return [str(1 + sum(other < ud for other in uds)) for ud in uds]


def test_markdown_ranks_by_ud_within_each_track_and_never_mixes_tracks(board, small_runs):
    figs = {e.arm_id: e for e in read_entries(small_runs["figs"])}
    lin = read_entries(small_runs["lin"])
    tracks = md_tracks((board / "leaderboard.md").read_text())
    assert set(tracks) == {figs["clean__none__s0"].track.id, lin[0].track.id}
    assert len({e.track.id for e in lin}) == 1
    cnn_rows = tracks[figs["clean__none__s0"].track.id]
    lin_rows = tracks[lin[0].track.id]
    # every arm of a run in its own track's table, and only there
    assert sorted(r[2] for r in cnn_rows) == ["clean", "noise-class", "noise-sample"]
    assert sorted(r[2] for r in lin_rows) == ["clean", "noise-class"]
    for rows in (cnn_rows, lin_rows):
        assert rows[0][:3] == ["none", "ref", "clean"]  # the clean reference first, not ranked
        poisons = rows[1:]
        uds = [float(r[3].split(" ± ")[0]) for r in poisons]
        assert uds == sorted(uds)
        assert [r[1] for r in poisons] == expected_ranks(uds)
    by_poison = {r[2]: r for r in cnn_rows}
    assert by_poison["noise-class"][3] == f"{figs['noise-class__none__s0'].results.ud:.3f}"
    assert by_poison["clean"][7] == "1: 0"
    text = (board / "leaderboard.md").read_text()
    assert "small-cnn" in text and "linear" in text


def test_seeds_are_aggregated_as_mean_and_spread(board, small_runs):
    import statistics

    lin = [e for e in read_entries(small_runs["lin"]) if e.poison is not None]
    assert sorted(e.seed for e in lin) == [0, 1]
    rows = md_tracks((board / "leaderboard.md").read_text())[lin[0].track.id]
    noisy = next(r for r in rows if r[2] == "noise-class")
    uds = [e.results.ud for e in lin]
    assert noisy[3] == f"{statistics.fmean(uds):.3f} ± {statistics.stdev(uds):.3f}"
    accs = [e.results.test_metric.final for e in lin]
    assert noisy[6] == f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f}"
    assert noisy[7] == "2: 0, 1"
    assert noisy[8] == "0.1.0" and noisy[9] == "harness 0.1.0"


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
    assert (
        track.rows[0].poison == "clean" and track.rows[0].reference and track.rows[0].rank is None
    )
    poisons = track.rows[1:-1]
    assert [str(r.rank) for r in poisons] == expected_ranks([r.ud[0] for r in poisons])
    page = (board / "index.html").read_text()
    data = page_json(page)
    assert {t["id"] for t in data["tracks"]} == {
        e.track.id for e in read_entries(small_runs["lin"])
    } | {entries[0].track.id}
    head = page.split("<script", 1)[0]
    assert "src=" not in head and "<link" not in head.replace('<link rel="icon" href="data:,">', "")
    assert "fetch(" not in page and "XMLHttpRequest" not in page  # nothing is fetched
    assert len(json.loads((board / "entries.json").read_text())) == 3 + 4


def page_json(page: str) -> dict:
    block = re.search(
        r'<script type="application/json" id="leaderboard-data">(.*?)</script>', page, re.S
    ).group(1)
    return json.loads(block)


def test_entry_text_cannot_break_out_of_the_page(small_runs):
    entry = read_entries(small_runs["figs"])[1]
    evil = entry.model_copy(
        update={"poison": entry.poison.model_copy(update={"label": "</script><b>x</b>"})}
    )
    page = leaderboard.render_html(leaderboard.build([evil]))
    assert page.count("</script>") == 2 and "<b>x</b>" not in page


# --- the views: defences, the matrix, titles, papers, the legend ---------------------------------


def train_defended(root: Path) -> Path:
    """Two poisons and the clean data, each undefended and under cutout: the paper's Table 2 in
    miniature (one seed), trained into `root`; returns the run folder."""
    from conftest import tiny_spec, write_spec

    spec = tiny_spec(
        "defended",
        training={"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.1}},
        sal={"iterations": 1, "probe_size": 32, "probe_batch_size": 32},
        defences=["none", "cutout"],
    )
    path = write_spec(root / "defended.yaml", spec)
    assert main(["eval", str(path), "--output", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / "defended"


@pytest.fixture(scope="module")
def defended(tmp_path_factory) -> Path:
    return train_defended(tmp_path_factory.mktemp("defended"))


def test_poisons_are_ranked_within_each_defence_and_clean_rows_are_references(defended):
    entries = {e.arm_id: e for e in read_entries(defended)}
    (track,) = leaderboard.build(list(entries.values()))
    assert [(r.defence, r.poison) for r in track.rows if r.reference] == [
        ("none", "clean"),
        ("cutout", "clean"),
    ]
    assert all(r.rank is None for r in track.rows if r.reference)  # never ranked among poisons
    for defence in ("none", "cutout"):
        poisons = [r for r in track.rows if r.defence == defence and not r.reference]
        assert sorted(r.poison for r in poisons) == ["noise-class", "noise-sample"]
        uds = [entries[f"{r.poison}__{defence}__s0"].results.ud for r in poisons]
        assert uds == sorted(uds)
        assert [str(r.rank) for r in poisons] == expected_ranks(uds)
    # the table reads by defence: no defence first, each defence's reference row on top
    assert [r.defence for r in track.rows] == ["none"] * 3 + ["cutout"] * 3
    rows = md_tracks(leaderboard.markdown([track]))[track.id]
    assert [r[1] for r in rows if r[2] == "clean"] == ["ref", "ref"]
    cutout = {r[2]: r for r in rows if r[0] == "cutout"}
    for poison in ("clean", "noise-class", "noise-sample"):
        change = entries[f"{poison}__cutout__s0"].results.ud_change
        assert cutout[poison][4] == f"{change:+.3f}"  # ΔUD, signed


def test_a_poison_by_defence_matrix_shows_ud_and_its_change_like_table_2(defended):
    entries = {e.arm_id: e for e in read_entries(defended)}
    (track,) = leaderboard.build(list(entries.values()))
    text = leaderboard.markdown([track])
    ranking, matrix = md_tables(text)[track.id]
    assert "| poison | none | cutout |" in text
    by_undefended_ud = sorted(
        ("noise-class", "noise-sample"), key=lambda p: (entries[f"{p}__none__s0"].results.ud, p)
    )
    assert [line[0] for line in matrix] == ["clean (reference)", *by_undefended_ud]
    for line in matrix:
        poison = line[0].removesuffix(" (reference)")
        undefended = entries[f"{poison}__none__s0"].results
        defended_ = entries[f"{poison}__cutout__s0"].results
        assert line[1] == f"{undefended.ud:.3f}"
        assert line[2] == f"{defended_.ud:.3f} ({defended_.ud_change:+.3f})"
    data = leaderboard.page_data([track])["tracks"][0]
    assert data["defences"] == ["none", "cutout"]
    assert [m["poison"] for m in data["matrix"]] == ["clean", *by_undefended_ud]
    assert data["matrix"][0]["reference"] and not data["matrix"][1]["reference"]
    # one defence only: the ranking already is the whole matrix, so none is drawn
    (single,) = leaderboard.build([e for e in entries.values() if e.defence.name == "none"])
    assert len(md_tables(leaderboard.markdown([single]))[single.id]) == 1


def test_tracks_are_titled_by_what_they_are_with_the_id_kept_small(small_runs, board):
    figs = read_entries(small_runs["figs"])
    (track,) = leaderboard.build(figs)
    assert track.title == (
        "digits, train 300 / test 200 · classification · small-cnn (batch_norm, blocks 2, width 4)"
        " · 3 ep sgd lr 0.1, bs 50 · SAL reference ε 0.05, 2 it, probe 64"
    )
    text = (board / "leaderboard.md").read_text()
    assert f"## {track.title}" in text and f"Track `{track.id}`: " in text
    assert f"## Track `{track.id}`" not in text  # the hash is no longer the heading
    # two tracks that differ only in what the short title leaves out are still told apart
    other = figs[0].model_copy(
        update={
            "track": figs[0].track.model_copy(
                update={"id": "0" * 16, "training": {**figs[0].track.training, "amp": True}}
            )
        }
    )
    titles = sorted(t.title for t in leaderboard.build([*figs, other]))
    assert titles == [
        track.title + " · training.amp=False",
        track.title + " · training.amp=True",
    ]


def test_papers_come_from_the_installed_records_and_are_linked_only_when_stated(
    small_runs, monkeypatch
):
    from harness.leaderboard import paper_url

    assert paper_url("Qin et al. 2023, 'Learning the Unlearnable' (arXiv 2303.15127; ICCV)") == (
        "https://arxiv.org/abs/2303.15127"
    )
    assert paper_url("see https://example.org/paper.pdf.") == "https://example.org/paper.pdf"
    assert paper_url("Someone 2020, doi:10.1000/xyz-123.") == "https://doi.org/10.1000/xyz-123"
    assert paper_url("Huang et al. 2021, 'Unlearnable Examples' (ICLR)") is None  # nothing guessed
    figs = read_entries(small_runs["figs"])
    data = leaderboard.page_data(leaderboard.build(figs))
    (noise,) = data["methods"]  # the clean arm and `none` are no methods
    assert noise["name"] == "random-noise" and noise["distribution"] == "harness"
    assert noise["paper"] == "baseline (e.g. Huang et al. 2021, Table 1)" and noise["url"] is None
    row = next(r for t in data["tracks"] for r in t["rows"] if r["poison"] == "noise-class")
    assert row["poison_method"] == noise["anchor"]
    assert "baseline (e.g. Huang et al. 2021, Table 1)" in leaderboard.markdown(
        leaderboard.build(figs)
    )
    # another package's component of the same name lends it no paper
    foreign = [
        e.model_copy(update={"poison": e.poison.model_copy(update={"distribution": "theirs"})})
        for e in figs
        if e.poison is not None
    ]
    (method,) = leaderboard.page_data(leaderboard.build(foreign))["methods"]
    assert method["paper"] is None
    # and without any plugins the page still builds, saying the paper is unknown

    def no_plugins(*args, **kwargs):
        raise RuntimeError("no plugins here")

    monkeypatch.setattr("harness.pluginmanager.get_components", no_plugins)
    tracks = leaderboard.build(figs)
    assert leaderboard.page_data(tracks)["methods"][0]["paper"] is None
    assert "paper unknown" in leaderboard.markdown(tracks)
    assert "</html>" in leaderboard.render_html(tracks)


def test_the_legend_explains_ud_lp_and_the_change_of_ud(board):
    text = (board / "leaderboard.md").read_text()
    for term in ("UD", "#LP", "ΔUD", "rank"):
        assert f"- **{term}**: " in text
    legend = dict(page_json((board / "index.html").read_text())["legend"])
    assert "undefended clean arm" in legend["UD"] and "β" in legend["#LP"]
    assert "without the defence" in legend["ΔUD"]


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


def test_the_track_ranking_the_most_methods_comes_first(small_runs):
    """The headline track is where methods are compared: the figures run (two poisons, three
    entries) comes before the linear run (one poison on two seeds, four entries)."""
    lin, figs = read_entries(small_runs["lin"]), read_entries(small_runs["figs"])
    assert len(lin) > len(figs)
    tracks = leaderboard.build([*lin, *figs])
    assert [len(t.methods) for t in tracks] == [2, 1]
    assert tracks[0].id == figs[0].track.id
    text = leaderboard.markdown(tracks)
    assert text.index(tracks[0].title) < text.index(tracks[1].title)
