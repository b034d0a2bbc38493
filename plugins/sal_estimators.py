"""First-party SAL estimators: the paper's reference search, and normalised steps.

Their derivations, costs and measured agreement are in docs/sal.md; the code in
`harness.sal_estimators`. Both read ε from the spec's SAL section (`sal.epsilon`); the
reference also its iterations and inner learning rate.
"""

from __future__ import annotations

from pydantic import Field

from harness.api import (
    BuildContext,
    NormalizedStepsEstimator,
    Params,
    ReferenceEstimator,
    SALEstimatorRecord,
    hookimpl,
)


class ReferenceParams(Params):
    convergence_stop: bool = Field(
        default=False,
        description="end a layer's search after an iteration in which neither copy improved its "
        "best loss (changes values where a later iteration would have improved again)",
    )


class NormalizedStepsParams(Params):
    steps: int = Field(
        default=1,
        ge=1,
        le=100,
        description="normalised steps per copy: 1 = the two points θ ± ε‖θ‖·g/‖g‖ of the shared "
        "gradient; k > 1 adds k − 1 projected steps of shrinking length along each copy's own "
        "gradient",
    )


def _sal(context: BuildContext):
    if context.sal is None:
        raise ValueError("a SAL estimator is built with the spec's SAL section (context.sal)")
    return context.sal


def build_reference(params: ReferenceParams, context: BuildContext) -> ReferenceEstimator:
    sal = _sal(context)
    return ReferenceEstimator(
        sal.epsilon, sal.iterations, sal.inner_lr, convergence_stop=params.convergence_stop
    )


def build_normalized_steps(
    params: NormalizedStepsParams, context: BuildContext
) -> NormalizedStepsEstimator:
    return NormalizedStepsEstimator(_sal(context).epsilon, steps=params.steps)


@hookimpl
def harness_register_sal_estimators() -> list[SALEstimatorRecord]:
    return [
        SALEstimatorRecord(
            name="reference",
            factory=build_reference,
            params=ReferenceParams,
            description="the paper's code, value for value: projected SGD ascent and descent per "
            "layer (sal.iterations passes over the probe at sal.inner_lr), the larger change",
            derivation=ReferenceEstimator.__doc__.split("Derivation: ")[1].split("\n\n")[0],
            biases=ReferenceEstimator.__doc__.split("Known biases: ")[1].split("\n\n")[0],
        ),
        SALEstimatorRecord(
            name="normalized-steps",
            factory=build_normalized_steps,
            params=NormalizedStepsParams,
            description="normalised steps to the sphere from one gradient shared by every layer "
            "(first order), then the loss at θ ± ε‖θ‖·ĝ over the probe",
            derivation=NormalizedStepsEstimator.__doc__.split("Derivation: ")[1].split("\n\n")[0],
            biases=NormalizedStepsEstimator.__doc__.split("Known biases: ")[1].split("\n\n")[0],
        ),
    ]
