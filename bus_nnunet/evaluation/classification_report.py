"""The classification part of ``bus-nnunet cv-report`` (and of the study summary built from it).

Any trainer whose validation writes ``fold_k/validation/classification.csv``
(``case_id,true_class,p_<class>...,predicted_class``, see
:func:`bus_nnunet.inference.classification.write_classification_csv`) is a classifier of its
out-of-fold cases. The question scored is **malignant vs rest**: malignant is the positive class,
benign and (where the dataset has it) normal are negative, and the score is ``p_malignant``
(the softmax probability of malignant). Per classifier: DeLong's AUC with its 95 % CI,
sensitivity and specificity at 0.5 and at Youden's threshold chosen on the training folds, the
accuracy of the predicted class over all classes, the expected calibration error; between
classifiers, DeLong's paired test with Holm's correction. The metric functions are in
:mod:`bus_nnunet.evaluation.classification`.
"""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bus_nnunet.errors import UserError
from bus_nnunet.evaluation import classification as C
from bus_nnunet.evaluation import stats as S

CSV_NAME = "classification.csv"
POSITIVE_CLASS = "malignant"
SCORE_COLUMN = f"p_{POSITIVE_CLASS}"
N_BINS = 10
NAN = float("nan")

RULES = {
    "question": "malignant vs rest: malignant is positive; benign and normal (where present) are negative",
    "score": f"{SCORE_COLUMN}, the softmax probability of malignant in fold_k/validation/{CSV_NAME}",
    "labels": "the dataset's manifest.csv 'class' column where it gives the case, else the csv's true_class",
    "auc": "ROC AUC over all out-of-fold cases pooled; 95% CI from DeLong's variance (DeLong et al. 1988, "
           "fast midrank algorithm of Sun & Xu 2014), AUC ± 1.96 SE clipped to [0, 1] (as pROC's ci.auc)",
    "youden": "fold k's cases are classified at the threshold maximising sensitivity + specificity - 1 on the "
              "other folds' cases (fold k's training cases, scored out of fold by the other folds' models); "
              "fold k's own cases never choose their threshold",
    "accuracy": "argmax of the class probabilities against the true class, over all classes",
    "ece": f"expected calibration error of {SCORE_COLUMN} against malignant/not: {N_BINS} equal-width bins "
           "(0, 0.1], ..., (0.9, 1] (the first includes 0), gaps weighted by bin size",
    "comparison": "DeLong's paired test of equal AUC on the cases both classifiers scored; p-values "
                  "Holm-corrected over all pairs",
}


@dataclass
class ClassifierResults:
    """One classifier's out-of-fold class probabilities: the labelled cases, in one order."""
    name: str
    class_names: List[str]
    case_ids: List[str] = field(default_factory=list)
    folds: List[int] = field(default_factory=list)
    true_classes: List[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    folds_found: List[int] = field(default_factory=list)
    folds_missing: List[int] = field(default_factory=list)
    files: List[str] = field(default_factory=list)
    unlabelled: List[str] = field(default_factory=list)

    @property
    def y(self) -> np.ndarray:
        return np.array([c == POSITIVE_CLASS for c in self.true_classes], dtype=int)

    @property
    def score(self) -> np.ndarray:
        return self.probabilities[:, self.class_names.index(POSITIVE_CLASS)]


def read_classification_csv(path) -> Tuple[List[str], Dict[str, Tuple[str, np.ndarray]]]:
    """``(class names, {case_id: (true class or '', probabilities)})`` of a classification.csv.

    Raises
    ------
    UserError
        Naming the file, for a missing ``case_id``/``p_malignant`` column, a probability that is
        not a number in [0, 1], or a case listed twice.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = list(reader)
    class_names = [c[2:] for c in columns if c.startswith("p_")]
    if "case_id" not in columns or POSITIVE_CLASS not in class_names:
        raise UserError(f"{path} needs the columns case_id and {SCORE_COLUMN} (has {', '.join(columns) or 'none'}); "
                        f"it is written by validation of a classifying trainer (nnUNetv2_train ... --val)")
    out = {}
    for line, row in enumerate(rows, start=2):
        case = row["case_id"]
        if case in out:
            raise UserError(f"{path} line {line}: case {case!r} is listed twice")
        try:
            p = np.array([float(row[f"p_{c}"]) for c in class_names])
        except (TypeError, ValueError):
            raise UserError(f"{path} line {line}: the probabilities of {case!r} are not numbers") from None
        if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
            raise UserError(f"{path} line {line}: the probabilities of {case!r} are not in [0, 1]")
        out[case] = ((row.get("true_class") or "").strip().lower(), p)
    return class_names, out


def collect(results, classes: Optional[Dict[str, str]] = None, *,
            allow_missing: bool = False) -> Dict[str, ClassifierResults]:
    """The classifiers among cv-report's trainers (``trainer -> TrainerResults``): those with a
    ``classification.csv`` in at least one fold's validation folder.

    A fold's csv must list exactly that fold's scored validation cases (``allow_missing``: a case
    without a row is left out); a case of another fold means the csv is from another split and
    is refused. Labels: ``classes`` (the manifest's) where it gives the case, else the csv's
    ``true_class``; the two disagreeing is an error. Cases without a label are left out
    (``unlabelled``).
    """
    classes = classes or {}
    out = {}
    for trainer, res in results.items():
        cr = None
        for fold in res.folds_found:
            path = Path(res.folder) / f"fold_{fold}" / "validation" / CSV_NAME
            if not path.is_file():
                continue
            names, table = read_classification_csv(path)
            if cr is None:
                cr = ClassifierResults(trainer, names)
                probabilities = []
            elif names != cr.class_names:
                raise UserError(f"{path} has the classes {names}, {cr.files[0]} {cr.class_names}; every fold of "
                                f"{trainer} must classify into the same classes")
            expected = [r["case_id"] for r in res.rows if r["fold"] == fold]
            stale = sorted(set(table) - set(expected))
            if stale:
                raise UserError(f"{path} lists {len(stale)} case(s) that are not validation cases of fold {fold} "
                                f"(e.g. {', '.join(stale[:3])}): it is from another split; rerun nnUNetv2_train ... "
                                f"{fold} -tr {trainer} --val to write it again")
            absent = [c for c in expected if c not in table]
            if absent and not allow_missing:
                raise UserError(f"{path} has no row for {len(absent)} of the {len(expected)} validation case(s) of "
                                f"fold {fold} (e.g. {', '.join(absent[:3])}); rerun nnUNetv2_train ... {fold} -tr "
                                f"{trainer} --val, or pass --allow-missing to leave them out")
            for case in expected:
                if case not in table:
                    continue
                csv_class, p = table[case]
                label = classes.get(case, csv_class)
                if csv_class and label != csv_class:
                    raise UserError(f"{path}: case {case!r} has true_class {csv_class!r}, the manifest says "
                                    f"{label!r}; the csv is stale: rerun nnUNetv2_train ... {fold} -tr {trainer} --val")
                if not label:
                    cr.unlabelled.append(case)
                    continue
                cr.case_ids.append(case)
                cr.folds.append(fold)
                cr.true_classes.append(label)
                probabilities.append(p)
            cr.folds_found.append(fold)
            cr.files.append(str(path))
        if cr is not None:
            cr.probabilities = np.array(probabilities).reshape(len(cr.case_ids), len(cr.class_names))
            cr.folds_missing = sorted(set(res.folds_found + res.folds_missing) - set(cr.folds_found))
            out[trainer] = cr
    return out


def ensemble(name: str, members: Sequence[str], classifiers: Dict[str, ClassifierResults],
             folds: Sequence[int]) -> Tuple[Optional[ClassifierResults], Optional[str]]:
    """The classifier of a cv-report ensemble: per case the unweighted mean of its members' class
    probabilities (as ``bus-nnunet classify -m A -m B`` averages them), on the cases of ``folds``
    that every member classified. ``(None, why)`` when a member has no classification or the
    members' classes differ."""
    lacking = [m for m in members if m not in classifiers]
    if lacking:
        return None, f"{name}: no classification ({', '.join(lacking)} writes no {CSV_NAME})"
    crs = [classifiers[m] for m in members]
    if any(c.class_names != crs[0].class_names for c in crs):
        return None, f"{name}: no classification (its members classify into different classes)"
    index = [dict(zip(c.case_ids, range(len(c.case_ids)))) for c in crs]
    first = crs[0]
    out = ClassifierResults(name, list(first.class_names))
    probabilities = []
    for i, case in enumerate(first.case_ids):
        if first.folds[i] in folds and all(case in idx for idx in index):
            out.case_ids.append(case)
            out.folds.append(first.folds[i])
            out.true_classes.append(first.true_classes[i])
            probabilities.append(np.mean([c.probabilities[idx[case]] for c, idx in zip(crs, index)], axis=0))
    out.probabilities = np.array(probabilities).reshape(len(out.case_ids), len(out.class_names))
    out.folds_found = sorted(set(out.folds))
    out.folds_missing = sorted(set().union(*(c.folds_found + c.folds_missing for c in crs)) - set(out.folds_found))
    return out, None


def _rates(metrics: Dict[str, float]) -> Dict[str, float]:
    return {k: metrics[k] for k in ("sensitivity", "specificity", "accuracy", "tp", "tn", "fp", "fn")}


def summarize(cr: ClassifierResults, *, confidence: float = 0.95, n_bins: int = N_BINS) -> Dict[str, object]:
    """metrics.json's ``classification`` entry of one classifier (see :data:`RULES`)."""
    y, score, folds = cr.y, cr.score, np.array(cr.folds)
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    counts = {c: cr.true_classes.count(c) for c in sorted(set(cr.true_classes))}
    out: Dict[str, object] = {"n_cases": len(y), "n_positive": n_pos, "n_negative": n_neg, "class_counts": counts,
                              "class_names": cr.class_names, "folds_found": cr.folds_found,
                              "folds_missing": cr.folds_missing, "files": cr.files,
                              "n_unlabelled": len(cr.unlabelled)}
    if n_pos >= 2 and n_neg >= 2:
        out["auc"] = {**C.delong_auc(y, score, confidence=confidence), "method": "DeLong"}
    else:
        out["auc"] = {"auc": NAN, "ci_low": NAN, "ci_high": NAN, "confidence": confidence, "method": "DeLong",
                      "note": f"undefined: {n_pos} malignant and {n_neg} other case(s); DeLong needs 2 of each"}
    out["per_fold_auc"] = {fold: (C.binary_classification_metrics(y[folds == fold], score[folds == fold])["auc"]
                                  if (folds == fold).any() else NAN) for fold in cr.folds_found}
    out["at_0.5"] = {"threshold": 0.5, **_rates(C.binary_classification_metrics(y, score, threshold=0.5))}
    if len(cr.folds_found) < 2 or not (n_pos and n_neg):
        thresholds = {fold: NAN for fold in cr.folds_found}
    else:
        thresholds = C.out_of_fold_youden_thresholds(y, score, folds)
    youden = {"thresholds": thresholds}
    if thresholds and all(np.isfinite(t) for t in thresholds.values()):
        youden.update(_rates(C.binary_classification_metrics(y, score, threshold=[thresholds[f] for f in folds])))
    else:
        youden.update({k: NAN for k in ("sensitivity", "specificity", "accuracy")},
                      note="undefined: needs at least two folds, and both classes among the other folds' cases "
                           "of every fold")
    out["at_youden"] = youden
    predicted = [cr.class_names[i] for i in cr.probabilities.argmax(axis=1)] if len(y) else []
    out["accuracy"] = float(np.mean([p == t for p, t in zip(predicted, cr.true_classes)])) if len(y) else NAN
    bins = C.calibration_bins(y, score, n_bins=n_bins) if len(y) else None
    out["ece"] = {"value": C.expected_calibration_error(y, score, n_bins=n_bins) if len(y) else NAN,
                  "n_bins": n_bins, "binning": "equal-width",
                  "bins": [] if bins is None else
                  [{"low": float(bins["edges"][i]), "high": float(bins["edges"][i + 1]), "n": int(bins["count"][i]),
                    "mean_predicted": float(bins["mean_predicted"][i]),
                    "fraction_positive": float(bins["fraction_positive"][i])} for i in range(n_bins)]}
    return out


def compare(classifiers: Dict[str, ClassifierResults], *, confidence: float = 0.95) -> List[Dict[str, object]]:
    """DeLong's paired test for every pair of classifiers on the labelled cases both scored;
    p-values Holm-corrected over all pairs (``p_holm``). A pair with fewer than two cases of a
    class in common is listed with NaN p-values and a ``note``."""
    out = []
    for a, b in itertools.combinations(classifiers, 2):
        ca, cb = classifiers[a], classifiers[b]
        ib = dict(zip(cb.case_ids, range(len(cb.case_ids))))
        pairs = [(i, ib[c]) for i, c in enumerate(ca.case_ids) if c in ib]
        ia_, ib_ = (np.array([p[k] for p in pairs], dtype=int) for k in (0, 1))
        y = ca.y[ia_]
        row: Dict[str, object] = {"classifier_a": a, "classifier_b": b, "n_cases": len(pairs),
                                  "n_positive": int(y.sum()), "n_negative": int((y == 0).sum())}
        if y.sum() >= 2 and (y == 0).sum() >= 2:
            test = C.delong_roc_test(y, ca.score[ia_], cb.score[ib_], confidence=confidence)
            row.update({k: test[k] for k in ("auc_a", "auc_b", "difference", "ci_low", "ci_high", "z", "p_value")})
        else:
            row.update({k: NAN for k in ("auc_a", "auc_b", "difference", "ci_low", "ci_high", "z", "p_value")},
                       note="undefined: fewer than two malignant or two other cases in common")
        out.append(row)
    for row, p in zip(out, S.holm_correction([r["p_value"] for r in out])):
        row["p_holm"] = float(p)
    return out


# ------------------------------------------------------------------------------------------ tables
def _f(value, digits: int = 3) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


TABLE_HEADER = ["classifier", "cases (malignant)", "AUC [95% CI]", "sens / spec @0.5", "sens / spec @Youden",
                "Youden thresholds", "accuracy (all classes)", "ECE"]


def table_rows(summaries: Dict[str, Dict[str, object]]) -> List[List[str]]:
    """One row per classifier (``name -> summarize(...)``, as metrics.json stores it): the table
    of cv-report's report.md and of the study summary."""
    rows = []
    for name, s in summaries.items():
        auc, half, youden = s["auc"], s["at_0.5"], s["at_youden"]
        thresholds = "; ".join(f"{k}: {_f(v, 2)}" for k, v in youden["thresholds"].items()) or "-"
        rows.append([name, f"{s['n_cases']} ({s['n_positive']})",
                     f"{_f(auc['auc'])} [{_f(auc['ci_low'])}, {_f(auc['ci_high'])}]",
                     f"{_f(half['sensitivity'])} / {_f(half['specificity'])}",
                     f"{_f(youden['sensitivity'])} / {_f(youden['specificity'])}", thresholds,
                     _f(s["accuracy"]), _f(s["ece"]["value"])])
    return rows


COMPARISON_HEADER = ["pair (a vs b)", "cases", "AUC a", "AUC b", "a - b [95% CI]", "DeLong p", "Holm p"]


def comparison_rows(comparisons: Sequence[Dict[str, object]]) -> List[List[str]]:
    return [[f"{c['classifier_a']} vs {c['classifier_b']}", str(c["n_cases"]), _f(c["auc_a"]), _f(c["auc_b"]),
             f"{_f(c['difference'])} [{_f(c['ci_low'])}, {_f(c['ci_high'])}]", _p(c["p_value"]), _p(c["p_holm"])]
            for c in comparisons]


def markdown_section(summaries: Dict[str, Dict[str, object]], comparisons, notes: Sequence[str] = (),
                     figures: Sequence[Tuple[str, str]] = ()) -> List[str]:
    """cv-report's "Classification" section (Markdown lines)."""
    from bus_nnunet.text_tables import markdown_table
    lines = ["## Classification (malignant vs rest)", "",
             f"Malignant is the positive class, benign and normal cases are negative; the score is {SCORE_COLUMN} "
             f"from each fold's validation/{CSV_NAME}, all folds' out-of-fold cases pooled. AUC: 95% CI from "
             "DeLong's variance. @Youden: each fold's cases are classified at the threshold that maximises "
             "sensitivity + specificity - 1 on the other folds' cases (its training cases), never on the cases "
             f"scored. Accuracy: the most probable class against the true class, over all classes. ECE: {N_BINS} "
             f"equal-width bins of {SCORE_COLUMN}.", "",
             markdown_table(TABLE_HEADER, table_rows(summaries)), ""]
    for name, s in summaries.items():
        if s["folds_missing"]:
            lines.append(f"- **{name}: no classification for fold(s) {', '.join(map(str, s['folds_missing']))}**")
        if s["n_unlabelled"]:
            lines.append(f"- {name}: {s['n_unlabelled']} case(s) without a class left out")
        for key in ("auc", "at_youden"):
            if s[key].get("note"):
                lines.append(f"- {name}, {'AUC' if key == 'auc' else '@Youden'}: {s[key]['note']}")
    lines += [f"- {n}" for n in notes]
    if comparisons:
        lines += ["", "Paired AUC comparisons (DeLong's test on the cases both classified; Holm-corrected over "
                      "all pairs):", "", markdown_table(COMPARISON_HEADER, comparison_rows(comparisons))]
    lines.append("")
    for alt, path in figures:
        lines += [f"![{alt}]({path})", ""]
    return lines


# ----------------------------------------------------------------------------------------- figures
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _finish(plt, fig, ax, path, drawn: bool, **legend) -> bool:
    """Both figures' end: the chance / perfect-calibration diagonal, and the file only when a
    classifier was drawn (no empty figure is ever written)."""
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    if drawn:
        ax.legend(**legend)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def plot_roc(classifiers: Dict[str, ClassifierResults], summaries: Dict[str, Dict[str, object]], path) -> bool:
    """ROC curves of malignant vs rest, one per classifier, AUC and CI in the legend."""
    from sklearn.metrics import roc_curve
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    drawn = False
    for name, cr in classifiers.items():
        y = cr.y
        if y.sum() == 0 or (y == 0).sum() == 0:
            continue
        fpr, tpr, _ = roc_curve(y, cr.score)
        auc = summaries[name]["auc"]
        ax.plot(fpr, tpr, label=f"{name}: AUC {_f(auc['auc'])} [{_f(auc['ci_low'])}, {_f(auc['ci_high'])}]")
        drawn = True
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, malignant vs rest (out-of-fold)",
           xlim=(-0.01, 1.01), ylim=(-0.01, 1.01))
    return _finish(plt, fig, ax, path, drawn, fontsize=6.5, loc="lower right")


def plot_reliability(summaries: Dict[str, Dict[str, object]], path) -> bool:
    """Reliability diagram: fraction malignant against mean predicted probability per bin (the
    ECE's bins), one line per classifier, with the cases per bin below."""
    plt = _pyplot()
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    drawn = False
    for i, (name, s) in enumerate(summaries.items()):
        bins = [b for b in s["ece"]["bins"] if b["n"]]
        if not bins:
            continue
        ax.plot([b["mean_predicted"] for b in bins], [b["fraction_positive"] for b in bins], "o-", ms=4,
                label=f"{name}: ECE {_f(s['ece']['value'])}")
        width = 1.0 / s["ece"]["n_bins"] / (len(summaries) + 1)
        ax_n.bar([b["low"] + width * (i + 0.5) for b in bins], [b["n"] for b in bins], width=width, align="edge")
        drawn = True
    ax.set(ylabel="fraction malignant", title="reliability of p_malignant (out-of-fold)", xlim=(0, 1),
           ylim=(-0.02, 1.02))
    ax_n.set(xlabel="p_malignant (points: bin means; bars: cases per bin)", ylabel="cases")
    return _finish(plt, fig, ax, path, drawn, fontsize=7, loc="upper left")
