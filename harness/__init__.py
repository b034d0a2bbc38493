"""harness: evaluate unlearnable examples by Sharpness-Aware Learnability and Unlearnable Distance.

In a notebook: `harness.run(spec)` runs a spec (a file or a dict) and `harness.open_run(folder)`
reads a run's SAL, metrics and entries (see `harness.results`). Plugin authors import from
`harness.api`; the record names re-exported here are kept for older plugins.
"""

from harness._version import __version__
from harness.api import (
    BackboneRecord,
    DatasetRecord,
    DefenceRecord,
    NoParams,
    PoisonRecord,
    TaskHeadRecord,
    hookimpl,
)
from harness.results import ArmResults, RunResults, open_run, run

__all__ = [
    "ArmResults",
    "BackboneRecord",
    "DatasetRecord",
    "DefenceRecord",
    "NoParams",
    "PoisonRecord",
    "RunResults",
    "TaskHeadRecord",
    "__version__",
    "hookimpl",
    "open_run",
    "run",
]
