"""How far an estimator's SAL agrees with the reference's, on the same snapshots and probe.

Everything is a pure function of SAL arrays (epochs × layers per arm), so agreement can be
computed from stored values alone. Each estimator is scored the way the harness scores a run:
β from its own clean arm (`harness.scoring`), learnable layers strictly above β, UD against its
own clean arm. An estimator that is off by a uniform scale therefore loses nothing; what counts
is whether it orders the layers and splits them into learnable and not as the reference does.

The bar an estimator has to clear to become a default (issue 11): at least 98% of the
(epoch, layer) decisions equal to the reference's and |ΔUD| ≤ 0.05 on every poisoned arm, at
no more than 1/10 of the reference's cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from harness.scoring import learnable_threshold, score

DECISION_BAR = 0.98
UD_BAR = 0.05
COST_BAR = 0.1


@dataclass(frozen=True)
class ArmAgreement:
    """One arm: the reference's and the estimator's view of it, and how far they agree."""

    arm: str
    #: mean over epochs of Spearman's ρ between the two layer-SAL vectors (NaN epochs skipped)
    spearman: float
    #: share of (epoch, layer) cells where both call the layer learnable, or both not
    decisions: float
    #: mean over epochs of |A ∩ B| / |A ∪ B| of the learnable sets (1 when both are empty)
    jaccard: float
    lp_reference: float
    lp_estimate: float
    ud_reference: float | None
    ud_estimate: float | None
    #: epochs × layers: the weight of this arm in pooled decisions
    cells: int

    @property
    def ud_difference(self) -> float | None:
        if self.ud_reference is None or self.ud_estimate is None:
            return None
        return self.ud_estimate - self.ud_reference


@dataclass(frozen=True)
class Agreement:
    """An estimator against the reference over every arm of one setting."""

    arms: list[ArmAgreement]
    beta_reference: float
    beta_estimate: float
    #: estimator seconds / reference seconds, when both were timed
    cost_ratio: float | None

    @property
    def decisions(self) -> float:
        """Share of agreeing decisions pooled over every arm's cells (arms weigh by their cells)."""
        cells = sum(a.cells for a in self.arms)
        return sum(a.cells * a.decisions for a in self.arms) / max(cells, 1)

    @property
    def spearman(self) -> float:
        return _nanmean([a.spearman for a in self.arms])

    @property
    def jaccard(self) -> float:
        return _nanmean([a.jaccard for a in self.arms])

    @property
    def max_ud_difference(self) -> float:
        """Largest |ΔUD| over the arms (the clean arm's UD is 1 for both, by definition)."""
        diffs = [abs(a.ud_difference) for a in self.arms if a.ud_difference is not None]
        return max(diffs) if diffs else math.nan

    def passes(
        self, decisions: float = DECISION_BAR, ud: float = UD_BAR, cost: float = COST_BAR
    ) -> bool:
        """Whether the estimator clears the bar; an untimed estimator does not."""
        return (
            self.decisions >= decisions
            and self.max_ud_difference <= ud
            and self.cost_ratio is not None
            and self.cost_ratio <= cost
        )


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ (average ranks for ties); NaN when either vector is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B| of two boolean masks; 1 when both are empty (they agree)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def arm_agreement(
    arm: str,
    reference: np.ndarray,
    estimate: np.ndarray,
    beta_reference: float,
    beta_estimate: float,
    clean_reference: np.ndarray,
    clean_estimate: np.ndarray,
) -> ArmAgreement:
    """Agreement on one arm, each side against its own β and its own clean arm."""
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape or reference.ndim != 2:
        raise ValueError(
            f"arm {arm}: SAL arrays must both be epochs × layers, got {reference.shape} and {estimate.shape}"
        )
    learn_ref = reference > beta_reference
    learn_est = estimate > beta_estimate
    rhos = [spearman(r, e) for r, e in zip(reference, estimate, strict=True)]
    s_ref = score(reference, clean_reference)
    s_est = score(estimate, clean_estimate)
    return ArmAgreement(
        arm=arm,
        spearman=_nanmean(rhos),
        decisions=float((learn_ref == learn_est).mean()),
        jaccard=float(np.mean([jaccard(r, e) for r, e in zip(learn_ref, learn_est, strict=True)])),
        lp_reference=s_ref.lp,
        lp_estimate=s_est.lp,
        ud_reference=s_ref.ud,
        ud_estimate=s_est.ud,
        cells=int(reference.size),
    )


def agreement(
    reference: Mapping[str, np.ndarray],
    estimate: Mapping[str, np.ndarray],
    clean: str = "clean",
    reference_seconds: float | None = None,
    estimate_seconds: float | None = None,
) -> Agreement:
    """An estimator's SAL against the reference's, arm by arm (same arms, snapshots, probe).

    `reference` and `estimate` map each arm to its SAL array (epochs × layers); `clean` names
    the arm whose SAL sets each side's β and UD denominator. Seconds are totals over the same
    snapshots, for the cost ratio.
    """
    if set(reference) != set(estimate):
        raise ValueError(f"arms differ: {sorted(reference)} vs {sorted(estimate)}")
    if clean not in reference:
        raise ValueError(f"no clean arm {clean!r} among {sorted(reference)}")
    beta_ref, _ = learnable_threshold(reference[clean])
    beta_est, _ = learnable_threshold(estimate[clean])
    arms = [
        arm_agreement(
            arm,
            reference[arm],
            estimate[arm],
            beta_ref,
            beta_est,
            reference[clean],
            estimate[clean],
        )
        for arm in reference
    ]
    ratio = None
    if reference_seconds and estimate_seconds is not None:
        ratio = estimate_seconds / reference_seconds
    return Agreement(arms, beta_ref, beta_est, ratio)
