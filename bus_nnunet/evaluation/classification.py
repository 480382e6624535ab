"""Image-level classification metrics (benign vs malignant), in scikit-learn's style.

* :func:`binary_classification_metrics` -- the confusion matrix and its rates at a threshold;
* :func:`delong_auc` -- ROC AUC with DeLong's variance and a normal 95 % CI;
* :func:`delong_roc_test` -- DeLong's paired test of two AUCs on the same cases;
* :func:`youden_threshold`, :func:`out_of_fold_youden_thresholds` -- the operating point, chosen
  on other cases than the ones it is applied to;
* :func:`calibration_bins`, :func:`expected_calibration_error` -- calibration of the positive
  class's probability.

DeLong's variance uses the structural components of DeLong, DeLong & Clarke-Pearson (1988),
"Comparing the areas under two or more correlated receiver operating characteristic curves: a
nonparametric approach", Biometrics 44:837-845, computed from midranks as in Sun & Xu (2014),
"Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE Signal Processing Letters 21(11):1389-1393 -- the
algorithm of R's pROC (``ci.auc(method="delong")``, ``roc.test(method="delong")``).
"""
from __future__ import annotations

from typing import Dict, Sequence, Union

import numpy as np

NAN = float("nan")


def _binary_inputs(y_true, *scores, names=("y_score",)):
    """``y_true`` as 0/1 ints and each score as a float array of the same length (ValueError otherwise)."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        y = y.ravel()
    if y.dtype == bool:
        y = y.astype(int)
    if y.size and not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"y_true must contain only 0 and 1 (1 = positive class), "
                         f"got {sorted(set(np.unique(y).tolist()))}")
    y = y.astype(int)
    out = []
    for name, s in zip(names, scores):
        s = np.asarray(s, dtype=float).ravel()
        if s.shape != y.shape:
            raise ValueError(f"y_true has {y.size} entries, {name} {s.size}")
        if not np.isfinite(s).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append(s)
    return (y, *out)


def binary_classification_metrics(y_true: Sequence[int], y_score: Sequence[float], *,
                                   threshold: Union[float, Sequence[float]] = 0.5) -> Dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, F1 and ROC AUC of a binary classifier.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels (1 = positive class, e.g. malignant).
    y_score : array-like of shape (n_samples,)
        Predicted probability (or any score) of the positive class.
    threshold : float or array-like of shape (n_samples,), default=0.5
        A case is predicted positive when ``y_score >= threshold``. An array gives each case its
        own threshold (e.g. the threshold chosen for its cross-validation fold).

    Returns
    -------
    dict
        ``n, accuracy, sensitivity, specificity, precision, f1, auc, tp, tn, fp, fn``. ``auc`` is
        NaN when ``y_true`` holds one class only (undefined); a rate is NaN when its denominator is
        zero.

    Examples
    --------
    >>> m = binary_classification_metrics([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9])
    >>> m["sensitivity"], m["specificity"], m["auc"]
    (0.5, 0.5, 0.75)
    >>> binary_classification_metrics([0, 0, 1, 1], [0.2, 0.6, 0.4, 0.9], threshold=0.3)["sensitivity"]
    1.0
    """
    from sklearn.metrics import roc_auc_score
    y_true, y_score = _binary_inputs(y_true, y_score)
    threshold = np.asarray(threshold, dtype=float)
    if threshold.ndim and threshold.shape != y_score.shape:
        raise ValueError(f"threshold must be a number or one per case ({y_score.size}), got {threshold.size}")
    y_pred = (y_score >= threshold).astype(int)
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    tn = int(((y_pred == 0) & (y_true == 0)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    div = lambda a, b: a / b if b else NAN  # noqa: E731
    sens, prec = div(tp, tp + fn), div(tp, tp + fp)
    f1 = div(2 * tp, 2 * tp + fp + fn)
    auc = float(roc_auc_score(y_true, y_score)) if len(np.unique(y_true)) == 2 else NAN
    return {"n": int(y_true.size), "accuracy": div(tp + tn, y_true.size), "sensitivity": sens,
            "specificity": div(tn, tn + fp), "precision": prec, "f1": f1, "auc": auc,
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}


# -------------------------------------------------------------------------------------- DeLong
def _structural_components(y_true: np.ndarray, scores: np.ndarray):
    """DeLong's placement values of ``k`` classifiers (``scores`` of shape (k, n)).

    ``V10[i, a]`` = fraction of negatives that positive ``a`` outscores (ties count one half),
    ``V01[i, b]`` = fraction of positives that outscore negative ``b``; both average to the AUC.
    Sun & Xu's midrank form: ``V10 = (rank of a among all - rank of a among positives) / n``.
    """
    from scipy.stats import rankdata
    pos, neg = scores[:, y_true == 1], scores[:, y_true == 0]
    m, n = pos.shape[1], neg.shape[1]
    both = np.concatenate([pos, neg], axis=1)
    tz = rankdata(both, axis=1)  # midranks: ties share the average rank
    v10 = (tz[:, :m] - rankdata(pos, axis=1)) / n
    v01 = 1.0 - (tz[:, m:] - rankdata(neg, axis=1)) / m
    return v10, v01


def _check_both_classes(y_true: np.ndarray, minimum: int = 2) -> None:
    m, n = int(y_true.sum()), int((y_true == 0).sum())
    if m < minimum or n < minimum:
        raise ValueError(f"DeLong's variance needs at least {minimum} positive and {minimum} negative cases, "
                         f"got {m} positive and {n} negative")


def delong_auc(y_true: Sequence[int], y_score: Sequence[float], *, confidence: float = 0.95) -> Dict[str, float]:
    """ROC AUC with DeLong's nonparametric variance and a normal confidence interval.

    The variance is ``S10 / m + S01 / n`` with ``S10``, ``S01`` the sample variances (ddof 1) of
    DeLong's structural components over the ``m`` positives and ``n`` negatives (DeLong et al.
    1988), computed from midranks (Sun & Xu 2014). The interval is ``AUC ± z * SE`` clipped to
    [0, 1], as R's pROC ``ci.auc(method="delong")`` reports it.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = positive class; at least two cases of each.
    y_score : array-like of shape (n_samples,)
        Score of the positive class (higher = more likely positive).
    confidence : float, default=0.95
        Coverage of the interval.

    Returns
    -------
    dict
        ``auc`` (equal to scikit-learn's ``roc_auc_score``), ``variance``, ``se``, ``ci_low``,
        ``ci_high``, ``confidence``, ``n_positive``, ``n_negative``.

    Raises
    ------
    ValueError
        For labels other than 0/1, lengths that differ, non-finite scores, or fewer than two
        cases of a class.

    Examples
    --------
    Three positives and three negatives, one tie (worked out in tests/test_classification_report.py):

    >>> r = delong_auc([1, 1, 1, 0, 0, 0], [0.9, 0.6, 0.4, 0.6, 0.3, 0.2])
    >>> round(r["auc"], 4), round(r["variance"], 6), round(r["ci_low"], 4), r["ci_high"]
    (0.8333, 0.037037, 0.4561, 1.0)
    """
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    y, s = _binary_inputs(y_true, y_score)
    _check_both_classes(y)
    v10, v01 = _structural_components(y, s[None])
    m, n = v10.shape[1], v01.shape[1]
    variance = float(np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / n)
    auc = float(roc_auc_score(y, s))
    se = float(np.sqrt(variance))
    z = float(norm.ppf(0.5 + confidence / 2))
    return {"auc": auc, "variance": variance, "se": se, "ci_low": max(0.0, auc - z * se),
            "ci_high": min(1.0, auc + z * se), "confidence": confidence, "n_positive": m, "n_negative": n}


def delong_roc_test(y_true: Sequence[int], y_score_a: Sequence[float], y_score_b: Sequence[float], *,
                    confidence: float = 0.95) -> Dict[str, float]:
    """DeLong's two-sided test that two classifiers scored on the same cases have equal AUC.

    The difference ``AUC_a - AUC_b`` has variance ``L S10 L' / m + L S01 L' / n`` with ``L = (1, -1)``
    and ``S10``, ``S01`` the 2 x 2 covariance matrices of the two classifiers' structural
    components (DeLong et al. 1988; Sun & Xu 2014), so the correlation of the two classifiers on
    the same cases is accounted for; ``z = difference / SE`` against the standard normal.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels, 1 = positive class; at least two cases of each.
    y_score_a, y_score_b : array-like of shape (n_samples,)
        The two classifiers' scores of the positive class, case for case.
    confidence : float, default=0.95
        Coverage of the interval of the difference.

    Returns
    -------
    dict
        ``auc_a``, ``auc_b``, ``difference`` (a - b), ``variance`` and ``se`` of the difference,
        ``ci_low``/``ci_high`` of the difference (clipped to [-1, 1]), ``z``, ``p_value`` and ``n_positive``,
        ``n_negative``. Two classifiers that order every positive-negative pair alike have a
        variance of 0: ``p_value`` is then 1 when the AUCs are equal and NaN (undefined) otherwise.

    Examples
    --------
    >>> y = [1, 1, 1, 0, 0, 0]
    >>> r = delong_roc_test(y, [0.9, 0.6, 0.4, 0.6, 0.3, 0.2], [0.5, 0.8, 0.7, 0.4, 0.9, 0.1])
    >>> round(r["difference"], 4), round(r["variance"], 6), round(r["p_value"], 4)
    (0.1667, 0.203704, 0.7119)
    """
    from scipy.stats import norm
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    y, a, b = _binary_inputs(y_true, y_score_a, y_score_b, names=("y_score_a", "y_score_b"))
    _check_both_classes(y)
    v10, v01 = _structural_components(y, np.stack([a, b]))
    m, n = v10.shape[1], v01.shape[1]
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ np.cov(v10) @ contrast / m + contrast @ np.cov(v01) @ contrast / n)
    auc_a, auc_b = (float(v) for v in v10.mean(axis=1))
    difference = auc_a - auc_b
    if variance > 1e-15:
        se = float(np.sqrt(variance))
        z_value = difference / se
        p = float(2 * norm.sf(abs(z_value)))
    else:  # same ordering of every pair: no sampling variability of the difference
        se, z_value = 0.0, NAN
        p = 1.0 if abs(difference) < 1e-12 else NAN
    z = float(norm.ppf(0.5 + confidence / 2))
    return {"auc_a": auc_a, "auc_b": auc_b, "difference": difference, "variance": max(variance, 0.0), "se": se,
            "ci_low": max(-1.0, difference - z * se), "ci_high": min(1.0, difference + z * se), "z": z_value,
            "p_value": p,
            "n_positive": m, "n_negative": n}


# ----------------------------------------------------------------------------------- thresholds
def youden_threshold(y_true: Sequence[int], y_score: Sequence[float]) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1 on these cases.

    The candidates are scikit-learn's ``roc_curve`` thresholds (the distinct scores; a case is
    positive when ``score >= threshold``); of equal J the highest threshold (fewest positive
    calls) wins. Apply it to *other* cases: chosen and scored on the same cases it is optimistic
    (see :func:`out_of_fold_youden_thresholds`).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels with both classes present.
    y_score : array-like of shape (n_samples,)
        Score of the positive class.

    Returns
    -------
    float

    Examples
    --------
    >>> youden_threshold([0, 0, 1, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.7, 0.9])
    0.7
    """
    from sklearn.metrics import roc_curve
    y, s = _binary_inputs(y_true, y_score)
    if len(np.unique(y)) < 2:
        raise ValueError("Youden's threshold needs positive and negative cases")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the first threshold is +inf (nothing positive)
    j = (tpr - fpr)[finite]
    # the first of the (rounding-tolerant) maxima: thresholds are decreasing, so the highest one
    return float(thresholds[finite][int(np.flatnonzero(j >= j.max() - 1e-12)[0])])


def out_of_fold_youden_thresholds(y_true: Sequence[int], y_score: Sequence[float],
                                  folds: Sequence[object]) -> Dict[object, float]:
    """For each fold k, :func:`youden_threshold` on the cases of every *other* fold.

    In a cross-validation these are fold k's training cases, scored out of fold by the other
    folds' models (fold k's own model is not applied to its training cases); fold k's cases, the
    ones the threshold is then applied to, never influence it.

    Parameters
    ----------
    y_true, y_score : array-like of shape (n_samples,)
        Labels (0/1) and scores of the positive class of all cases.
    folds : array-like of shape (n_samples,)
        The fold of each case.

    Returns
    -------
    dict
        ``fold -> threshold``; NaN for a fold whose other folds lack a class (or that has no
        other fold).

    Examples
    --------
    >>> t = out_of_fold_youden_thresholds([0, 1, 0, 1, 0, 1], [0.2, 0.6, 0.3, 0.5, 0.1, 0.4], [0, 0, 1, 1, 2, 2])
    >>> {k: round(v, 2) for k, v in t.items()}
    {0: 0.4, 1: 0.4, 2: 0.5}
    """
    y, s = _binary_inputs(y_true, y_score)
    folds = np.asarray(folds, dtype=object).ravel()
    if folds.shape != y.shape:
        raise ValueError(f"y_true has {y.size} entries, folds {folds.size}")
    out = {}
    for fold in sorted(set(folds.tolist()), key=str):
        other = folds != fold
        out[fold] = youden_threshold(y[other], s[other]) if len(np.unique(y[other])) == 2 else NAN
    return out


# ---------------------------------------------------------------------------------- calibration
def calibration_bins(y_true: Sequence[int], y_prob: Sequence[float], *, n_bins: int = 10) -> Dict[str, np.ndarray]:
    """Equal-width bins of predicted probability: count, mean prediction and observed frequency.

    Bin ``i`` covers ``(i/n_bins, (i+1)/n_bins]`` (the first also includes 0): the bins of
    scikit-learn's ``calibration_curve(strategy="uniform")``, whose non-empty bins these are.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        0/1 labels.
    y_prob : array-like of shape (n_samples,)
        Predicted probability of class 1, in [0, 1].
    n_bins : int, default=10

    Returns
    -------
    dict of arrays of length ``n_bins``
        ``edges`` (``n_bins + 1``), ``count``, ``mean_predicted`` and ``fraction_positive`` (NaN
        in empty bins).

    Examples
    --------
    >>> b = calibration_bins([0, 1, 1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.7, 0.9], n_bins=2)
    >>> b["count"].tolist(), b["mean_predicted"].round(2).tolist(), b["fraction_positive"].tolist()
    ([4, 2], [0.25, 0.8], [0.5, 0.5])
    """
    y, p = _binary_inputs(y_true, y_prob, names=("y_prob",))
    if n_bins < 1 or int(n_bins) != n_bins:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError("y_prob must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], p)  # as sklearn.calibration.calibration_curve
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(ids, weights=p, minlength=n_bins) / count
        fraction_positive = np.bincount(ids, weights=y, minlength=n_bins) / count
    return {"edges": edges, "count": count, "mean_predicted": mean_predicted, "fraction_positive": fraction_positive}


def expected_calibration_error(y_true: Sequence[int], y_prob: Sequence[float], *, n_bins: int = 10) -> float:
    """Expected calibration error of the probability of class 1 over equal-width bins.

    ``ECE = sum_b (n_b / N) * |fraction of positives in b - mean predicted probability in b|``
    over the :func:`calibration_bins` (Naeini, Cooper & Hauskrecht 2015, "Obtaining well
    calibrated probabilities using Bayesian binning", AAAI), empty bins contributing nothing.

    Parameters
    ----------
    y_true, y_prob, n_bins
        As in :func:`calibration_bins`.

    Returns
    -------
    float
        In [0, 1]; NaN without cases.

    Examples
    --------
    >>> round(expected_calibration_error([0, 1, 1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.7, 0.9], n_bins=2), 4)
    0.2667
    """
    b = calibration_bins(y_true, y_prob, n_bins=n_bins)
    total = int(b["count"].sum())
    if total == 0:
        return NAN
    full = b["count"] > 0
    gaps = np.abs(b["fraction_positive"][full] - b["mean_predicted"][full])
    return float((b["count"][full] / total * gaps).sum())

