"""`validate` refuses every spec that would break `eval` later (issue 14, items 10 and 11).

Files too large, with too many values or nested too deep are refused before any YAML parser
sees them; every number is range-checked: finite, fitting float32, booleans not taken for
numbers, seeds inside the generators' range, and a device that exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_spec
from trust_helpers import cli, no_traceback, tiny

from harness.cli import main
from harness.specfile import MAX_DEPTH, MAX_SPEC_BYTES, MAX_VALUES


def validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


# --- item 11: size and depth -------------------------------------------------------------------


def test_a_spec_over_the_size_limit_is_refused_before_parsing(tmp_path, capsys):
    path = write_spec(tmp_path / "big.yaml", tiny(description="x" * (MAX_SPEC_BYTES + 10)))
    code, err = validate(path, capsys)
    assert code == 2
    assert "over the limit of 2 MiB for a spec" in err and "nothing was parsed" in err


def test_megabytes_of_comments_are_refused_by_size_too(tmp_path, capsys):
    path = tmp_path / "comments.yaml"
    text = write_spec(tmp_path / "ok.yaml", tiny()).read_text()
    path.write_text(("# a comment line\n" * (MAX_SPEC_BYTES // 16 + 1)) + text)
    code, err = validate(path, capsys)
    assert code == 2 and "MiB" in err


def test_a_spec_with_too_many_keys_is_refused_before_parsing(tmp_path, capsys):
    path = tmp_path / "keys.yaml"
    keys = "".join(f"  k{i}: {i}\n" for i in range(MAX_VALUES))
    path.write_text(write_spec(tmp_path / "ok.yaml", tiny()).read_text() + "extra:\n" + keys)
    code, err = validate(path, capsys)
    assert code == 2
    assert f"holds more than {MAX_VALUES} values" in err


@pytest.mark.parametrize("style", ["flow", "block", "dashes"])
def test_a_spec_nested_800_deep_is_refused_cleanly(tmp_path, style):
    text = write_spec(tmp_path / "ok.yaml", tiny()).read_text()
    if style == "flow":
        text += "deep: " + "[" * 800 + "]" * 800 + "\n"
    elif style == "block":
        text += (
            "deep:\n" + "".join(f"{'  ' * (i + 1)}k:\n" for i in range(800)) + "  " * 801 + "1\n"
        )
    else:
        text += "deep:\n" + "- " * 800 + "1\n"
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    result = cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"nests deeper than {MAX_DEPTH} levels" in result.stderr
    no_traceback(result)


def test_realistic_specs_are_well_inside_the_limits(capsys):
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "specs").glob("*.yaml")):
        from harness.specfile import prescan

        prescan(path.read_text(), path)  # raises when a limit is reached


# --- item 10: numbers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"training": {"epochs": True}}, "training.epochs: a boolean (true/false) is not a number"),
        (
            {"training": {"epochs": 2, "optimizer": {"lr": float("inf")}}},
            "training.optimizer.lr: must be a finite number",
        ),
        (
            {"training": {"epochs": 2, "optimizer": {"lr": 1e300}}},
            "training.optimizer.lr: Input should be less than or equal to 3.4e+38",
        ),
        ({"seeds": [20000000000000]}, "seeds.0: Input should be less than 4294967296"),
        ({"seeds": [18446744073709551616]}, "seeds.0: Input should be less than 4294967296"),
        ({"seeds": [True]}, "seeds.0: a boolean (true/false) is not a number"),
        (
            {"sal": {"epsilon": float("nan")}},
            "sal.epsilon: must be a finite number",
        ),
        (
            {"poisons": [{"name": "random-noise", "params": {"epsilon": True}}]},
            "poisons.0.params.epsilon: a boolean (true/false) is not a number",
        ),
    ],
    ids=[
        "epochs-true",
        "lr-inf",
        "lr-1e300",
        "seed-2e13",
        "seed-2**64",
        "seed-true",
        "sal-nan",
        "param-bool",
    ],
)
def test_numbers_that_would_break_a_run_are_refused_by_validate(tmp_path, capsys, change, expected):
    code, err = validate(write_spec(tmp_path / "s.yaml", tiny(**change)), capsys)
    assert code == 2
    assert expected in err, err


def test_the_largest_seed_is_accepted_and_its_derived_streams_work(tmp_path, capsys):
    from harness.poison import PoisonContext

    code, err = validate(write_spec(tmp_path / "s.yaml", tiny(seeds=[2**32 - 1])), capsys)
    assert code == 0, err
    ctx = PoisonContext(2**32 - 1, torch.device("cpu"), None, None, None)  # type: ignore[arg-type]
    assert ctx.generator(salt=10_000).initial_seed() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_refused_by_validate(tmp_path):
    path = write_spec(tmp_path / "s.yaml", tiny(training={"epochs": 2, "device": "cuda"}))
    result = cli("validate", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "training.device: 'cuda' asks for a CUDA device, and this machine has none" in (
        result.stderr
    )
    no_traceback(result)


def test_a_cuda_device_index_that_does_not_exist_is_refused(monkeypatch):
    from harness import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert preflight.device_unavailable("cuda:1") is None
    assert "this machine has 2 CUDA device(s), cuda:0 to cuda:1" in (
        preflight.device_unavailable("cuda:2") or ""
    )
