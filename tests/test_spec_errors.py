"""A bad spec fails before any work starts, and says where and why.

Every error names the file, the line and column, the field path and what was expected, e.g.

    error: spec.yaml:5:11: training.epochs: Input should be greater than 0 (got 0)

Spec files come from third parties, so they are loaded safely (no YAML tag builds a Python object
or runs code), and no name or value in a spec can make the harness write outside the run's output
folder. Nothing is written for a spec that fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import DataError
from harness.pluginmanager import get_components
from harness.runner import Runner
from harness.specfile import load_spec

QUICKSTART = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"

# The smallest valid spec; its line numbers are used below (appended text starts on line 7).
VALID = """\
name: tiny
data: digits
backbone: small-cnn
training:
  epochs: 1
  device: cpu
"""

POISON = """\
poisons:
  - name: random-noise
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def validate(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`harness validate SPEC`: the exit code, stdout and stderr."""
    capsys.readouterr()
    rc = main(["validate", str(spec)])
    out, err = capsys.readouterr()
    return rc, out, err


def errors(spec: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The problems `harness validate` reports, one `file:line:col: path: message` per line."""
    rc, out, err = validate(spec, capsys)
    assert rc == 2, out
    assert err.startswith(f"error: {spec}:"), err
    return err.removeprefix("error: ").rstrip("\n").splitlines()


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


# --- valid specs, and the schema editors complete from ---------------------------------------


def test_the_quickstart_spec_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = validate(QUICKSTART, capsys)

    assert rc == 0, err
    assert out.startswith(f"{QUICKSTART}: valid (spec hash ")


def test_the_minimal_spec_used_below_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = validate(write(tmp_path, VALID), capsys)
    assert rc == 0, err


def test_schema_is_json_listing_every_top_level_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)

    expected = {
        "name",
        "data",
        "backbone",
        "training",
        "sal",
        "poisons",
        "defences",
        "seeds",
        "output",
    }
    assert expected <= set(schema["properties"])
    assert schema["additionalProperties"] is False  # an editor flags a misspelt top-level key
    assert {"name", "data", "backbone", "training"} <= set(schema["required"])


# --- unknown fields, wrong types, out-of-range values ------------------------------------------


def test_unknown_top_level_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID + "colour: red\n")

    assert errors(spec, capsys) == [
        f"{spec}:7:1: colour: unknown field (not part of the spec; check the spelling)"
    ]


def test_misspelt_nested_field_is_unknown_and_the_real_one_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, VALID.replace("epochs: 1", "epoch: 1"))

    problems = errors(spec, capsys)

    assert (
        f"{spec}:5:3: training.epoch: unknown field (not part of the spec; check the spelling)"
        in problems
    )
    assert f"{spec}:5:3: training.epochs: required field is missing" in problems
    assert len(problems) == 2


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID.replace("epochs: 1", 'epochs: "many"'))

    [problem] = errors(spec, capsys)

    assert problem.startswith(f"{spec}:5:11: training.epochs: Input should be a valid integer")
    assert problem.endswith('(got "many")')


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        (
            VALID.replace("epochs: 1", "epochs: 0"),
            "5:11: training.epochs",
            "Input should be greater than 0 (got 0)",
        ),
        (
            VALID + "sal:\n  epsilon: -1\n",
            "8:12: sal.epsilon",
            "Input should be greater than 0 (got -1)",
        ),
        # a plugin's own parameters are checked against its Params model, with the same positions
        (
            VALID + POISON + "    params:\n      epsilon: 2\n",
            "10:16: poisons.0.params.epsilon",
            "Input should be less than or equal to 1 (got 2)",
        ),
        (
            VALID + POISON + "    params: {epsilon: 2}\n",
            "9:23: poisons.0.params.epsilon",
            "Input should be less than or equal to 1 (got 2)",
        ),
    ],
    ids=["epochs-0", "sal-epsilon-negative", "poison-param-block", "poison-param-flow"],
)
def test_out_of_range_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str, expected: str
) -> None:
    spec = write(tmp_path, text)
    assert errors(spec, capsys) == [f"{spec}:{where}: {expected}"]


def test_unknown_parameter_of_a_plugin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID + POISON + "    params: {eps: 0.1}\n")

    assert errors(spec, capsys) == [
        f"{spec}:9:14: poisons.0.params.eps: unknown field (not part of the spec; check the spelling)"
    ]


# --- unknown component names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            VALID.replace("small-cnn", "small-cn"),
            "3:11: backbone.name: unknown backbone 'small-cn': did you mean 'small-cnn' or 'small-unet'?",
        ),
        (
            VALID.replace("digits", "digit"),
            "2:7: data.name: unknown dataset 'digit': did you mean 'digits'?",
        ),
        (
            VALID + "task: clasification\n",
            "7:7: task.name: unknown task 'clasification': did you mean 'classification' or 'scene-classification'?",
        ),
        (
            VALID + "poisons: [random-nois]\n",
            "7:11: poisons.0.name: unknown poison 'random-nois': did you mean 'random-noise'?",
        ),
        (
            VALID + "defences: [none, nne]\n",
            "7:18: defences.1.name: unknown defence 'nne': did you mean 'none'?",
        ),
    ],
    ids=["backbone", "data", "task", "poison", "defence"],
)
def test_unknown_component_name_suggests_the_closest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    spec = write(tmp_path, text)
    assert errors(spec, capsys) == [f"{spec}:{expected}"]


# --- files that are not a spec -------------------------------------------------------------------


def test_bad_indentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID.replace("  device: cpu", "   device: cpu"))

    assert errors(spec, capsys) == [
        f"{spec}:6:10: malformed YAML: mapping values are not allowed here"
    ]


def test_unclosed_bracket_names_where_it_was_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, VALID + "seeds: [0, 1\n")

    [problem] = errors(spec, capsys)

    assert problem.startswith(f"{spec}:8:1: malformed YAML: expected ',' or ']'")
    assert "flow sequence started at line 7, column 8" in problem


def test_duplicate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID + "name: other\n")

    [problem] = errors(spec, capsys)

    assert problem.startswith(f'{spec}:7:1: malformed YAML: found duplicate key "name"')


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "nowhere.yaml"
    rc, _, err = validate(spec, capsys)

    assert rc == 2
    assert err == f"error: {spec}: no such spec file\n"


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comment-only"])
def test_empty_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    spec = write(tmp_path, text)
    assert errors(spec, capsys) == [f"{spec}:1:1: the spec file is empty"]


def test_a_list_is_not_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "- name: tiny\n- data: digits\n")
    assert errors(spec, capsys) == [f"{spec}:1:1: the spec must be a mapping of fields, not a list"]


# --- safe loading: no YAML tag builds an object or runs code -------------------------------------


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (
            "!!python/object/apply:os.system ['touch {pwned}']",
            "tag:yaml.org,2002:python/object/apply:os.system",
        ),
        ("!!python/name:os.system", "tag:yaml.org,2002:python/name:os.system"),
        ("!foo bar", "!foo"),
    ],
    ids=["object-apply", "name", "custom"],
)
def test_yaml_tags_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, tag: str
) -> None:
    pwned = tmp_path / "pwned"
    spec = write(tmp_path, VALID + "description: " + value.format(pwned=pwned) + "\n")

    assert errors(spec, capsys) == [
        f"{spec}:7:14: description: the YAML tag {tag!r} is not allowed; "
        "spec files hold plain data only (maps, lists, strings, numbers, booleans, null)"
    ]
    assert main(["eval", str(spec), "--output", str(tmp_path / "runs")]) == 2
    assert not pwned.exists()  # the command was never run, by validate or by eval
    assert not (tmp_path / "runs").exists()


def test_a_tag_on_a_key_is_refused_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, VALID + "!!python/name:os.system : 1\n")

    [problem] = errors(spec, capsys)

    assert problem.startswith(f"{spec}:7:1: ")
    assert "the YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed" in problem


def test_alias_bombs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
        for a, b in zip("abcdef", "bcdefg", strict=True)
    )
    spec = write(tmp_path, VALID + bomb)

    [problem] = errors(spec, capsys)

    assert (
        problem
        == f"{spec}: the document is too large (over 100000 values, or aliases expand too far)"
    )


# --- nothing in a spec can write outside the run's output folder --------------------------------


@pytest.mark.parametrize(
    ("text", "where", "expected"),
    [
        (VALID.replace("name: tiny", "name: ../evil"), "1:7: name", "must be a plain name"),
        (VALID.replace("name: tiny", "name: /abs"), "1:7: name", "must be a plain name"),
        (VALID.replace("name: tiny", "name: '..'"), "1:7: name", "must be a plain name"),
        (
            VALID + "output: ../outside\n",
            "7:9: output",
            "must be a relative path inside the working folder, without '..'",
        ),
        (
            VALID + "output: runs/../../outside\n",
            "7:9: output",
            "must be a relative path inside the working folder, without '..'",
        ),
        (
            VALID + "output: {abs}\n",
            "7:9: output",
            "must be a relative path inside the working folder, without '..'",
        ),
        (
            VALID + "output: /tmp/x\n",
            "7:9: output",
            "must be a relative path inside the working folder, without '..'",
        ),
        (
            VALID + "output: 'C:\\outside'\n",
            "7:9: output",
            "must be a relative path inside the working folder, without '..'",
        ),
        (VALID + POISON + "    label: ../x\n", "9:12: poisons.0.label", "must be a plain name"),
        (
            VALID + "defences:\n  - name: none\n    label: a/b\n",
            "9:12: defences.0.label",
            "must be a plain name",
        ),
    ],
    ids=[
        "name-dotdot",
        "name-absolute",
        "name-is-dotdot",
        "output-dotdot",
        "output-inner-dotdot",
        "output-absolute",
        "output-tmp",
        "output-windows-drive",
        "poison-label",
        "defence-label",
    ],
)
def test_names_and_folders_cannot_escape_the_output_folder(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    where: str,
    expected: str,
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the spec's own `output` is relative to here
    spec = write(tmp_path, text.format(abs=tmp_path / "abs-out"))

    [problem] = errors(spec, capsys)

    assert problem.startswith(f"{spec}:{where}: {expected}")
    before = files_under(tmp_path)
    assert main(["eval", str(spec)]) == 2
    assert files_under(tmp_path) == before  # nothing written, inside the folder or beside it


def test_poison_labels_must_be_distinct(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(
        tmp_path,
        VALID
        + """\
poisons:
  - name: random-noise
    label: noise
  - name: random-noise
    label: noise
    params: {mode: class-wise}
""",
    )

    assert errors(spec, capsys) == [
        f"{spec}:11:12: poisons.1.label: the label 'noise' is already used by poisons.0; "
        "give each entry a distinct `label`"
    ]


def test_the_same_poison_twice_needs_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, VALID + "poisons: [random-noise, random-noise]\n")

    [problem] = errors(spec, capsys)

    assert problem.startswith(
        f"{spec}:7:25: poisons.1.label: the label 'random-noise' is already used"
    )


def test_clean_is_a_reserved_poison_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(tmp_path, VALID + POISON + "    label: clean\n")

    assert errors(spec, capsys) == [
        f"{spec}:9:12: poisons.0.label: the label 'clean' is reserved for the clean reference arm; "
        "choose another `label`"
    ]


def test_none_is_a_reserved_defence_label(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `none` names the undefended arms; another defence labelled so would overwrite their files
    spec = write(tmp_path, VALID + "defences:\n  - name: some-defence\n    label: none\n")

    problems = errors(spec, capsys)

    assert problems[0] == (
        f"{spec}:9:12: defences.0.label: the label 'none' is reserved for the "
        "undefended arms; choose another `label`"
    )
    assert problems[1].startswith(f"{spec}:8:11: defences.0.name: unknown defence 'some-defence'")


# --- every problem at once -------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(
        tmp_path,
        """\
name: ../evil
data: digits
backbone: small-cn
training:
  epochs: 0
  batch_size: -1
poisons:
  - name: random-noise
    params: {eps: 0.1}
colour: red
""",
    )

    problems = errors(spec, capsys)

    assert [p.split(": ")[0:2] for p in problems] == [
        # the spec's own fields first, then the plugins' names and parameters
        [f"{spec}:1:7", "name"],
        [f"{spec}:5:11", "training.epochs"],
        [f"{spec}:6:15", "training.batch_size"],
        [f"{spec}:10:1", "colour"],
        [f"{spec}:3:11", "backbone.name"],
        [f"{spec}:9:14", "poisons.0.params.eps"],
    ]


# --- `harness eval` of a bad spec writes nothing -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        VALID + "colour: red\n",
        VALID.replace("epochs: 1", "epochs: 0"),
        VALID.replace("small-cnn", "small-cn"),
        VALID + POISON + "    params: {eps: 0.1}\n",
        VALID + "poisons: [random-noise, random-noise]\n",
        VALID + "seeds: [0, 1\n",
        "",
    ],
    ids=[
        "unknown-field",
        "out-of-range",
        "unknown-backbone",
        "unknown-param",
        "duplicate-label",
        "malformed",
        "empty",
    ],
)
def test_eval_of_a_bad_spec_fails_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    spec = write(tmp_path, text)
    runs = tmp_path / "runs"

    rc = main(["eval", str(spec), "--output", str(runs)])

    assert rc == 2
    assert capsys.readouterr().err.startswith(f"error: {spec}:")
    assert not runs.exists()


def test_eval_with_a_missing_data_set_names_the_path_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nope = tmp_path / "nope"
    spec = write(
        tmp_path,
        VALID.replace("data: digits", f"data:\n  name: cifar10\n  params: {{root: {nope}}}"),
    )
    runs = tmp_path / "runs"

    rc = main(["eval", str(spec), "--output", str(runs), "--quiet"])

    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(
        f"error: {spec}:3:3: data set 'cifar10': CIFAR-10 not found: expected {nope}"
    )
    assert not runs.exists()

    # the same through the API: a DataError, raised by prepare() before the run folder exists
    runner = Runner(load_spec(spec, get_components()), get_components(), output_root=runs)
    with pytest.raises(DataError, match=str(nope)):
        runner.prepare()
    assert not runs.exists()


def test_a_label_with_a_double_underscore_is_refused_because_it_would_make_arm_ids_ambiguous(
    tmp_path, capsys
):
    from conftest import tiny_spec, write_spec

    spec = tiny_spec(poisons=[{"name": "random-noise", "label": "x__none"}])
    path = write_spec(tmp_path / "s.yaml", spec)
    assert main(["validate", str(path)]) == 2
    assert "poisons.0.label" in capsys.readouterr().err
