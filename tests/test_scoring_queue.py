"""The leaderboard's scoring queue: submitted specs composed with their track, installed in an
environment of their own, run confined, filed, and given a status; one failure costs only itself."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ruamel.yaml import YAML

from harness.cli import main
from harness.leaderboard import read_statuses
from harness.scoring_queue import Limits, score_submissions

REPO = Path(__file__).resolve().parents[1]
TINY_TRACK = {
    "name": "tiny",
    "data": {"name": "digits", "subset": {"train": 300, "test": 200}},
    "backbone": {"name": "small-cnn", "params": {"width": 4, "blocks": 2}},
    "training": {"epochs": 2, "batch_size": 50, "optimizer": {"name": "sgd", "lr": 0.05}},
    "sal": {"iterations": 2, "probe_size": 64, "probe_batch_size": 32},
    "defences": ["none"],
    "seeds": [0],
}


def dump(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        YAML(typ="safe", pure=True).dump(data, f)
    return path


def wheel(source: Path, out: Path) -> str:
    """Build a plugin package into a wheel, as its author would, and return the file's name."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return next(p.name for p in out.glob("*.whl"))


def plugin_package(root: Path, name: str, body: str) -> Path:
    """A tiny third-party plugin distribution `name` whose module is `body`."""
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(body, encoding="utf-8")
    (root / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "0.1.0"\n'
        f'[project.entry-points.harness]\nplugin = "{module}"\n'
        f'[tool.setuptools]\npackages = ["{module}"]\n',
        encoding="utf-8",
    )
    return root


HOSTILE = """
from pathlib import Path
from harness.api import Poison, PoisonRecord, hookimpl

class Escape(Poison):
    def generate(self, data, ctx):
        Path({target!r}).write_text("escaped")
        return data.train.x.clone()

@hookimpl
def harness_register_poisons():
    return [PoisonRecord(name="escape", factory=Escape, description="writes outside its folder")]
"""


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """One scoring pass over five submissions, and a second pass that must change nothing."""
    root = tmp_path_factory.mktemp("queue")
    tracks, subs, board = root / "tracks", root / "submissions", root / "leaderboard"
    dump(tracks / "tiny.yaml", TINY_TRACK)
    dump(
        subs / "builtin" / "submission.yaml",
        {
            "track": "tiny",
            "poisons": [{"name": "random-noise", "label": "my-noise", "params": {"epsilon": 0.05}}],
        },
    )
    dump(
        subs / "builtin-2" / "submission.yaml",
        {
            "track": "tiny",
            "poisons": [
                {"name": "random-noise", "label": "class-noise", "params": {"mode": "class-wise"}}
            ],
        },
    )
    example = wheel(REPO / "tests" / "example_plugin", subs / "third-party")
    dump(
        subs / "third-party" / "submission.yaml",
        {"track": "tiny", "poisons": [{"name": "example-stripes"}], "package": {"wheel": example}},
    )
    broken = plugin_package(
        root / "src-broken", "harness-broken-poison", 'raise ImportError("needs libfoo")\n'
    )
    dump(
        subs / "broken" / "submission.yaml",
        {
            "track": "tiny",
            "poisons": [{"name": "broken-poison"}],
            "package": {"wheel": wheel(broken, subs / "broken")},
        },
    )
    dump(
        subs / "override" / "submission.yaml",
        {"track": "tiny", "training": {"epochs": 1}, "poisons": [{"name": "random-noise"}]},
    )
    escape_target = root / "escaped.txt"
    hostile = plugin_package(
        root / "src-hostile", "harness-escape-poison", HOSTILE.format(target=str(escape_target))
    )
    dump(
        subs / "hostile" / "submission.yaml",
        {
            "track": "tiny",
            "poisons": [{"name": "escape"}],
            "package": {"wheel": wheel(hostile, subs / "hostile")},
        },
    )
    logs: list[str] = []
    first = score_submissions(subs, board, tracks, limits=Limits(seconds=300), log=logs.append)
    clean = (
        board / "work" / "clean" / "tiny" / "runs" / "tiny" / "checkpoints" / "clean__none__s0.pt"
    )
    trained_once = clean.stat().st_mtime_ns
    second = score_submissions(subs, board, tracks, limits=Limits(seconds=300), log=logs.append)
    return {
        "root": root,
        "board": board,
        "first": {s.id: s for s in first},
        "second": second,
        "logs": logs,
        "clean": clean,
        "clean_mtime": trained_once,
        "escape": escape_target,
    }


def test_a_built_in_poison_is_scored_and_appears_on_the_page(scored) -> None:
    status = scored["first"]["builtin"]
    assert status.status == "scored" and status.entries == ["tiny.builtin__my-noise__none__s0.json"]
    board = scored["board"]
    entry = json.loads((board / "entries" / status.entries[0]).read_text())
    assert entry["poison"]["name"] == "random-noise" and entry["results"]["ud"] is not None
    assert "my-noise" in (board / "leaderboard.md").read_text()
    assert '"id": "builtin"' in (board / "index.html").read_text()


def test_a_third_party_package_is_installed_in_isolation_and_scored(scored) -> None:
    status = scored["first"]["third-party"]
    assert status.status == "scored", status.reason
    entry = json.loads((scored["board"] / "entries" / status.entries[0]).read_text())
    assert entry["poison"]["distribution"] == "harness-example-poison"
    with pytest.raises(md.PackageNotFoundError):  # never installed where the maintainer runs
        md.distribution("harness-example-poison")


def test_a_broken_package_and_an_override_fail_with_clear_statuses(scored) -> None:
    broken, override = scored["first"]["broken"], scored["first"]["override"]
    assert broken.status == "failed" and "harness eval failed" in broken.reason
    assert "libfoo" in broken.log_tail and "broken-poison" in broken.log_tail
    assert override.status == "failed" and broken.entries == [] == override.entries
    assert "training: fixed by the track 'tiny'" in override.reason


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (installed by .ci/run)")
def test_a_submission_that_writes_outside_its_folder_fails_alone(scored) -> None:
    hostile = scored["first"]["hostile"]
    assert hostile.status == "failed" and hostile.sandboxed
    assert "Read-only file system" in hostile.log_tail
    assert not scored["escape"].exists()


def test_the_clean_arms_run_once_and_every_submission_is_scored_against_them(scored) -> None:
    board = scored["board"]
    assert sum("training its clean arms once" in line for line in scored["logs"]) == 1
    assert scored["clean"].stat().st_mtime_ns == scored["clean_mtime"]
    clean_entries = sorted(p.name for p in (board / "entries").glob("*clean*"))
    assert clean_entries == ["tiny__clean__none__s0.json"]  # filed once, by the track's clean run
    betas = {
        json.loads(p.read_text())["results"]["beta"] for p in (board / "entries").glob("*.json")
    }
    assert len(betas) == 1
    for sid in ("builtin", "builtin-2", "third-party"):
        assert scored["first"][sid].clean_run.endswith("work/clean/tiny/runs/tiny")
    # and every filed entry says which clean run and arm it was scored against
    clean_hash = json.loads((board / "entries" / "tiny__clean__none__s0.json").read_text())[
        "spec_hash"
    ]
    for path in (board / "entries").glob("*.json"):
        reference = json.loads(path.read_text())["clean_reference"]
        assert reference == {"run": "tiny", "spec_hash": clean_hash, "arm_id": "clean__none__s0"}


def test_resubmitting_the_same_submission_rescores_nothing(scored) -> None:
    assert scored["second"] == []
    assert {s.id for s in read_statuses(scored["board"])} == set(scored["first"])
    assert sum("not rescored" in line for line in scored["logs"]) == len(scored["first"])


def test_validate_checks_a_submission_against_its_track(tmp_path: Path, capsys) -> None:
    tracks = tmp_path / "tracks"
    dump(tracks / "tiny.yaml", TINY_TRACK)
    good = dump(tmp_path / "good.yaml", {"track": "tiny", "poisons": [{"name": "random-noise"}]})
    assert main(["validate", str(good), "--tracks", str(tracks)]) == 0
    assert "valid submission to track tiny" in capsys.readouterr().out
    bad = dump(
        tmp_path / "bad.yaml",
        {"track": "tiny", "sal": {"iterations": 1}, "poisons": [{"name": "random-noise"}]},
    )
    assert main(["validate", str(bad), "--tracks", str(tracks)]) == 2
    assert re.search(
        rf"{re.escape(str(bad))}:\d+:1: sal: fixed by the track", capsys.readouterr().err
    )
    typo = dump(
        tmp_path / "typo.yaml",
        {"track": "tiny", "poisons": [{"name": "random-noise", "params": {"eps": 1}}]},
    )
    assert main(["validate", str(typo), "--tracks", str(tracks)]) == 2
    assert f"{typo}:" in capsys.readouterr().err  # the poison's error points at the submission


def test_the_official_digits_track_composes_with_a_built_in_poison(capsys) -> None:
    tracks = REPO / "leaderboard" / "tracks"
    assert (tracks / "digits-small-cnn.yaml").exists()
    submission = REPO / "tests" / "data" / "submission-digits.yaml"
    assert main(["validate", str(submission), "--tracks", str(tracks)]) == 0


@pytest.mark.parametrize(
    "track", sorted(p.stem for p in (REPO / "leaderboard" / "tracks").glob("*.yaml"))
)
def test_every_official_track_takes_a_built_in_poison(
    track: str, tmp_path: Path, capsys, request
) -> None:
    """The CPU tracks of the paper's tables, the paper-scale GPU tracks and the digits track all
    compose with a submission (GPU tracks are checked as far as a machine without CUDA can)."""
    tracks = REPO / "leaderboard" / "tracks"
    submission = tmp_path / "submission.yaml"
    dump(submission, {"track": track, "poisons": [{"name": "ops"}]})
    text = (tracks / f"{track}.yaml").read_text()
    if "cifar10-jpg" in text:  # validating reads the data folder: extract it first, as a user would
        request.getfixturevalue("cifar10_folder")
    if "device: cuda" in text and not torch.cuda.is_available():
        assert main(["validate", str(submission), "--tracks", str(tracks)]) == 2
        assert "training.device: 'cuda' asks for a CUDA device" in capsys.readouterr().err
        return
    assert main(["validate", str(submission), "--tracks", str(tracks)]) == 0


def test_execution_options_reach_each_evaluation_and_a_cluster_needs_the_network(capsys):
    from harness.cli import _execution_args, build_parser

    def parsed(*extra: str):
        return build_parser().parse_args(
            ["leaderboard", "score", "subs", "--leaderboard", "lb", *extra]
        )

    assert _execution_args(parsed()) == []
    assert _execution_args(parsed("--executor", "ray", "--cpus-per-arm", "2")) == [
        "--executor",
        "ray",
        "--cpus-per-arm",
        "2.0",
    ]
    assert main(["leaderboard", "score", "subs", "--leaderboard", "lb", "--executor", "ray",
                 "--address", "10.0.0.1:6379"]) == 2  # fmt: skip
    assert "sandbox without network" in capsys.readouterr().err
    args = parsed("--executor", "ray", "--address", "10.0.0.1:6379", "--no-sandbox")
    assert _execution_args(args)[:4] == ["--executor", "ray", "--address", "10.0.0.1:6379"]


INTERRUPTED_SCORING = """\
import signal, sys
from pathlib import Path
from harness.scoring_queue import Limits, Scorer

def interrupt(signum, frame):
    raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, which the CLI turns into the same) mid-run

work = Path(sys.argv[1])
scorer = Scorer(work / "board", work / "tracks", limits=Limits(sandbox=sys.argv[2] == "bwrap"))
signal.signal(signal.SIGALRM, interrupt)
signal.alarm(3)
try:
    scorer._confined(["sleep", "4321"], work, network=False, timeout=600)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
def test_an_interrupted_scoring_leaves_no_evaluation_running(tmp_path: Path, sandbox: str) -> None:
    # the evaluation runs in a session of its own, which a terminal's Ctrl-C never reaches: the
    # queue ends it itself, or it would train on with no one to score it
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")

    def sleepers() -> list[str]:
        found = []
        for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
            try:
                args = (pid / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args[:2] == [b"sleep", b"4321"]:
                found.append(pid.name)
        return found

    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_SCORING, str(tmp_path), sandbox],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "interrupted", result.stderr
    assert sleepers() == []
