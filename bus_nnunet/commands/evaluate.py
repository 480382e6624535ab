"""``bus-nnunet evaluate``: per-image segmentation metrics (Dice, IoU, precision, recall,
specificity, HD95, ASSD), pooled Dice, normal-image false-positive rate, pixel ROC/AUC and
benign/malignant classification metrics for a folder of nnU-Net predictions."""
from __future__ import annotations

import argparse


def register(subparsers):
    from bus_nnunet.io_utils import OVERWRITE_HELP
    p = subparsers.add_parser(
        "evaluate", help="segmentation (+ classification) metrics of a prediction folder",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="folder of predicted segmentations (PNG or NIfTI, nnU-Net output)")
    p.add_argument("--gt", required=True, help="folder of reference segmentations (labelsTr / gt_segmentations)")
    p.add_argument("--probabilities", help="folder of nnU-Net .npz probabilities (--save_probabilities); "
                                           "adds the pixel-level ROC curve and AUC")
    p.add_argument("--manifest", help="manifest.csv with a 'class' column: adds per-class (benign/malignant/"
                                      "normal) breakdowns")
    p.add_argument("--classification", help="classification.csv (case_id,true_class,p_benign,p_malignant,"
                                            "predicted_class), e.g. from an ACSNet trainer's validation folder")
    p.add_argument("--label", type=int, default=None,
                   help="evaluate only this label value (default: every non-zero label is lesion)")
    add_empty_truth_option(p)
    add_hd95_option(p)
    p.add_argument("-o", "--output", required=True, help="output folder (metrics.json, per_case.csv, summary.md)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allow_missing_option(p)
    p.set_defaults(func=run)


def add_allow_missing_option(p) -> None:
    """``--allow-missing``, shared by ``evaluate`` and ``cv-report``."""
    p.add_argument("--allow-missing", action="store_true",
                   help="score a reference case without a prediction as an empty prediction (default: an error "
                        "listing them, so a prediction run that stopped halfway never reads as a score)")


def add_empty_truth_option(p) -> None:
    """``--empty-truth``, shared by ``evaluate`` and ``cv-report``."""
    from bus_nnunet.evaluation.metrics import DEFAULT_EMPTY_TRUTH, EMPTY_TRUTH_RULES
    p.add_argument("--empty-truth", choices=sorted(EMPTY_TRUTH_RULES), default=DEFAULT_EMPTY_TRUTH,
                   help="how an image with an empty reference (normal image) scores: 'one' (default): an empty "
                        "prediction on it is perfect (Dice 1); 'zero': Dice = IoU = precision = recall = 0 "
                        "whatever the prediction, the protocol of Anari et al. 2025 (attention U-Net on all "
                        "780 BUSI images). The rule is recorded in the outputs")


def add_hd95_option(p) -> None:
    """``--hd95``, shared by ``evaluate`` and ``cv-report``."""
    from bus_nnunet.evaluation.metrics import DEFAULT_HD95, HD95_CONVENTIONS
    p.add_argument("--hd95", choices=sorted(HD95_CONVENTIONS), default=DEFAULT_HD95,
                   help="how HD95 combines the two directions' border distances: 'pooled' (default, medpy, "
                        "comparable with earlier bus-nnunet results): the 95th percentile of both pooled; 'max' "
                        "(MONAI, MetricsReloaded, DeepMind surface-distance): the larger of the two directed 95th "
                        "percentiles, which a far false-positive speck raises. Recorded in the outputs")


def classification_from_csv(path, case_ids=None):
    """Benign-vs-malignant metrics (malignant positive, score p_malignant) and the multi-class
    accuracy of ``predicted_class`` from a classification.csv."""
    import csv
    from pathlib import Path
    from bus_nnunet.errors import UserError
    from bus_nnunet.evaluation.classification import binary_classification_metrics
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classification file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    needed = {"case_id", "true_class", "p_malignant"}
    if not rows or not needed <= set(rows[0]):
        raise UserError(f"{path} needs the columns {sorted(needed)} (has {list(rows[0]) if rows else 'no rows'})")
    if case_ids is not None:
        rows = [r for r in rows if r["case_id"] in case_ids]
    binary = [r for r in rows if r["true_class"].strip().lower() in ("benign", "malignant")]
    out = {"n_cases": len(rows)}
    if binary:
        out["benign_vs_malignant"] = binary_classification_metrics(
            [r["true_class"].strip().lower() == "malignant" for r in binary],
            [float(r["p_malignant"]) for r in binary])
    if rows and "predicted_class" in rows[0]:
        correct = sum(r["predicted_class"].strip().lower() == r["true_class"].strip().lower() for r in rows)
        out["accuracy_all_classes"] = correct / len(rows)
    return out


def run(args) -> int:
    from pathlib import Path

    from bus_nnunet.errors import UserError
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.evaluation import metrics as M
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_json, atomic_write_text, check_output_free
    from bus_nnunet.manifest import case_classes_for

    inputs = [args.pred, args.gt, args.probabilities, args.manifest, args.classification]  # None: not given
    check_output_free(args.output, args.overwrite, "output folder", inputs=inputs, folder=True)
    progress = not args.no_progress
    refs = F.list_segmentations(args.gt)
    classes = case_classes_for(args.manifest, refs) if args.manifest else {}
    rows = F.evaluate_cases(args.pred, args.gt, classes, label=args.label, progress=progress,
                            empty_truth=args.empty_truth, allow_missing=args.allow_missing,
                            hd95=args.hd95)
    missing = [r["case_id"] for r in rows if r["prediction_missing"]]
    summary = F.aggregate(rows, args.empty_truth, hd95=args.hd95)
    result = {"pred": str(Path(args.pred).resolve()), "gt": str(Path(args.gt).resolve()),
              "empty_truth": args.empty_truth, "empty_rule": M.EMPTY_TRUTH_RULES[args.empty_truth],
              "hd95_convention": args.hd95, "hd95_rule": M.HD95_CONVENTIONS[args.hd95],
              "references_without_prediction": missing, "all": summary,
              "by_class": F.aggregate_by_class(rows, args.empty_truth, hd95=args.hd95)}
    sections = []
    if missing:
        sections.append(f"**{len(missing)} reference(s) have no prediction and were scored as empty predictions "
                        f"(--allow-missing)** (first: {', '.join(missing[:5])}).")
    roc = None
    if args.probabilities:
        prob_dir = Path(args.probabilities)
        npz = {F.case_id_of(p): p for p in sorted(prob_dir.glob("*.npz"))} if prob_dir.is_dir() else {}
        if not npz:
            raise UserError(f"no .npz files in {prob_dir}; write them with nnUNetv2_predict --save_probabilities")
        scored = [r["case_id"] for r in rows if r["case_id"] in npz]
        references = [F.read_segmentation(refs[c]) for c in scored]
        probs = [F.read_foreground_probability(npz[c]) for c in scored]
        for c, ref, prob in zip(scored, references, probs):
            if ref.shape != prob.shape:
                raise UserError(f"{npz[c]} has probabilities of shape {prob.shape}, its reference {ref.shape}")
        roc = M.pixel_roc_curve(references, probs)
        result["pixel_roc"] = {"auc": roc["auc"], "n_cases": len(scored), "n_pixels": roc["n_pixels"]}
        sections.append(f"Pixel-level ROC AUC over {len(scored)} case(s): {F.fmt(roc['auc'])}")
    if args.classification:
        cls = classification_from_csv(args.classification, {r["case_id"] for r in rows})
        result["classification"] = cls
        bm = cls.get("benign_vs_malignant")
        if bm:
            sections.append("Benign vs malignant (malignant positive): " + ", ".join(
                f"{k} {F.fmt(bm[k])}" for k in ("n", "accuracy", "sensitivity", "specificity", "f1", "auc")))

    with atomic_output_dir(args.output, args.overwrite, inputs=inputs) as tmp:
        atomic_write_json(tmp / "metrics.json", F.json_safe(result))
        atomic_write_text(tmp / "per_case.csv", F.rows_to_csv(rows))
        atomic_write_text(tmp / "summary.md", F.summary_markdown(f"Evaluation of {args.pred}", summary,
                                                                 result["by_class"], sections))
        if roc is not None and roc["fpr"].size:
            import numpy as np
            np.savez_compressed(tmp / "pixel_roc.npz", fpr=roc["fpr"], tpr=roc["tpr"], thresholds=roc["thresholds"])
    s = summary["per_image"]["dice"]
    print(f"{len(rows)} case(s): Dice {F.fmt(s['mean'])} ± {F.fmt(s['std'])} per image, pooled "
          f"{F.fmt(summary['pooled']['dice'])} (--empty-truth {args.empty_truth}, --hd95 {args.hd95}); "
          f"written to {args.output}")
    if missing:
        print(f"{len(missing)} of them had no prediction and were scored as empty predictions (--allow-missing): "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return 0
