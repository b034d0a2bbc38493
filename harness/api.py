"""The one import face for plugin authors: `from harness.api import ...`.

Everything a plugin needs is here: the hook marker, the record types it returns, the base class
of each kind of component (whose docstrings state the contract it must keep), what the harness
hands a component at build and at run time, and the few helpers every method needs. Anything
else in `harness` is the core's own and may change between releases.

A minimal poison plugin::

    from harness.api import Params, Poison, PoisonRecord, clamp_to_range, hookimpl

    class MyParams(Params):
        epsilon: float = 8 / 255

    class MyPoison(Poison):
        def generate(self, data, ctx):
            x = data.train.x
            noise = torch.rand(x.shape, generator=ctx.generator(salt=1)) * 2 - 1
            return clamp_to_range(x + self.params.epsilon * noise, data.value_range)

    @hookimpl
    def harness_register_poisons():
        return [PoisonRecord(name="my-poison", factory=MyPoison, params=MyParams,
                             description="...", paper="...")]
"""

from __future__ import annotations

from harness._version import __version__
from harness.backbone import Backbone, FeatureKind
from harness.context import BuildContext
from harness.data import (
    DataBundle,
    DiskImages,
    Split,
    StoragePolicy,
    Subset,
    storage_key,
    store_pixels,
    stratified_indices,
    take_targets,
    targets_to,
)
from harness.defence import Defence, StepContext
from harness.errors import DataError, HarnessError
from harness.hookspecs import hookimpl
from harness.parallel import run_in_threads
from harness.pgd import (
    LossFn,
    ValueRange,
    frozen,
    input_gradient,
    project_linf,
    sign_pgd,
    sign_step,
    uniform_start,
)
from harness.poison import GenerationCheckpoint, Poison, PoisonContext, clamp_to_range
from harness.records import (
    BackboneRecord,
    ComponentRecord,
    DatasetRecord,
    DefenceRecord,
    NoParams,
    Params,
    PoisonBudget,
    PoisonRecord,
    SALEstimatorRecord,
    TaskHeadRecord,
    TrackerRecord,
)
from harness.sal_estimators import (
    NormalizedStepsEstimator,
    ProbeBatches,
    ReferenceEstimator,
    SALEstimator,
    SALResult,
)
from harness.task import Metric, TaskHead
from harness.tracking import RunInfo, Tracker

__all__ = [
    "Backbone",
    "BackboneRecord",
    "BuildContext",
    "ComponentRecord",
    "DataBundle",
    "DataError",
    "DatasetRecord",
    "Defence",
    "DefenceRecord",
    "DiskImages",
    "FeatureKind",
    "GenerationCheckpoint",
    "HarnessError",
    "LossFn",
    "Metric",
    "NoParams",
    "Params",
    "Poison",
    "PoisonBudget",
    "PoisonContext",
    "NormalizedStepsEstimator",
    "PoisonRecord",
    "ProbeBatches",
    "ReferenceEstimator",
    "SALEstimator",
    "SALEstimatorRecord",
    "SALResult",
    "RunInfo",
    "Split",
    "StepContext",
    "StoragePolicy",
    "Subset",
    "TaskHead",
    "TaskHeadRecord",
    "Tracker",
    "TrackerRecord",
    "ValueRange",
    "__version__",
    "clamp_to_range",
    "frozen",
    "hookimpl",
    "input_gradient",
    "project_linf",
    "run_in_threads",
    "sign_pgd",
    "sign_step",
    "storage_key",
    "store_pixels",
    "stratified_indices",
    "take_targets",
    "targets_to",
    "uniform_start",
]
