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


#: above this many non-zero differences the exact null distribution is replaced by the normal
#: approximation (tie-corrected; at this size the two agree to a few per cent of p)
WILCOXON_EXACT_MAX = 400


def wilcoxon_signed_rank(differences: Sequence[float]) -> Dict[str, object]:
    """Two-sided Wilcoxon signed-rank test of paired differences, with explicit handling of the
    zeros and ties that per-image segmentation scores are full of (two methods both scoring
    Dice 0 or 1 on the same image).

    * Zero differences are discarded (Wilcoxon's method, scipy's ``zero_method='wilcox'``): an
      image both methods score the same says nothing about which is better. ``n_nonzero`` is the
      number of pairs that decide the test.
    * The non-zero ``|d|`` get average ranks (ties share them). The p-value is exact: the null
      distribution of W+ (sum of the ranks of positive differences) over all ``2**n_nonzero``
      sign assignments of the observed ranks, by dynamic programming -- the conditional test,
      exact with ties, which scipy's ``method='exact'`` is not (it assumes ranks 1..n). Above
      :data:`WILCOXON_EXACT_MAX` non-zero pairs: scipy's tie-corrected normal approximation.
    * ``p = min(1, 2 * min(P(W+ <= w), P(W+ >= w)))``; NaN (test undefined) when every
      difference is zero; ``statistic`` = min(W+, W-), as scipy reports it.

    Returns ``{statistic, p_value, p_method, n_nonzero, n_positive, n_negative}``.
    """
    from scipy.stats import rankdata
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    nonzero = d[d != 0]
    n = int(nonzero.size)
    out = {"statistic": NAN, "p_value": NAN, "p_method": "undefined: every difference is zero" if d.size else
           "undefined: no pairs", "n_nonzero": n, "n_positive": int((nonzero > 0).sum()),
           "n_negative": int((nonzero < 0).sum())}
    if n == 0:
        return out
    doubled_ranks = np.rint(2 * rankdata(np.abs(nonzero))).astype(np.int64)  # average ranks are k/2
    w_plus2 = int(doubled_ranks[nonzero > 0].sum())
    total2 = int(doubled_ranks.sum())
    out["statistic"] = min(w_plus2, total2 - w_plus2) / 2
    if n <= WILCOXON_EXACT_MAX:
        # probability of each value of 2*W+: every rank joins the positive sum with probability 1/2
        pmf = np.zeros(total2 + 1)
        pmf[0], reach = 1.0, 0
        for r in doubled_ranks:
            pmf[r:r + reach + 1] += pmf[:reach + 1].copy()
            reach += int(r)
            pmf[:reach + 1] *= 0.5
        lower, upper = pmf[:w_plus2 + 1].sum(), pmf[w_plus2:].sum()
        out["p_value"], out["p_method"] = float(min(1.0, 2 * min(lower, upper))), "exact"
    else:
        from scipy.stats import wilcoxon
        res = wilcoxon(nonzero, zero_method="wilcox", method="asymptotic", correction=False)
        out["p_value"], out["p_method"] = float(res.pvalue), "normal approximation (tie-corrected)"
    return out


def paired_comparison(scores_a: Sequence[float], scores_b: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 10_000, random_state: int = 0) -> Dict[str, object]:
    """Wilcoxon signed-rank test (:func:`wilcoxon_signed_rank`) and a bootstrap CI of the mean
    difference a - b on paired per-image scores.

    Pairs with a NaN on either side are dropped. The two answer different questions: the test
    asks whether one method scores higher on more images (by rank), the CI where the mean
    difference lies; with many tied images and one or two large opposite differences the test
    can be decisive while the CI of the mean includes 0 -- ``n_a_better`` / ``n_b_better`` show
    that split. ``p_value`` is NaN when every difference is zero (or there are no pairs).
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    diff = a[keep] - b[keep]
    test = wilcoxon_signed_rank(diff)
    ci = bootstrap_ci(diff, confidence, n_resamples, random_state)
    return {"n_pairs": int(diff.size), "n_nonzero": test["n_nonzero"], "n_a_better": test["n_positive"],
            "n_b_better": test["n_negative"],
            "mean_a": float(a[keep].mean()) if diff.size else NAN,
            "mean_b": float(b[keep].mean()) if diff.size else NAN, "mean_difference": ci["mean"],
            "ci_low": ci["low"], "ci_high": ci["high"], "wilcoxon_statistic": test["statistic"],
            "p_value": test["p_value"], "p_method": test["p_method"]}
