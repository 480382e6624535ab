"""Per-image and dataset-level segmentation metrics, in scikit-learn's style.

Every function takes a *reference* (ground truth) and a *prediction* as arrays of the same shape;
anything non-zero is foreground (lesion) unless ``label`` selects one label.  Options are
keyword-only, and the masks are checked before anything is computed: a float array must hold only
0 and 1 (a probability map is refused with the fix -- threshold it -- instead of silently
becoming an all-foreground mask).

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


# -- input validation: every public function checks its masks here, once ------------------------------
def _binary(mask, label: Optional[int] = None, what: str = "mask") -> np.ndarray:
    """``mask`` as a boolean foreground array: non-zero (or ``== label``). A float array must hold only
    0 and 1: anything else is a probability map or a resampled mask, and ``!= 0`` would make it
    (almost) all foreground."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask if label is None else mask == label
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be a numeric or boolean array, not {mask.dtype}")
    if mask.dtype.kind == "f":
        odd = mask[(mask != 0) & (mask != 1)]
        if odd.size:
            raise ValueError(f"{what} is a float array with values other than 0 and 1 (e.g. {odd.flat[0]:.4g}): "
                             f"a probability map is not a mask; threshold it first (e.g. {what} >= 0.5) or pass "
                             f"the integer label map")
    return mask == label if label is not None else mask != 0


def _pair(reference, prediction, label=None) -> Tuple[np.ndarray, np.ndarray]:
    ref, pred = _binary(reference, label, "reference"), _binary(prediction, label, "prediction")
    if ref.shape != pred.shape:
        raise ValueError(f"reference has shape {ref.shape}, prediction {pred.shape}")
    return ref, pred


def _check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {sorted(choices)}, not {value!r}")
    return value


#: numpydoc entries the metric functions share, filled into their docstrings by :func:`_fill_doc`
#: (scipy's ``doccer`` pattern), so each description is written once
_DOC_PARAMETERS = {
    "masks": """reference, prediction : array_like
        Masks of the same shape; non-zero is foreground unless ``label`` selects one label. Float
        masks must hold only 0 and 1 (threshold a probability map first).""",
    "label": """label : int, optional
        The label value that is foreground.""",
    "spacing": """spacing : sequence of float, optional
        Pixel size per axis (rows, columns); distances are in pixels without it.""",
    "empty_truth": """empty_truth : {"one", "zero"}, default "one"
        The empty-mask rule (:data:`EMPTY_TRUTH_RULES`, module docstring).""",
}
#: the Parameters heading with the two masks and ``label``, which every per-image metric takes
_DOC_PARAMETERS["parameters"] = "Parameters\n    ----------\n    %(masks)s\n    %(label)s" % _DOC_PARAMETERS
#: the Parameters and Returns of the four overlap scores
_DOC_PARAMETERS["overlap"] = ("%(parameters)s\n    %(empty_truth)s\n\n    Returns\n    -------\n    float"
                              % _DOC_PARAMETERS)


def _fill_doc(f):
    if f.__doc__:  # None under python -OO
        for key, text in _DOC_PARAMETERS.items():
            f.__doc__ = f.__doc__.replace(f"%({key})s", text)
    return f


# -- pixel counts and overlap -----------------------------------------------------------------------
def _counts(ref: np.ndarray, pred: np.ndarray) -> Dict[str, int]:
    tp = int(np.count_nonzero(ref & pred))
    fp = int(np.count_nonzero(pred & ~ref))
    fn = int(np.count_nonzero(ref & ~pred))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(ref.size - tp - fp - fn)}


@_fill_doc
def confusion_counts(reference, prediction, *, label: Optional[int] = None) -> Dict[str, int]:
    """Pixel counts of a binary prediction against a reference.

    %(parameters)s

    Returns
    -------
    dict
        ``tp``, ``fp``, ``fn``, ``tn`` (int).

    Examples
    --------
    >>> confusion_counts([[1, 1, 0, 0]], [[0, 1, 1, 0]])
    {'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    return _counts(*_pair(reference, prediction, label))


#: ``empty_truth`` rules (see the module docstring); the text is written into reports
EMPTY_TRUTH_RULES = {
    "one": "empty reference and empty prediction: Dice = IoU = precision = recall = 1, HD95 = ASSD = 0; "
           "a prediction on an empty reference: Dice = IoU = precision = 0, recall and HD95/ASSD undefined",
    "zero": "empty reference: Dice = IoU = precision = recall = 0 whatever the prediction (0/0 -> 0; "
            "Anari et al. 2025); HD95/ASSD as under 'one'",
}
DEFAULT_EMPTY_TRUTH = "one"


def check_empty_truth(rule: str) -> str:
    """``rule`` if it is one of :data:`EMPTY_TRUTH_RULES`, else a ValueError listing them.

    Examples
    --------
    >>> check_empty_truth("zero")
    'zero'
    """
    return _check_choice(rule, EMPTY_TRUTH_RULES, "empty_truth")


@_fill_doc
def overlap_scores(tp: int, fp: int, fn: int, *, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> Dict[str, float]:
    """Dice, IoU, precision and recall from pixel counts: the one place the empty-mask rule lives.

    Parameters
    ----------
    tp, fp, fn : int
        True-positive, false-positive and false-negative pixel counts.
    %(empty_truth)s

    Returns
    -------
    dict
        ``dice``, ``iou``, ``precision``, ``recall`` (float; NaN where undefined).

    Examples
    --------
    >>> overlap_scores(8, 8, 8)["dice"]
    0.5
    >>> overlap_scores(0, 0, 0), overlap_scores(0, 0, 0, empty_truth="zero")["dice"]
    ({'dice': 1.0, 'iou': 1.0, 'precision': 1.0, 'recall': 1.0}, 0.0)
    """
    check_empty_truth(empty_truth)
    if tp + fn == 0 and empty_truth == "zero":
        return {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 0.0}
    if tp + fp + fn == 0:  # both empty: perfect agreement
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn),
            "precision": tp / (tp + fp) if tp + fp else NAN, "recall": tp / (tp + fn) if tp + fn else NAN}


def _scores(reference, prediction, label, empty_truth) -> Dict[str, float]:
    c = confusion_counts(reference, prediction, label=label)
    return overlap_scores(c["tp"], c["fp"], c["fn"], empty_truth=empty_truth)


@_fill_doc
def dice_score(reference, prediction, *, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Dice similarity coefficient 2|A∩B| / (|A|+|B|); both empty: 1 (``empty_truth="zero"``: 0).

    %(overlap)s

    Examples
    --------
    >>> dice_score([[1, 1, 0, 0]], [[0, 1, 1, 0]])
    0.5
    >>> dice_score([[0, 0]], [[0, 0]]), dice_score([[0, 0]], [[0, 0]], empty_truth="zero")
    (1.0, 0.0)
    """
    return _scores(reference, prediction, label, empty_truth)["dice"]


@_fill_doc
def iou_score(reference, prediction, *, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Intersection over union (Jaccard) |A∩B| / |A∪B|; empty masks as :func:`dice_score`.

    %(overlap)s

    Examples
    --------
    >>> round(iou_score([[1, 1, 0, 0]], [[0, 1, 1, 0]]), 4)
    0.3333
    """
    return _scores(reference, prediction, label, empty_truth)["iou"]


@_fill_doc
def precision_score(reference, prediction, *, label: Optional[int] = None,
                    empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Positive predictive value tp / (tp + fp); 1 if both empty, NaN if only the prediction is empty.

    %(overlap)s

    Examples
    --------
    >>> precision_score([[1, 1, 0, 0]], [[0, 1, 1, 1]]), precision_score([[1, 0]], [[0, 0]])
    (0.3333333333333333, nan)
    """
    return _scores(reference, prediction, label, empty_truth)["precision"]


@_fill_doc
def recall_score(reference, prediction, *, label: Optional[int] = None, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> float:
    """Sensitivity tp / (tp + fn); 1 if both empty, NaN if only the reference is empty.

    %(overlap)s

    Examples
    --------
    >>> recall_score([[1, 1, 0, 0]], [[0, 1, 1, 1]]), recall_score([[0, 0]], [[1, 0]])
    (0.5, nan)
    """
    return _scores(reference, prediction, label, empty_truth)["recall"]


def _specificity(c: Mapping[str, int]) -> float:
    return c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else NAN


@_fill_doc
def specificity_score(reference, prediction, *, label: Optional[int] = None) -> float:
    """Pixel specificity tn / (tn + fp).

    %(parameters)s

    Returns
    -------
    float
        NaN only if the reference covers the whole image.

    Examples
    --------
    >>> specificity_score([[1, 0, 0, 0]], [[1, 1, 0, 0]])
    0.6666666666666666
    """
    return _specificity(confusion_counts(reference, prediction, label=label))


#: ``hd95`` conventions (see the module docstring); the text is written into reports
HD95_CONVENTIONS = {
    "pooled": "95th percentile of the border distances of both directions pooled (medpy's hd95)",
    "max": "larger of the two directed 95th percentiles (MONAI compute_hausdorff_distance(percentile=95), "
           "MetricsReloaded, DeepMind surface-distance)",
}
DEFAULT_HD95 = "pooled"


def check_hd95_convention(convention: str) -> str:
    """``convention`` if it is one of :data:`HD95_CONVENTIONS`, else a ValueError listing them.

    Examples
    --------
    >>> check_hd95_convention("max")
    'max'
    """
    return _check_choice(convention, HD95_CONVENTIONS, "hd95 convention")


# -- surface distances ------------------------------------------------------------------------------
def _surface_distances(ref: np.ndarray, pred: np.ndarray, spacing) -> Tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure
    cross = generate_binary_structure(ref.ndim, 1)
    ref_border = ref ^ binary_erosion(ref, structure=cross)
    pred_border = pred ^ binary_erosion(pred, structure=cross)
    # the distance transform measures to the nearest zero, so the borders are the zeros
    sampling = None if spacing is None else np.broadcast_to(np.asarray(spacing, np.float64), (ref.ndim,))
    to_ref = distance_transform_edt(~ref_border, sampling=sampling)[pred_border]
    to_pred = distance_transform_edt(~pred_border, sampling=sampling)[ref_border]
    return to_ref, to_pred


@_fill_doc
def surface_distances(reference, prediction, *, label: Optional[int] = None,
                      spacing: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Directed border distances between two non-empty masks (medpy's border and distance rule).

    %(parameters)s
    %(spacing)s

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
    ref, pred = _pair(reference, prediction, label)
    if not ref.any() or not pred.any():
        raise ValueError("surface distances need two non-empty masks")
    return _surface_distances(ref, pred, spacing)


def _distances(ref: np.ndarray, pred: np.ndarray, spacing, convention: str) -> Dict[str, float]:
    """``hd95`` and ``assd`` of two validated boolean masks from one pair of directed distance sets;
    the empty-mask rule of the module docstring (0 when both are empty, NaN when one is)."""
    check_hd95_convention(convention)
    ref_any, pred_any = ref.any(), pred.any()
    if not ref_any and not pred_any:
        return {"hd95": 0.0, "assd": 0.0}
    if not ref_any or not pred_any:
        return {"hd95": NAN, "assd": NAN}
    to_ref, to_pred = _surface_distances(ref, pred, spacing)
    pooled = np.concatenate([to_ref, to_pred])
    if convention == "pooled":
        hd = np.percentile(pooled, 95)
    else:
        hd = max(np.percentile(to_ref, 95), np.percentile(to_pred, 95))
    return {"hd95": float(hd), "assd": float(pooled.mean())}  # ASSD: mean of the pooled set (medpy >= 0.5)


@_fill_doc
def hd95(reference, prediction, *, label: Optional[int] = None, spacing: Optional[Sequence[float]] = None,
         convention: str = DEFAULT_HD95) -> float:
    """95th-percentile Hausdorff distance between the mask borders.

    %(parameters)s
    %(spacing)s
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
    return _distances(*_pair(reference, prediction, label), spacing, convention)["hd95"]


@_fill_doc
def assd(reference, prediction, *, label: Optional[int] = None, spacing: Optional[Sequence[float]] = None) -> float:
    """Average symmetric surface distance: the mean of both directions' border distances pooled
    (medpy >= 0.5).

    %(parameters)s
    %(spacing)s

    Returns
    -------
    float
        0 when both masks are empty, NaN when exactly one is (as :func:`hd95`).

    Examples
    --------
    >>> a = np.zeros((5, 5), bool); a[1:4, 1:4] = True
    >>> assd(a, np.roll(a, 1, axis=1))
    0.5
    """
    return _distances(*_pair(reference, prediction, label), spacing, DEFAULT_HD95)["assd"]


@_fill_doc
def segmentation_metrics(reference, prediction, *, label: Optional[int] = None,
                         spacing: Optional[Sequence[float]] = None,
                         empty_truth: str = DEFAULT_EMPTY_TRUTH, hd95: str = DEFAULT_HD95) -> Dict[str, float]:
    """All per-image metrics of :data:`PER_IMAGE_METRICS` plus the pixel counts and mask sizes.

    The masks are validated and counted once; every metric is computed from that one pair.

    %(parameters)s
    %(spacing)s
    %(empty_truth)s
    hd95 : {"pooled", "max"}, default "pooled"
        The HD95 convention (:data:`HD95_CONVENTIONS`).

    Returns
    -------
    dict
        ``dice, iou, precision, recall, specificity, hd95, assd`` (float), ``tp, fp, fn, tn`` and
        ``n_ref``/``n_pred``, the foreground pixel counts (as in nnU-Net's summary.json).

    Examples
    --------
    >>> m = segmentation_metrics([[1, 1, 0, 0]], [[0, 1, 1, 0]])
    >>> m["dice"], m["specificity"], m["hd95"], m["n_ref"], m["n_pred"]
    (0.5, 0.5, 1.0, 2, 2)
    """
    ref, pred = _pair(reference, prediction, label)
    c = _counts(ref, pred)
    out = overlap_scores(c["tp"], c["fp"], c["fn"], empty_truth=empty_truth)
    out["specificity"] = _specificity(c)
    out.update(_distances(ref, pred, spacing, hd95))
    out.update(c)
    out["n_ref"], out["n_pred"] = c["tp"] + c["fn"], c["tp"] + c["fp"]
    return out


# -- dataset level ----------------------------------------------------------------------------------
def pooled_overlap(counts: Iterable[Mapping[str, int]], *, empty_truth: str = DEFAULT_EMPTY_TRUTH) -> Dict[str, float]:
    """Dataset-level ("global") Dice and IoU from pixel counts summed over all images.

    Large lesions weigh more than small ones, unlike the mean of per-image scores; report both.

    Parameters
    ----------
    counts : iterable of mapping
        Per image, ``tp``, ``fp``, ``fn`` (e.g. from :func:`confusion_counts` or
        :func:`segmentation_metrics` rows).
    empty_truth : {"one", "zero"}, default "one"
        The empty-mask rule, which decides when no image has a reference lesion.

    Returns
    -------
    dict
        ``dice``, ``iou`` (NaN for no images) and ``n``, the number of images.

    Examples
    --------
    >>> pooled_overlap([{"tp": 100, "fp": 0, "fn": 0}, {"tp": 0, "fp": 4, "fn": 4}])
    {'dice': 0.9615384615384616, 'iou': 0.9259259259259259, 'n': 2}
    """
    tp = fp = fn = 0
    n = 0
    for c in counts:
        tp, fp, fn, n = tp + c["tp"], fp + c["fp"], fn + c["fn"], n + 1
    if n == 0:
        return {"dice": NAN, "iou": NAN, "n": 0}
    scores = overlap_scores(tp, fp, fn, empty_truth=empty_truth)
    return {"dice": scores["dice"], "iou": scores["iou"], "n": n}


def _same_length(references: Sequence, others: Sequence, what: str) -> None:
    if len(references) != len(others):
        raise ValueError(f"{len(references)} references but {len(others)} {what}")


def image_false_positive_rate(references: Sequence, predictions: Sequence, *, min_area: int = 1) -> Dict[str, float]:
    """Image-level false-positive rate on the cases whose reference is empty (normal images).

    Parameters
    ----------
    references, predictions : sequence of array_like
        One mask each per image, in the same order.
    min_area : int, default 1
        A normal image is a false positive if its prediction has at least this many foreground pixels.

    Returns
    -------
    dict
        ``n_normal``, ``n_false_positive``, ``fp_rate`` and ``specificity`` (1 - ``fp_rate``); the
        rates are NaN when there is no normal image.

    Examples
    --------
    >>> empty, speck = np.zeros((4, 4)), np.eye(4)
    >>> image_false_positive_rate([empty, empty], [empty, speck])
    {'n_normal': 2, 'n_false_positive': 1, 'fp_rate': 0.5, 'specificity': 0.5}
    """
    _same_length(references, predictions, "predictions")
    refs = [_binary(r, what=f"references[{i}]") for i, r in enumerate(references)]
    preds = [_binary(p, what=f"predictions[{i}]") for i, p in enumerate(predictions)]
    n_normal = n_fp = 0
    for ref, pred in zip(refs, preds):
        if ref.any():
            continue
        n_normal += 1
        n_fp += int(np.count_nonzero(pred) >= min_area)
    rate = n_fp / n_normal if n_normal else NAN
    return {"n_normal": n_normal, "n_false_positive": n_fp, "fp_rate": rate,
            "specificity": 1 - rate if n_normal else NAN}


def pixel_roc_curve(references: Sequence, probabilities: Sequence, *, max_pixels: Optional[int] = 2_000_000,
                    random_state: int = 0) -> Dict[str, object]:
    """Pixel-level ROC curve and AUC of foreground probabilities over a set of images (scikit-learn).

    Parameters
    ----------
    references : sequence of array_like
        One reference mask per image.
    probabilities : sequence of array_like
        The foreground probability per pixel, each of its reference's shape.
    max_pixels : int or None, default 2_000_000
        When more pixels are pooled, a uniform random subset of this size is used (seeded; the AUC
        estimate stays unbiased). None: every pixel.
    random_state : int, default 0
        Seed of that subset.

    Returns
    -------
    dict
        ``fpr``, ``tpr``, ``thresholds`` (arrays, empty if the pooled reference has one class),
        ``auc`` (NaN then) and ``n_pixels``.

    Examples
    --------
    >>> roc = pixel_roc_curve([[[0, 0, 1, 1]]], [[[0.1, 0.4, 0.35, 0.8]]])
    >>> roc["auc"], roc["n_pixels"]
    (0.75, 4)
    """
    from sklearn.metrics import roc_auc_score, roc_curve
    _same_length(references, probabilities, "probability maps")
    y_true, y_score = [], []
    for i, (ref, prob) in enumerate(zip(references, probabilities)):
        ref, prob = _binary(ref, what=f"references[{i}]"), np.asarray(prob, dtype=np.float32)
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
    """Summary statistics over the finite values.

    Parameters
    ----------
    values : sequence of float
        Per-image scores; NaN (undefined) values are counted, not averaged.

    Returns
    -------
    dict
        ``mean``, ``std`` (ddof=1; NaN for one value), ``median``, ``min``, ``max``, ``n`` (finite
        values) and ``n_nan``.

    Examples
    --------
    >>> summarize([0.5, 1.0, float("nan")])
    {'mean': 0.75, 'std': 0.3535533905932738, 'median': 0.75, 'min': 0.5, 'max': 1.0, 'n': 2, 'n_nan': 1}
    """
    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": NAN, "std": NAN, "median": NAN, "min": NAN, "max": NAN, "n": 0,
                "n_nan": int(arr.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1 else NAN,
            "median": float(np.median(finite)), "min": float(finite.min()), "max": float(finite.max()),
            "n": int(finite.size), "n_nan": int(arr.size - finite.size)}
