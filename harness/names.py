"""The names the harness turns into file names and ids, defined once.

Component names (`small-cnn`, `timm:resnet18`) and arm labels (`noise-class`) end up in file
names, HDF5 group names and leaderboard rows, so their patterns live here, beside the one
format of an arm id: `<poison label>__<defence label>__s<seed>`.
"""

from __future__ import annotations

import re

#: a run name or an arm label: it names files and folders
SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: a registered component name: lower case, and `:` for a family's variant (`timm:resnet18`)
COMPONENT_NAME = r"^[a-z0-9][a-z0-9._:-]*$"
COMPONENT_NAME_RE = re.compile(COMPONENT_NAME)
#: separates the parts of an arm id, so no label may contain it
ARM_ID_SEPARATOR = "__"
CLEAN = "clean"
UNDEFENDED = "none"


def arm_id(poison_key: str, defence_key: str, seed: int) -> str:
    """The id of the arm training on `poison_key` data (or `clean`) under `defence_key`."""
    return f"{poison_key}{ARM_ID_SEPARATOR}{defence_key}{ARM_ID_SEPARATOR}s{seed}"


def clean_arm_id(seed: int) -> str:
    """The undefended clean arm of a seed: where β and the UD denominator come from."""
    return arm_id(CLEAN, UNDEFENDED, seed)
