"""Image-level classification metrics (benign vs malignant), in scikit-learn's style."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np


def binary_classification_metrics(y_true: Sequence[int], y_score: Sequence[float],
                                   threshold: float = 0.5) -> Dict[str, float]:
    """Accuracy, sensitivity, specificity, precision, F1 and ROC AUC of a binary classifier.

    Parameters
    ----------
    y_true : 0/1 labels (1 = positive class, e.g. malignant).
    y_score : predicted probability of the positive class.
    threshold : a case is predicted positive when ``y_score >= threshold``.

    Returns a dict; ``auc`` is NaN when only one class is present in ``y_true`` (undefined), and
    sensitivity/specificity/precision are NaN when their denominator is zero.
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(int).ravel()
    y_score = np.asarray(y_score, dtype=float).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true has {y_true.size} entries, y_score {y_score.size}")
    if not set(np.unique(y_true)) <= {0, 1}:
        raise ValueError("y_true must contain only 0 and 1")
    y_pred = (y_score >= threshold).astype(int)
    tp = int(((y_pred == 1) & (y_true == 1)).sum())
    tn = int(((y_pred == 0) & (y_true == 0)).sum())
    fp = int(((y_pred == 1) & (y_true == 0)).sum())
    fn = int(((y_pred == 0) & (y_true == 1)).sum())
    div = lambda a, b: a / b if b else float("nan")  # noqa: E731
    sens, prec = div(tp, tp + fn), div(tp, tp + fp)
    f1 = div(2 * tp, 2 * tp + fp + fn)
    auc = float(roc_auc_score(y_true, y_score)) if len(np.unique(y_true)) == 2 else float("nan")
    return {"n": int(y_true.size), "accuracy": div(tp + tn, y_true.size), "sensitivity": sens,
            "specificity": div(tn, tn + fp), "precision": prec, "f1": f1, "auc": auc,
            "tp": tp, "tn": tn, "fp": fp, "fn": fn}
