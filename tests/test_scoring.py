"""β, #LP and UD on hand-made SAL arrays: the paper's Table 1 and Table 2 arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from harness.scoring import epoch_threshold, learnable_counts, learnable_threshold, score

EPOCHS, LAYERS = 50, 21  # CIFAR ResNet-18 has 21 scored layers; the reference trains 50 epochs


def sal_with_learnable_layers(counts: list[int]) -> np.ndarray:
    """Per epoch, `counts[t]` layers at SAL 1.0 and the rest at 0.01."""
    sal = np.full((len(counts), LAYERS), 0.01)
    for t, k in enumerate(counts):
        sal[t, :k] = 1.0
    return sal


def counts_with_mean(lp: float) -> list[int]:
    """50 integer counts whose mean is exactly `lp` (a multiple of 0.02)."""
    total = round(lp * EPOCHS)
    base, extra = divmod(total, EPOCHS)
    return [base + 1] * extra + [base] * (EPOCHS - extra)


CLEAN = sal_with_learnable_layers(counts_with_mean(3.32))


def test_threshold_is_the_mean_of_the_two_cluster_centres():
    assert epoch_threshold(np.array([0.0, 0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.5)
    beta, per_epoch = learnable_threshold(CLEAN)
    assert beta == pytest.approx((1.0 + 0.01) / 2)
    assert per_epoch.shape == (EPOCHS,)


def test_an_epoch_with_one_distinct_value_has_that_value_as_threshold():
    assert epoch_threshold(np.full(5, 0.3)) == pytest.approx(0.3)


def test_learnable_means_strictly_above_beta():
    assert learnable_counts(np.array([[0.5, 0.6, 0.4]]), 0.5).tolist() == [1]


@pytest.mark.parametrize(
    ("method", "lp", "ud"),
    [("EM", 0.62, 0.187), ("TAP", 5.44, 1.639), ("OPS", 0.52, 0.157)],
)
def test_table_1_unlearnable_distances(method, lp, ud):
    s = score(sal_with_learnable_layers(counts_with_mean(lp)), CLEAN)
    assert s.clean_lp == pytest.approx(3.32)
    assert s.lp == pytest.approx(lp)
    assert round(s.ud, 3) == pytest.approx(ud), method


@pytest.mark.parametrize(
    ("defence", "lp", "ud"), [("JPEG", 2.48, 0.747), ("adversarial training", 7.14, 2.151)]
)
def test_table_2_defended_clean_arms_are_scored_against_the_undefended_clean_arm(defence, lp, ud):
    s = score(sal_with_learnable_layers(counts_with_mean(lp)), CLEAN)
    assert round(s.ud, 3) == pytest.approx(ud), defence


def test_beta_comes_from_the_clean_arm_only():
    poisoned = sal_with_learnable_layers(counts_with_mean(0.62)) * 100  # much larger values
    s = score(poisoned, CLEAN)
    assert s.beta == pytest.approx(0.505)  # unaffected by the poisoned arm's scale
    assert s.lp == pytest.approx(EPOCHS * LAYERS / EPOCHS)  # every layer (1 and 0.01 ×100) > β


def test_a_clean_arm_without_learnable_layers_has_no_ud():
    flat = np.full((3, 4), 0.2)
    assert score(flat, flat).ud is None
