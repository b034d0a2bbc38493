"""Command-line overrides of a spec: `--set training.epochs=2`, `--seeds 0,1,2`, `--device cpu`.

An override replaces one value of the spec's data before it is validated, so it is checked
exactly like the file (an error names the option), and it is part of the resolved spec and its
hash: a run made with an override is a different run from the file's own. The run folder's
`spec.yaml` holds the spec as run, headed by the file and the options.
"""

from __future__ import annotations

import copy
import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from harness.errors import SpecError
from harness.specfile import SpecSource


def parse_value(text: str, option: str) -> Any:
    """A value written as YAML: `0.1` a float, `[0, 1]` a list, `true` a bool, `none` a string."""
    if text == "":
        return None
    try:
        return YAML(typ="safe", pure=True).load(io.StringIO(text))
    except YAMLError as exc:
        raise SpecError(f"{option}: the value is not valid YAML ({exc})") from None


def _path(key: str, option: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for part in key.split("."):
        if not part:
            raise SpecError(
                f"{option}: give a dotted path such as training.epochs or poisons.0.params.epsilon"
            )
        parts.append(int(part) if part.isdigit() else part)
    return tuple(parts)


def _assign(data: Any, path: tuple[Any, ...], value: Any, option: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        here = ".".join(map(str, path[: i + 1]))
        if isinstance(node, dict):
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            if isinstance(node[part], str):  # the short form `name` becomes {name: ...}
                node[part] = {"name": node[part]}
            node = node[part]
        else:
            raise SpecError(f"{option}: {here} does not exist in the spec")
    last = path[-1]
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    else:
        raise SpecError(f"{option}: {'.'.join(map(str, path))} does not exist in the spec")


def apply_overrides(source: SpecSource, assignments: list[str]) -> SpecSource:
    """A copy of `source` with every `KEY=VALUE` applied in order (a later one wins)."""
    if not assignments:
        return source
    data = copy.deepcopy(source.data)
    overrides = dict(source.overrides)
    for assignment in assignments:
        option = f"--set {assignment}"
        key, sep, value = assignment.partition("=")
        if not sep:
            raise SpecError(f"{option}: write KEY=VALUE, e.g. --set training.epochs=2")
        path = _path(key.strip(), option)
        # a short form (`backbone: small-cnn`) becomes a mapping when one of its fields is set
        if len(path) > 1 and isinstance(data.get(path[0]), str):
            data[path[0]] = {"name": data[path[0]]}
        _assign(data, path, parse_value(value.strip(), option), option)
        overrides[path] = option
    return SpecSource(
        source.path, data, source.positions, source.key_positions, source.text, overrides
    )


def shorthand(seeds: str | None, device: str | None) -> list[str]:
    """`--seeds 0,1,2` and `--device cpu` as the `--set` assignments they stand for."""
    out = []
    if seeds is not None:
        out.append(f"seeds=[{seeds}]")
    if device is not None:
        out.append(f"training.device={device}")
    return out
