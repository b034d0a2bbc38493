"""harness: evaluate unlearnable examples by Sharpness-Aware Learnability and Unlearnable Distance.

Plugin authors need only `hookimpl` and the record types re-exported here.
"""

from harness._version import __version__
from harness.hookspecs import hookimpl
from harness.records import (
    BackboneRecord,
    DatasetRecord,
    DefenceRecord,
    NoParams,
    PoisonRecord,
    TaskHeadRecord,
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
