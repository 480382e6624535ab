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
    p.add_argument("--classification", help="classification.csv (case_id,true_class,p_<class>...), e.g. a classifying "
                                            "trainer's fold_k/validation/classification.csv: malignant vs rest, "
                                            "as cv-report scores it")
    p.add_argument("--label", type=int, default=None,
                   help="evaluate only this label value (default: every non-zero label is lesion)")
    add_scoring_options(p)
    p.add_argument("-o", "--output", required=True, help="output folder (metrics.json, per_case.csv, summary.md)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_scoring_options(p) -> None:
    """``--empty-truth``, ``--hd95`` and ``--allow-missing``: the scoring rules ``evaluate`` and
    ``cv-report`` share (each recorded in the outputs)."""
    from bus_nnunet.evaluation.metrics import DEFAULT_EMPTY_TRUTH, DEFAULT_HD95, EMPTY_TRUTH_RULES, HD95_CONVENTIONS
    p.add_argument("--empty-truth", choices=sorted(EMPTY_TRUTH_RULES), default=DEFAULT_EMPTY_TRUTH,
                   help="how an image with an empty reference (normal image) scores: 'one' (default): an empty "
                        "prediction on it is perfect (Dice 1); 'zero': Dice = IoU = precision = recall = 0 "
                        "whatever the prediction, the protocol of Anari et al. 2025 (attention U-Net on all "
                        "780 BUSI images). The rule is recorded in the outputs")
    p.add_argument("--hd95", choices=sorted(HD95_CONVENTIONS), default=DEFAULT_HD95,
                   help="how HD95 combines the two directions' border distances: 'pooled' (default, medpy, "
                        "comparable with earlier bus-nnunet results): the 95th percentile of both pooled; 'max' "
                        "(MONAI, MetricsReloaded, DeepMind surface-distance): the larger of the two directed 95th "
                        "percentiles, which a far false-positive speck raises. Recorded in the outputs")
    p.add_argument("--allow-missing", action="store_true",
                   help="score a reference case without a prediction as an empty prediction (default: an error "
                        "listing them, so a prediction run that stopped halfway never reads as a score)")


def run(args) -> int:
    from bus_nnunet.evaluation.folder_report import evaluate_folder, write_folder_report
    from bus_nnunet.io_utils import check_output_free

    inputs = [args.pred, args.gt, args.probabilities, args.manifest, args.classification]  # None: not given
    check_output_free(args.output, args.overwrite, "output folder", inputs=inputs, folder=True)
    report = evaluate_folder(args.pred, args.gt, probabilities=args.probabilities, manifest=args.manifest,
                             classification=args.classification, label=args.label, empty_truth=args.empty_truth,
                             hd95=args.hd95, allow_missing=args.allow_missing, progress=not args.no_progress)
    write_folder_report(report, args.output, overwrite=args.overwrite, inputs=inputs)
    print(report.headline(args.output))
    return 0
