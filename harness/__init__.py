"""harness: evaluate unlearnable examples by Sharpness-Aware Learnability and Unlearnable Distance.

Plugin authors import from `harness.api`; the names re-exported here are kept for older plugins.
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

__all__ = [
    "BackboneRecord",
    "DatasetRecord",
    "DefenceRecord",
    "NoParams",
    "PoisonRecord",
    "TaskHeadRecord",
    "__version__",
    "hookimpl",
]
