"""Feature-space metrics: two-way identification, correlation distances, n-way top-k.

All take feature matrices (``(N, D)``, one row per image, reconstructions and targets in the
same order); the networks that make them live in :mod:`brainrecon.metrics.networks`.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ..errors import InvalidInputError

__all__ = ["two_way_per_image", "two_way", "two_way_pairwise", "correlation_distance_per_image",
           "correlation_distance", "n_way_top_k_per_image", "n_way_top_k", "mean_ci"]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and normal confidence interval ``mean ± z · std / sqrt(n)`` (MindEye's ``norm.interval``).

    ``std`` is NumPy's population standard deviation (``ddof=0``), as MindEye computes it.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2 or v.std() == 0:
        return m, m, m
    lo, hi = norm.interval(confidence, loc=m, scale=v.std() / np.sqrt(len(v)))
    return m, float(lo), float(hi)


def _check(pred, real):
    pred, real = np.asarray(pred), np.asarray(real)
    pred, real = pred.reshape(len(pred), -1), real.reshape(len(real), -1)
    if pred.shape != real.shape:
        raise InvalidInputError(f"reconstruction features {pred.shape} and target features {real.shape} "
                                "must have the same shape (one row per image, same order).")
    if len(pred) < 2:
        raise InvalidInputError(f"two-way identification needs at least 2 images; got {len(pred)}.")
    return pred, real


def _zscore_rows(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64, copy=True)
    a -= a.mean(1, keepdims=True)
    n = np.sqrt((a * a).sum(1, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / n


def _corr_matrix(real: np.ndarray, pred: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``r[i, j] = Pearson(real_i, pred_j)`` (= ``np.corrcoef(real, pred)[:N, N:]``)."""
    zr, zp = _zscore_rows(real), _zscore_rows(pred)
    return np.concatenate([zr[i:i + chunk] @ zp.T for i in range(0, len(zr), chunk)])


def two_way_per_image(pred, real) -> np.ndarray:
    """Per reconstruction j: share of the other N−1 targets i with ``r(real_i, pred_j) < r(real_j, pred_j)``.

    This is MindEye's ``two_way_identification`` (§3.3) before its final mean; chance is 0.5.

    Parameters
    ----------
    pred, real : array (N, ...)
        Features of reconstructions and of their targets, flattened per row.
    """
    pred, real = _check(pred, real)
    r = _corr_matrix(real, pred)
    congruent = np.diag(r)
    success = r < congruent[None, :]            # r[i, j] < r[j, j]
    return success.sum(0) / (len(r) - 1)


def two_way(pred, real) -> float:
    """Two-way identification accuracy (fraction, chance 0.5, higher is better)."""
    return float(np.mean(two_way_per_image(pred, real)))


def two_way_pairwise(pred, real) -> float:
    """The same figure computed a second way: an explicit loop over pairs with ``np.corrcoef``.

    Slow (``N²`` correlations); for checking :func:`two_way` on small sets.
    """
    pred, real = _check(pred, real)
    n = len(pred)
    wins = 0
    for j in range(n):
        own = np.corrcoef(real[j], pred[j])[0, 1]
        for i in range(n):
            if i != j and np.corrcoef(real[i], pred[j])[0, 1] < own:
                wins += 1
    return wins / (n * (n - 1))


def correlation_distance_per_image(pred, real) -> np.ndarray:
    """``scipy.spatial.distance.correlation(real_i, pred_i)`` = 1 − Pearson r, per image (§3.4)."""
    pred, real = _check(pred, real)
    zr, zp = _zscore_rows(real), _zscore_rows(pred)
    return 1.0 - (zr * zp).sum(1)


def correlation_distance(pred, real) -> float:
    """Mean correlation distance (EffNet-B, SwAV; 0 for identical features, lower is better)."""
    return float(np.mean(correlation_distance_per_image(pred, real)))


def n_way_top_k_per_image(pred_probs, target_probs=None, target_labels=None, n_way: int = 50, top_k: int = 1,
                          n_trials: int = 50, seed: int = 0) -> np.ndarray:
    """n-way top-k semantic accuracy per reconstruction (MinD-Vis / CAD, §3.7).

    The label of each target is the classifier's arg-max on the target image (or
    ``target_labels``); in each trial ``n_way − 1`` distractor *classes* are drawn and the
    reconstruction scores when its probability of the label is within the top ``k`` of the
    label plus distractors. Chance ``k / n_way``.

    Parameters
    ----------
    pred_probs : array (N, C)
        Class probabilities of the reconstructions.
    target_probs : array (N, C), optional
    target_labels : array (N,), optional
        Given instead of ``target_probs``.
    n_way, top_k, n_trials, seed : int
        ``n_way`` is capped at ``C``.
    """
    p = np.asarray(pred_probs, dtype=np.float64)
    if target_labels is None:
        if target_probs is None:
            raise InvalidInputError("give target_probs or target_labels.")
        target_labels = np.asarray(target_probs).argmax(1)
    labels = np.asarray(target_labels, dtype=np.int64)
    n, c = p.shape
    if len(labels) != n:
        raise InvalidInputError(f"{n} reconstructions but {len(labels)} target labels.")
    n_way = int(min(n_way, c))
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    for i in range(n):
        others = np.setdiff1d(np.arange(c), [labels[i]])
        own = p[i, labels[i]]
        hits = 0
        for _ in range(n_trials):
            d = rng.choice(others, n_way - 1, replace=False)
            hits += int((p[i, d] > own).sum() < top_k)   # rank of the label among n_way scores
        out[i] = hits / n_trials
    return out


def n_way_top_k(pred_probs, target_probs=None, target_labels=None, n_way: int = 50, top_k: int = 1,
                n_trials: int = 50, seed: int = 0) -> float:
    """Mean of :func:`n_way_top_k_per_image` (fraction, higher is better)."""
    return float(np.mean(n_way_top_k_per_image(pred_probs, target_probs, target_labels, n_way, top_k,
                                               n_trials, seed)))
