"""``bus-nnunet cv-report``: compare nnU-Net trainers on their 5-fold cross-validation predictions.

Reads ``$nnUNet_results/<Dataset>/<trainer>__<plans>__<configuration>/fold_k/validation`` against
``$nnUNet_preprocessed/<Dataset>/gt_segmentations``; reports per-image metrics as mean ± std over
the fold means and over all out-of-fold cases (with a bootstrap 95% CI), pooled Dice, the
normal-image false-positive rate, paired Wilcoxon signed-rank tests between trainers (Holm
corrected), Markdown and LaTeX tables and figures. Missing folds are reported, not fatal.

--ensembles all best3 adds ensemble rows: per validation case the mean of the members' softmax
probabilities (fold_k/validation/<case>.npz, written by nnUNetv2_train ... --npz), argmax, as
nnUNetv2_ensemble does; scored, tabled and tested like a trainer.

Trainers whose validation writes fold_k/validation/classification.csv (ACSNet, the classifying
variants) also get a classification section, malignant vs rest on p_malignant: AUC with DeLong's
95% CI, sensitivity/specificity at 0.5 and at Youden's threshold chosen on the other folds' cases,
accuracy, expected calibration error, ROC and reliability figures, and DeLong's paired test
between classifiers (Holm-corrected); an ensemble averages its members' class probabilities."""
from __future__ import annotations

import argparse


def register(subparsers):
    from bus_nnunet.io_utils import OVERWRITE_HELP
    from bus_nnunet.commands.evaluate import add_scoring_options
    p = subparsers.add_parser("cv-report", help="cross-validation report and paired statistics over trainers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name (e.g. 990 or Dataset990_SyntheticUS)")
    p.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    p.add_argument("--manifest", help="manifest.csv for per-class results (default: $nnUNet_raw/<Dataset>/"
                                      "manifest.csv if it exists)")
    add_scoring_options(p)
    p.add_argument("--ensembles", nargs="+", default=[], metavar="SELECTION",
                   help="also score ensembles of the trainers, like a trainer, on the validation probabilities "
                        "(nnUNetv2_train ... --npz): 'all' (every trainer) and/or 'best<k>' (the k trainers with "
                        "the highest mean per-image Dice over all validation cases of this report), e.g. "
                        "--ensembles all best3")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.evaluation.cross_validation_report import make_cross_validation_report
    report = make_cross_validation_report(
        args.dataset, args.trainers, args.output, plans=args.plans, configuration=args.configuration,
        folds=args.folds, manifest=args.manifest, empty_truth=args.empty_truth, hd95=args.hd95,
        allow_missing=args.allow_missing, ensembles=args.ensembles, n_resamples=args.bootstrap,
        overwrite=args.overwrite, progress=not args.no_progress)
    print(report.console_summary(args.output))
    return 0
