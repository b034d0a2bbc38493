"""The learnable threshold β, learnable-layer counts and the Unlearnable Distance (paper §4).

Arrays are epochs × layers. Everything here is a pure function of SAL arrays, so a run's
entries can always be recomputed from its HDF5 file alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


def epoch_threshold(values: np.ndarray) -> float:
    """β_t: the mean of the two 2-means centres of one epoch's layer SAL values (raw scale).

    Uses scikit-learn's KMeans(n_clusters=2, random_state=0, n_init="auto") exactly as the
    reference does. With fewer than two distinct values there is nothing to split, and the
    single centre is the threshold.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("an epoch with no layer values has no threshold")
    if np.unique(values).size < 2:
        return float(values[0])
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=2, random_state=0, n_init="auto").fit(values.reshape(-1, 1))
    return float(km.cluster_centers_.mean())


def learnable_threshold(clean_sal: np.ndarray) -> tuple[float, np.ndarray]:
    """β (Eq. 4) and the per-epoch β_t it averages."""
    clean_sal = np.asarray(clean_sal, dtype=np.float64)
    if clean_sal.ndim != 2 or clean_sal.shape[0] == 0:
        raise ValueError(
            f"clean SAL must be epochs × layers with at least one epoch, got {clean_sal.shape}"
        )
    per_epoch = np.array([epoch_threshold(row) for row in clean_sal])
    return float(per_epoch.mean()), per_epoch


def learnable_counts(sal: np.ndarray, beta: float) -> np.ndarray:
    """λ(t): layers whose SAL is strictly above β, per epoch."""
    return (np.asarray(sal, dtype=np.float64) > beta).sum(axis=1)


def learnable_parameters(sal: np.ndarray, beta: float) -> float:
    """#LP: the mean of λ(t) over epochs."""
    return float(learnable_counts(sal, beta).mean())


@dataclass(frozen=True)
class Score:
    beta: float
    lp: float
    clean_lp: float
    ud: float | None  # None when the clean arm has no learnable layer at all


def score(sal: np.ndarray, clean_sal: np.ndarray) -> Score:
    """UD (Eq. 5) of an arm against the (undefended) clean arm of its track."""
    beta, _ = learnable_threshold(clean_sal)
    lp = learnable_parameters(sal, beta)
    clean_lp = learnable_parameters(clean_sal, beta)
    ud = lp / clean_lp if clean_lp > 0 else None
    return Score(beta=beta, lp=lp, clean_lp=clean_lp, ud=ud)


def learnable_proportion(sal: np.ndarray, beta: float) -> np.ndarray:
    """λ(t) / L: the share of layers above β per epoch (Figure 4b's per-task curves)."""
    sal = np.asarray(sal, dtype=np.float64)
    return learnable_counts(sal, beta) / max(sal.shape[1], 1)


def task_similarity(task_sal: dict[str, np.ndarray]) -> np.ndarray:
    """Cosine similarity between every two tasks' SAL vectors, per epoch: [T, K, K] (Figure 4a).

    The vectors are the per-layer SAL of each task's loss over the same backbone layers, as
    recorded; a zero vector has similarity 0 with everything (and 1 with itself).
    """
    stacked = np.stack(
        [np.asarray(v, dtype=np.float64) for v in task_sal.values()], axis=1
    )  # [T, K, L]
    norms = np.linalg.norm(stacked, axis=2, keepdims=True)
    unit = np.divide(stacked, norms, out=np.zeros_like(stacked), where=norms > 0)
    sim = np.einsum("tkl,tjl->tkj", unit, unit)
    k = stacked.shape[1]
    sim[:, np.arange(k), np.arange(k)] = 1.0
    return sim
