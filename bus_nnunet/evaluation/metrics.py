"""Per-image and dataset-level segmentation metrics, in scikit-learn's style.

Every function takes a *reference* (ground truth) and a *prediction* as arrays of the same shape;
anything non-zero is foreground (lesion) unless ``label`` selects one label.

Empty-mask rule (normal images)
-------------------------------
nnU-Net's own evaluation sets Dice/IoU to NaN when reference and prediction are both empty and
drops those cases from the mean with ``nanmean`` (a normal image predicted as normal
"vanishes"). Here the rule is explicit, chosen with ``empty_truth`` (:data:`EMPTY_TRUTH_RULES`)
and applied in one place, :func:`overlap_scores`. The default, ``"one"``:

=============================  ======  ======  =========  ======  ===========  ===========
case                           Dice    IoU     precision  recall  HD95, ASSD   specificity
=============================  ======  ======  =========  ======  ===========  ===========
both empty (true negative)     1       1       1          1       0            computed
reference empty, pred not (FP) 0       0       0          NaN     NaN          computed
pred empty, reference not (FN) 0       0       NaN        0       NaN          computed
=============================  ======  ======  =========  ======  ===========  ===========

* A correctly empty prediction is a perfect answer, so it scores 1 and distance 0.
* Surface distances to a missing surface are undefined: NaN, never a made-up penalty. Summaries
  report how many cases had NaN distances; the image-level false-positive rate on normal images
  (:func:`image_false_positive_rate`) and the pooled Dice carry the information instead.
* Precision with nothing predicted and recall with nothing to find are undefined: NaN.

``empty_truth="zero"`` is the protocol of Anari et al. (Sci Rep 2025, doi 10.1038/s41598-024-84504-y),
who score all 780 BUSI images: an empty reference gives Dice = IoU = precision = recall = 0 whatever
the prediction (0/0 -> 0). Distances and specificity are the same under both rules.

Surface distances follow :mod:`medpy.metric.binary` (the implementation nnU-Net's maintainers
point to): a mask's border is the mask minus its erosion by the 4-connected (6 in 3D) cross, and
each border pixel's distance is the Euclidean distance to the nearest border pixel of the other
mask, in pixels unless ``spacing`` is given.

HD95 conventions
----------------
The border distances of both directions (prediction -> reference, reference -> prediction) give
two 95th percentiles; :data:`HD95_CONVENTIONS` says how ``hd95`` combines them:

* ``"pooled"`` (default, medpy's ``hd95``): the 95th percentile of both sets pooled.
* ``"max"`` (MONAI's ``compute_hausdorff_distance(percentile=95)``, MetricsReloaded, DeepMind's
  surface-distance): the larger of the two directed 95th percentiles.

They differ most on small false-positive specks: a perfect lesion plus a far speck has few far
distances among many zeros once pooled (HD95 0), but they are over 5 % of the prediction's own
border, so its directed percentile is the speck's distance.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

NAN = float("nan")
#: per-image metric names written by :func:`segmentation_metrics`, in report order
PER_IMAGE_METRICS = ("dice", "iou", "precision", "recall", "specificity", "hd95", "assd")


def _binary(mask, label: Optional[int] = None) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype == bool and label is None:
        return mask
    return mask == label if label is not None else mask != 0


def _pair(reference, prediction, label=None) -> Tuple[np.ndarray, np.ndarray]:
    ref, pred = _binary(reference, label), _binary(prediction, label)
    if ref.shape != pred.shape:
        raise ValueError(f"reference has shape {ref.shape}, prediction {pred.shape}")
    return ref, pred


def confusion_counts(reference, prediction, label: Optional[int] = None) -> Dict[str, int]:
    """Pixel counts ``tp, fp, fn, tn`` of a binary prediction against a reference."""
    ref, pred = _pair(reference, prediction, label)
    tp = int(np.count_nonzero(ref & pred))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(ref & ~pred))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(ref.size - tp - fp - fn)}


#: ``empty_truth`` rules (see the module docstring); the text is written into reports
EMPTY_TRUTH_RULES = {
    "one": "empty reference and empty prediction: Dice = IoU = precision = recall = 1, HD95 = ASSD = 0; "
           "a prediction on an empty reference: Dice = IoU = precision = 0, recall and HD95/ASSD undefined",
    "zero": "empty reference: Dice = IoU = precision = recall = 0 whatever the prediction (0/0 -> 0; "
            "Anari et al. 2025); HD95/ASSD as under 'one'",
}
DEFAULT_EMPTY_TRUTH = "one"


def _check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {sorted(choices)}, not {value!r}")
    return value


def check_empty_truth(rule: str) -> str:
    return _check_choice(rule, EMPTY_TRUTH_RULES, "empty_truth")


def overlap_scores(tp: int, fp: int, fn: int, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> Dict[str, float]:
    """Dice, IoU, precision and recall from pixel counts; the one place the empty-mask rule lives."""
    check_empty_truth(empty_truth)
    if tp + fn == 0 and empty_truth == "zero":
        return {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    if tp + fp + fn == 0:  # both empty: perfect agreement
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else NAN, "recall": tp / (tp + fn) if tp + fn else NAN}


def _scores(reference, prediction, label, empty_truth) -> Dict[str, float]:
    c = confusion_counts(reference, prediction, label)
    return overlap_scores(c["tp"], c["fp"], c["fn"], empty_truth)


def dice_score(reference, prediction, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Dice similarity coefficient 2|A∩B| / (|A|+|B|); both empty: 1 (``empty_truth="zero"``: 0)."""
    return _scores(reference, prediction, label, empty_truth)["dice"]


def iou_score(reference, prediction, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Intersection over union (Jaccard) |A∩B| / |A∪B|; empty masks as :func:`dice_score`."""
    return _scores(reference, prediction, label, empty_truth)["iou"]


def precision_score(reference, prediction, label: Optional[int] = None,
                    empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Positive predictive value tp / (tp + fp); 1 if both empty, NaN if only the prediction is empty."""
    return _scores(reference, prediction, label, empty_truth)["precision"]


def recall_score(reference, prediction, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Sensitivity tp / (tp + fn); 1 if both empty, NaN if only the reference is empty."""
    return _scores(reference, prediction, label, empty_truth)["recall"]


def specificity_score(reference, prediction, label: Optional[int] = None) -> float:
    """Pixel specificity tn / (tn + fp); NaN only if the reference covers the whole image."""
    c = confusion_counts(reference, prediction, label)
    return c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else NAN


#: ``hd95`` conventions (see the module docstring); the text is written into reports
HD95_CONVENTIONS = {
    "pooled": "95th percentile of the border distances of both directions pooled (medpy's hd95)",
    "max": "larger of the two directed 95th percentiles (MONAI compute_hausdorff_distance(percentile=95), "
           "MetricsReloaded, DeepMind surface-distance)",
}
DEFAULT_HD95 = "pooled"


def check_hd95_convention(convention: str) -> str:
    return _check_choice(convention, HD95_CONVENTIONS, "hd95 convention")


def surface_distances(reference, prediction, *, label: Optional[int] = None,
                      spacing: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Directed border distances between two non-empty masks (medpy's border and distance rule).

    Parameters
    ----------
    reference, prediction : array_like
        Masks of the same shape; non-zero is foreground unless ``label`` selects one label.
    label : int, optional
        The label value that is foreground.
    spacing : sequence of float, optional
        Pixel size per axis (rows, columns); distances are in pixels without it.

    Returns
    -------
    prediction_to_reference, reference_to_prediction : numpy.ndarray
        For each border pixel of the first mask, the Euclidean distance to the nearest border
        pixel of the second. A border is the mask minus its erosion by the 4-connected cross.

    Raises
    ------
    ValueError
        If the shapes differ or either mask is empty (no border to measure from).

    Examples
    --------
    >>> a = np.zeros((5, 5), bool); a[1:4, 1:4] = True
    >>> b = np.zeros((5, 5), bool); b[1:4, 2:5] = True
    >>> [d.tolist() for d in surface_distances(a, b)]
    [[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]]
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
    ref, pred = _pair(reference, prediction, label)
    if not ref.any() or not pred.any():
        raise ValueError("surface distances need two non-empty masks")
    cross = generate_binary_structure(ref.ndim, 1)
    ref_border = ref ^ binary_erosion(ref, structure=cross)
    pred_border = pred ^ binary_erosion(pred, structure=cross)
    # the distance transform measures to the nearest zero, so the borders are the zeros
    sampling = None if spacing is None else np.broadcast_to(np.asarray(spacing, np.float64), (ref.ndim,))
    to_ref = distance_transform_edt(~ref_border, sampling=sampling)[pred_border]
    to_pred = distance_transform_edt(~pred_border, sampling=sampling)[ref_border]
    return to_ref, to_pred


def _distance_metrics(reference, prediction, label, spacing, convention: str) -> Dict[str, float]:
    """``hd95`` and ``assd`` from one pair of directed distance sets; the empty-mask rule of the
    module docstring (0 when both are empty, NaN when one is)."""
    check_hd95_convention(convention)
    ref, pred = _pair(reference, prediction, label)
    ref_any, pred_any = ref.any(), pred.any()
    if not ref_any and not pred_any:
        return {"hd95": 0.0, "assd": 0.0}
    if not ref_any or not pred_any:
        return {"hd95": NAN, "assd": NAN}
    to_ref, to_pred = surface_distances(ref, pred, spacing=spacing)
    pooled = np.concatenate([to_ref, to_pred])
    if convention == "pooled":
        hd = np.percentile(pooled, 95)
    else:
        hd = max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))
    return {"hd95": float(hd), "assd": float(pooled.mean())}  # ASSD: mean of the pooled set (medpy >= 0.5)


def hd95(reference, prediction, label: Optional[int] = None, spacing: Optional[Sequence[float]] = None, *,
         convention: str = DEFAULT_HD95) -> float:
    """95th-percentile Hausdorff distance between the mask borders.

    Parameters
    ----------
    reference, prediction : array_like
        Masks of the same shape; non-zero is foreground unless ``label`` selects one label.
    label : int, optional
        The label value that is foreground.
    spacing : sequence of float, optional
        Pixel size per axis; distances are in pixels without it.
    convention : {"pooled", "max"}, default "pooled"
        ``"pooled"``: the 95th percentile of both directions' border distances pooled (medpy);
        ``"max"``: the larger of the two directed 95th percentiles (MONAI, MetricsReloaded).

    Returns
    -------
    float
        0 when both masks are empty, NaN when exactly one is.

    Examples
    --------
    >>> ref = np.zeros((40, 80), np.uint8); ref[10:30, 10:30] = 1
    >>> pred = ref.copy(); pred[19:21, 59:62] = 1   # a perfect lesion and a far speck
    >>> hd95(ref, pred), hd95(ref, pred, convention="max")
    (0.0, 30.0)
    """
    return _distance_metrics(reference, prediction, label, spacing, convention)["hd95"]


def assd(reference, prediction, label: Optional[int] = None, spacing: Optional[Sequence[float]] = None) -> float:
    """Average symmetric surface distance: the mean of both directions' border distances pooled
    (medpy >= 0.5); empty rule as :func:`hd95`."""
    return _distance_metrics(reference, prediction, label, spacing, DEFAULT_HD95)["assd"]


def segmentation_metrics(reference, prediction, label: Optional[int] = None,
                         spacing: Optional[Sequence[float]] = None,
                         empty_truth: str = DEFAULT_EMPTY_TRUTH, *,
                         hd95: str = DEFAULT_HD95) -> Dict[str, float]:
    """All per-image metrics of :data:`PER_IMAGE_METRICS` plus the pixel counts and mask sizes.

    ``n_ref``/``n_pred`` are the foreground pixel counts (as in nnU-Net's summary.json); HD95 under the
    convention ``hd95`` (:data:`HD95_CONVENTIONS`).
    """
    ref, pred = _pair(reference, prediction, label)
    c = confusion_counts(ref, pred)
    out = overlap_scores(c["tp"], c["fp"], c["fn"], empty_truth)
    out["specificity"] = specificity_score(ref, pred)
    out.update(_distance_metrics(ref, pred, None, spacing, hd95))
    out.update(c)
    out["n_ref"], out["n_pred"] = c["tp"] + c["fn"], c["tp"] + c["fp"]
    return out


def pooled_overlap(counts: Iterable[Mapping[str, int]], empty_truth: str = DEFAULT_EMPTY_TRUTH) -> Dict[str, float]:
    """Dataset-level ("global") Dice and IoU from summed pixel counts over all images.

    Large lesions weigh more than small ones, unlike the mean of per-image scores; report both.
    ``counts`` are dicts with ``tp, fp, fn`` (e.g. from :func:`confusion_counts`). If no image has
    a reference lesion the empty-mask rule decides; NaN for no images.
    """
    tp = fp = fn = 0
    n = 0
    for c in counts:
        tp, fp, fn, n = tp + c["tp"], fp + c["fp"], fn + c["fn"], n + 1
    if n == 0:
        return {"dice": NAN, "iou": NAN, "n": 0}
    scores = overlap_scores(tp, fp, fn, empty_truth)
    return {"dice": scores["dice"], "iou": scores["iou"], "n": n}


def image_false_positive_rate(references: Sequence, predictions: Sequence, min_area: int = 1) -> Dict[str, float]:
    """Image-level false-positive rate on cases whose reference is empty (normal images).

    A normal image is a false positive if the prediction has at least ``min_area`` foreground
    pixels. Returns ``{"n_normal", "n_false_positive", "fp_rate", "specificity"}``; the rates are
    NaN when there is no normal image.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    n_normal = n_fp = 0
    for ref, pred in zip(references, predictions):
        if _binary(ref).any():
            continue
        n_normal += 1
        n_fp += int(np.count_nonzero(_binary(pred)) >= min_area)
    rate = n_fp / n_normal if n_normal else NAN
    return {"n_normal": n_normal, "n_false_positive": n_fp, "fp_rate": rate,
            "specificity": 1 - rate if n_normal else NAN}


def pixel_roc_curve(references: Sequence, probabilities: Sequence, max_pixels: Optional[int] = 2_000_000,
                    random_state: int = 0) -> Dict[str, object]:
    """Pixel-level ROC curve and AUC of foreground probabilities over a set of images (sklearn).

    ``probabilities[i]`` has the shape of ``references[i]`` (foreground probability per pixel).
    When more than ``max_pixels`` pixels are pooled, a uniform random subset of that size is used
    (seeded; AUC estimates stay unbiased). Returns ``fpr, tpr, thresholds`` arrays and ``auc``
    (NaN if the pooled reference has only one class).
    """
    from sklearn.metrics import roc_auc_score, roc_curve
    if len(references) != len(probabilities):
        raise ValueError(f"{len(references)} references but {len(probabilities)} probability maps")
    y_true, y_score = [], []
    for ref, prob in zip(references, probabilities):
        ref, prob = _binary(ref), np.asarray(prob, dtype=np.float32)
        if ref.shape != prob.shape:
            raise ValueError(f"reference has shape {ref.shape}, probabilities {prob.shape}")
        y_true.append(ref.ravel())
        y_score.append(prob.ravel())
    y_true = np.concatenate(y_true) if y_true else np.zeros(0, bool)
    y_score = np.concatenate(y_score) if y_score else np.zeros(0, np.float32)
    if max_pixels is not None and y_true.size > max_pixels:
        keep = np.random.default_rng(random_state).choice(y_true.size, size=max_pixels, replace=False)
        y_true, y_score = y_true[keep], y_score[keep]
    if y_true.size == 0 or y_true.all() or not y_true.any():
        return {"fpr": np.array([]), "tpr": np.array([]), "thresholds": np.array([]), "auc": NAN,
                "n_pixels": int(y_true.size)}
    fpr, tpr, thresholds = roc_curve(y_true, y_score)
    return {"fpr": fpr, "tpr": tpr, "thresholds": thresholds, "auc": float(roc_auc_score(y_true, y_score)),
            "n_pixels": int(y_true.size)}


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """mean, std (ddof=1), median, min, max over the finite values, and how many were NaN."""
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": NAN, "std": NAN, "median": NAN, "min": NAN, "max": NAN, "n": 0,
                "n_nan": int(arr.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else NAN,
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max()),
            "n": int(finite.size), "n_nan": int(arr.size - finite.size)}
