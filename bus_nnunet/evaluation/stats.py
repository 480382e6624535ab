"""Paired statistics for comparing trainers on the same images (per-image scores)."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

NAN = float("nan")


def holm_correction(p_values: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (same order as the input; NaN stays NaN).

    Sorted ascending, p_(i) is multiplied by (m - i) (i from 0), a running maximum keeps the
    adjusted values monotone, and they are capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, NAN)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000,
                 random_state: int = 0) -> Dict[str, float]:
    """Percentile bootstrap CI of the mean of ``values`` (NaNs dropped): ``{mean, low, high, n}``."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": NAN, "low": NAN, "high": NAN, "n": 0}
    rng = np.random.default_rng(random_state)
    means = arr[rng.integers(0, arr.size, size=(n_resamples, arr.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(arr.mean()), "low": float(low), "high": float(high), "n": int(arr.size)}


def paired_comparison(scores_a: Sequence[float], scores_b: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 10_000, random_state: int = 0) -> Dict[str, float]:
    """Wilcoxon signed-rank test (two-sided, scipy) and a bootstrap CI of the mean difference a - b.

    Pairs with a NaN on either side are dropped. ``p_value`` is NaN with fewer than two pairs or
    when every difference is zero (the test is undefined).
    """
    from scipy.stats import wilcoxon
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    p_value = statistic = NAN
    if diff.size >= 2 and np.any(diff != 0):
        res = wilcoxon(a[keep], b[keep], alternative="two-sided")
        p_value, statistic = float(res.pvalue), float(res.statistic)
    ci = bootstrap_ci(diff, confidence, n_resamples, random_state)
    return {"n_pairs": int(diff.size), "mean_a": float(a[keep].mean()) if diff.size else NAN,
            "mean_b": float(b[keep].mean()) if diff.size else NAN, "mean_difference": ci["mean"],
            "ci_low": ci["low"], "ci_high": ci["high"], "wilcoxon_statistic": statistic, "p_value": p_value}
