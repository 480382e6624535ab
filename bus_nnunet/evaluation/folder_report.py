"""``bus-nnunet evaluate``'s report on one folder of predictions: what it holds, how it is made,
its writer and its reader side by side (as nnU-Net keeps ``save_summary_json`` and
``load_summary_json`` together), so the keys of ``metrics.json`` live here only.

The report folder::

    metrics.json    FolderReport.to_json(): the inputs, the empty-mask rule and HD95 convention,
                    "all" (folder.aggregate), "by_class", "references_without_prediction",
                    "pixel_roc" (with probabilities) and "classification" (with a classification.csv)
    per_case.csv    one row per case (folder.evaluate_cases)
    summary.md      the same numbers for reading
    pixel_roc.npz   the pixel-level ROC curve (fpr, tpr, thresholds), with probabilities
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import numpy as np

from bus_nnunet.errors import UserError
from bus_nnunet.evaluation import folder as F
from bus_nnunet.evaluation import metrics as M

METRICS_FILE = F.METRICS_FILE


@dataclass
class FolderReport:
    """One evaluated prediction folder.  The fields up to ``classification`` are ``metrics.json``;
    ``rows`` (per_case.csv) and ``roc_curve`` (pixel_roc.npz) are only set by
    :func:`evaluate_folder`, not by :func:`read_folder_report`."""
    pred: str                                   # the folders, resolved as recorded
    gt: str
    empty_truth: str                            # metrics.EMPTY_TRUTH_RULES key the rows were scored with
    hd95: str                                   # metrics.HD95_CONVENTIONS key
    summary: Dict[str, object]                  # folder.aggregate of every case ("all")
    by_class: Dict[str, Dict[str, object]]      # folder.aggregate_by_class
    references_without_prediction: List[str] = field(default_factory=list)  # scored empty (allow_missing)
    pixel_roc: Optional[Dict[str, object]] = None       # auc, n_cases, n_pixels
    classification: Optional[Dict[str, object]] = None  # classification_from_csv
    title: str = ""                             # summary.md's heading
    rows: List[Dict[str, object]] = field(default_factory=list, repr=False)
    roc_curve: Optional[Dict[str, np.ndarray]] = field(default=None, repr=False)

    def to_json(self) -> Dict[str, object]:
        """``metrics.json``'s content (strict JSON: NaN written as null)."""
        out = {"pred": self.pred, "gt": self.gt, "empty_truth": self.empty_truth,
               "empty_rule": M.EMPTY_TRUTH_RULES[self.empty_truth], "hd95_convention": self.hd95,
               "hd95_rule": M.HD95_CONVENTIONS[self.hd95],
               "references_without_prediction": self.references_without_prediction, "all": self.summary,
               "by_class": self.by_class}
        if self.pixel_roc is not None:
            out["pixel_roc"] = self.pixel_roc
        if self.classification is not None:
            out["classification"] = self.classification
        return F.json_safe(out)

    @classmethod
    def from_json(cls, data: Dict[str, object]) -> "FolderReport":
        return cls(pred=data["pred"], gt=data["gt"], empty_truth=data["empty_truth"],
                   hd95=data["hd95_convention"], summary=data["all"], by_class=data["by_class"],
                   references_without_prediction=list(data["references_without_prediction"]),
                   pixel_roc=data.get("pixel_roc"), classification=data.get("classification"),
                   title=f"Evaluation of {data['pred']}")

    def headline(self, output) -> str:
        """What ``evaluate`` prints when the report is written to ``output``."""
        s = self.summary["per_image"]["dice"]
        lines = [f"{self.summary['n_cases']} case(s): Dice {F.fmt(s['mean'])} ± {F.fmt(s['std'])} per image, "
                 f"pooled {F.fmt(self.summary['pooled']['dice'])} (--empty-truth {self.empty_truth}, "
                 f"--hd95 {self.hd95}); written to {output}"]
        missing = self.references_without_prediction
        if missing:
            lines.append(f"{len(missing)} of them had no prediction and were scored as empty predictions "
                         f"(--allow-missing): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return "\n".join(lines)


def classification_from_csv(path, case_ids=None):
    """Malignant-vs-rest metrics of a classification.csv (``case_ids``: only those cases), read and
    scored as cv-report does (:mod:`bus_nnunet.evaluation.classification_report`): malignant is
    positive, benign and normal negative, the score is ``p_malignant``; ``accuracy`` is the most
    probable class's over all classes.  Cases without a ``true_class`` are counted, not scored."""
    from bus_nnunet.evaluation.classification_report import read_classification_csv
    from bus_nnunet.inference.classification import summarize_classification
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classification file {path} not found")
    class_names, cases = read_classification_csv(path)
    if case_ids is not None:
        cases = {c: v for c, v in cases.items() if c in case_ids}
    labelled = [(truth, p) for truth, p in cases.values() if truth]
    out = {"n_cases": len(cases), "n_unlabelled": len(cases) - len(labelled)}
    if labelled:
        # a true class the model does not have (normal, for a benign/malignant model) is never its argmax
        y = [class_names.index(truth) if truth in class_names else -1 for truth, _ in labelled]
        out["malignant_vs_rest"] = summarize_classification(y, np.array([p for _, p in labelled]), class_names)
    return out


def _pixel_roc(rows, refs: Dict[str, Path], probabilities) -> Dict[str, object]:
    """The pixel-level ROC curve over the scored cases that have a probabilities ``.npz``."""
    prob_dir = Path(probabilities)
    npz = {F.case_id_of(p): p for p in sorted(prob_dir.glob("*.npz"))} if prob_dir.is_dir() else {}
    if not npz:
        raise UserError(f"no .npz files in {prob_dir}; write them with nnUNetv2_predict --save_probabilities")
    scored = [r["case_id"] for r in rows if r["case_id"] in npz]
    references = [F.read_segmentation(refs[c]) for c in scored]
    probs = [F.read_foreground_probability(npz[c]) for c in scored]
    for c, ref, prob in zip(scored, references, probs):
        if ref.shape != prob.shape:
            raise UserError(f"{npz[c]} has probabilities of shape {prob.shape}, its reference {ref.shape}")
    return {**M.pixel_roc_curve(references, probs), "n_cases": len(scored)}


def evaluate_folder(pred, gt, *, probabilities=None, manifest=None, classification=None,
                    label: Optional[int] = None, empty_truth: str = M.DEFAULT_EMPTY_TRUTH,
                    hd95: str = M.DEFAULT_HD95, allow_missing: bool = False, progress: bool = True) -> FolderReport:
    """Score the predictions in ``pred`` against the references in ``gt`` (:func:`folder.evaluate_cases`),
    with per-class breakdowns from a ``manifest``, the pixel ROC from nnU-Net ``probabilities``
    (``.npz``) and the image-level metrics of a ``classification`` csv."""
    from bus_nnunet.manifest import case_classes_for
    refs = F.list_segmentations(gt)
    classes = case_classes_for(manifest, refs) if manifest else {}
    rows = F.evaluate_cases(pred, gt, classes, label=label, progress=progress, empty_truth=empty_truth,
                            allow_missing=allow_missing, hd95=hd95)
    report = FolderReport(pred=str(Path(pred).resolve()), gt=str(Path(gt).resolve()), empty_truth=empty_truth,
                          hd95=hd95, summary=F.aggregate(rows, empty_truth, hd95=hd95),
                          by_class=F.aggregate_by_class(rows, empty_truth, hd95=hd95),
                          references_without_prediction=[r["case_id"] for r in rows if r["prediction_missing"]],
                          title=f"Evaluation of {pred}", rows=rows)
    if probabilities:
        roc = _pixel_roc(rows, refs, probabilities)
        report.roc_curve = {k: roc[k] for k in ("fpr", "tpr", "thresholds")}
        report.pixel_roc = {"auc": roc["auc"], "n_cases": roc["n_cases"], "n_pixels": roc["n_pixels"]}
    if classification:
        report.classification = classification_from_csv(classification, {r["case_id"] for r in rows})
    return report


def summary_markdown(report: FolderReport) -> str:
    """``summary.md``: the overall and per-class table and what else the report holds."""
    sections = []
    missing = report.references_without_prediction
    if missing:
        sections.append(f"**{len(missing)} reference(s) have no prediction and were scored as empty predictions "
                        f"(--allow-missing)** (first: {', '.join(missing[:5])}).")
    if report.pixel_roc is not None:
        sections.append(f"Pixel-level ROC AUC over {report.pixel_roc['n_cases']} case(s): "
                        f"{F.fmt(report.pixel_roc['auc'])}")
    bm = (report.classification or {}).get("malignant_vs_rest")
    if bm:
        sections.append("Malignant vs rest (benign and normal negative; accuracy: most probable class): " + ", ".join(
            f"{k} {F.fmt(bm[k])}" for k in ("n", "accuracy", "sensitivity", "specificity", "f1", "auc")))
    return F.summary_markdown(report.title, report.summary, report.by_class, sections)


def write_folder_report(report: FolderReport, output, *, overwrite: bool = False, inputs: Iterable = ()) -> Path:
    """Write the report folder ``output`` at once (:func:`io_utils.atomic_output_dir`: never over
    one of ``inputs``, an existing folder only with ``overwrite``)."""
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_json, atomic_write_text
    with atomic_output_dir(output, overwrite, inputs=inputs) as tmp:
        atomic_write_json(tmp / METRICS_FILE, report.to_json())
        atomic_write_text(tmp / "per_case.csv", F.rows_to_csv(report.rows))
        atomic_write_text(tmp / "summary.md", summary_markdown(report))
        if report.roc_curve is not None and report.roc_curve["fpr"].size:
            np.savez_compressed(tmp / "pixel_roc.npz", **report.roc_curve)
    return Path(output)


def read_folder_report(folder) -> FolderReport:
    """The report ``bus-nnunet evaluate -o folder`` wrote (its ``metrics.json``)."""
    return F.read_report_json(folder, FolderReport.from_json, "evaluate")
