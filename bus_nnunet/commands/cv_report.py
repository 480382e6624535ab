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
    from bus_nnunet.commands.evaluate import add_allow_missing_option, add_empty_truth_option, add_hd95_option
    p = subparsers.add_parser("cv-report", help="cross-validation report and paired statistics over trainers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset id or name (e.g. 990 or Dataset990_SyntheticUS)")
    p.add_argument("-tr", "--trainers", nargs="+", required=True, help="trainer class names to compare")
    p.add_argument("-c", "--configuration", default="2d", help="nnU-Net configuration (default 2d)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="folds (default 0-4)")
    p.add_argument("--manifest", help="manifest.csv for per-class results (default: $nnUNet_raw/<Dataset>/"
                                      "manifest.csv if it exists)")
    add_empty_truth_option(p)
    add_hd95_option(p)
    add_allow_missing_option(p)
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
    from pathlib import Path

    from bus_nnunet.evaluation import classification_report as CR
    from bus_nnunet.evaluation import cv_report as R
    from bus_nnunet.evaluation import ensembles as E
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.evaluation import metrics as M
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_json, atomic_write_text, check_output_free
    from bus_nnunet.manifest import case_classes_for
    from bus_nnunet.reports import markdown_table

    dataset = R.resolve_dataset(args.dataset)
    raw_dir = Path(R.env_folder("nnUNet_raw")) / dataset
    manifest = Path(args.manifest) if args.manifest else raw_dir / "manifest.csv"
    gt_dir = Path(R.env_folder("nnUNet_preprocessed")) / dataset / "gt_segmentations"
    # read: montage images and manifest, references and splits, every trainer's model folder
    inputs = [raw_dir, manifest, gt_dir.parent, Path(R.env_folder("nnUNet_results")) / dataset]
    check_output_free(args.output, args.overwrite, "output folder", inputs=inputs, folder=True)
    gt_cases = F.list_segmentations(gt_dir) if gt_dir.is_dir() else {}
    classes = case_classes_for(manifest, gt_cases) if (args.manifest or manifest.is_file()) else {}
    results = R.collect(dataset, args.trainers, args.plans, args.configuration, args.folds, classes,
                        progress=not args.no_progress, empty_truth=args.empty_truth,
                        allow_missing=args.allow_missing, hd95=args.hd95)
    # image-level classification of the trainers that write fold_k/validation/classification.csv;
    # a stale or malformed csv fails before any output is written
    classifiers = CR.collect(results, classes, allow_missing=args.allow_missing)
    # a bad selection (best5 of three trainers) fails before any output is written
    ensembles, ensemble_notes = E.choose_ensembles(results, args.ensembles)
    slugs = {e.name: e.slug for e in ensembles}
    with atomic_output_dir(args.output, args.overwrite, inputs=inputs) as tmp:
        # the ensembles' segmentations are part of the report, in nnU-Net's layout
        # (ensembles/<slug>/fold_k/validation), so `bus-nnunet evaluate` and the montages read them as a trainer's
        ensemble_results = {e.name: E.score_ensemble(e, results, tmp / "ensembles" / e.slug, gt_dir=gt_dir,
                                                     classes=classes, progress=not args.no_progress)
                            for e in ensembles}
        # ensemble rows are scored like trainers from here on (tables, paired tests, figures)
        scored = {**results, **ensemble_results}
        summaries = {t: R.trainer_summary(r, args.bootstrap) for t, r in scored.items()}
        dice_by_trainer = E.mean_dice_by_trainer(results)
        for e in ensembles:
            summaries[e.name].update(folder=str(Path(args.output) / "ensembles" / e.slug),
                                     **E.ensemble_summary_fields(e, dice_by_trainer))
        comparisons = R.pairwise_comparisons(scored, n_resamples=args.bootstrap)
        classification_notes = []
        for e in ensembles if classifiers else ():
            cr, why = CR.ensemble(e.name, e.members, classifiers, ensemble_results[e.name].folds_found)
            if cr is None:
                classification_notes.append(why)
            else:
                classifiers[e.name] = cr
        classification = {name: CR.summarize(cr) for name, cr in classifiers.items()}
        for name, entry in classification.items():
            summaries[name]["classification"] = entry
        classification_comparisons = CR.compare(classifiers)

        caption = (f"{dataset}, {args.configuration}, {args.plans}: {len(args.folds)}-fold cross-validation. "
                   f"Dice (folds): mean ± std of the fold means; other metrics: mean ± std over all out-of-fold "
                   f"images; pooled Dice sums pixel counts over all images. Empty-mask rule: "
                   f"--empty-truth {args.empty_truth}; HD95: --hd95 {args.hd95}.")
        result_rows = R.results_table_rows(summaries)
        md = [f"# Cross-validation report: {dataset}", "", caption, "",
              markdown_table(R.RESULTS_HEADER, result_rows), ""]
        for t, s in summaries.items():
            if s["folds_missing"]:
                why = ("not every member has it" if t in ensemble_results else
                       f"no predictions in {s['folder']}/fold_k/validation")
                md.append(f"- **{t}: fold(s) {', '.join(map(str, s['folds_missing']))} missing** ({why})")
        md += ["", F.empty_rule_line(args.empty_truth) + " Undefined values are left out of their means.", "",
               F.hd95_rule_line(args.hd95), ""]
        if ensembles:
            md += [E.describe(ensembles, ensemble_notes), ""]
        if comparisons:
            md += ["## Paired comparisons (same images)", "",
                   "Two-sided Wilcoxon signed-rank test on per-image scores, Holm-corrected within each metric; "
                   "images both trainers score the same are left out of the test (metrics.json: n_nonzero, "
                   "n_a_better, n_b_better); exact p up to 400 remaining pairs, tie-corrected normal "
                   "approximation above. Bootstrap 95% CI of the mean difference. The test asks whether one "
                   "trainer scores higher on more images, the CI where the mean difference lies: a small p "
                   "with a CI that includes 0 means many small differences one way and a few large ones the "
                   "other.", "",
                   markdown_table(R.COMPARISON_HEADER, R.comparison_table_rows(comparisons)), ""]
        per_fold_rows = [[t, str(fold), str(s["per_fold"][fold]["n_cases"]),
                          F.fmt(s["per_fold"][fold]["per_image"]["dice"]["mean"]),
                          F.fmt(s["per_fold"][fold]["pooled"]["dice"])]
                         for t, s in summaries.items() for fold in s["folds_found"]]
        md += ["## Per fold", "", markdown_table(["trainer", "fold", "n", "Dice (per image)", "Dice (pooled)"],
                                                   per_fold_rows), ""]
        class_rows = [[t, c, str(a["n_cases"]), F.fmt(a["per_image"]["dice"]["mean"]),
                       F.fmt(a["pooled"]["dice"]), F.fmt(a["normal_images"]["fp_rate"])]
                      for t, s in summaries.items() for c, a in s["by_class"].items()]
        if class_rows:
            md += ["## Per class", "", markdown_table(["trainer", "class", "n", "Dice (per image)", "Dice (pooled)",
                                                         "FP rate (normal)"], class_rows), ""]

        all_rows = [{"trainer": t, **row} for t, r in scored.items() for row in r.rows]
        figures = tmp / "figures"
        figures.mkdir()
        if classification:
            drawn = [(alt, f"figures/{name}") for alt, name, ok in (
                ("ROC, malignant vs rest", "roc.png", CR.plot_roc(classifiers, classification, figures / "roc.png")),
                ("reliability diagram", "reliability.png", CR.plot_reliability(classification,
                                                                                figures / "reliability.png"))) if ok]
            md += CR.markdown_section(classification, classification_comparisons, classification_notes, drawn)
        R.plot_dice_distribution(scored, figures / "dice_per_image.png")
        md += ["## Figures", "", "![per-image Dice](figures/dice_per_image.png)", ""]
        aucs = R.plot_roc_curves(results, gt_dir, figures / "roc_pixels.png")
        if aucs:
            md += ["![pixel ROC](figures/roc_pixels.png)", ""]
        montages = {}
        for t, r in scored.items():
            if r.rows:
                stem = slugs.get(t, t)  # an ensemble's name has spaces and ':'
                montages[t] = R.plot_montage(r, gt_dir, raw_dir, figures / f"montage_{stem}.png")
                md += [f"![{t} best/median/worst](figures/montage_{stem}.png)", ""]
        report = {"dataset": dataset, "configuration": args.configuration, "plans": args.plans,
                  "folds": args.folds, "empty_truth": args.empty_truth,
                  "empty_rule": M.EMPTY_TRUTH_RULES[args.empty_truth], "hd95_convention": args.hd95,
                  "hd95_rule": M.HD95_CONVENTIONS[args.hd95],
                  "trainers": {t: summaries[t] for t in results},
                  "ensembles": {e.name: summaries[e.name] for e in ensembles},
                  "comparisons": comparisons, "pixel_auc": aucs, "montage_cases": montages}
        if classification:
            # each classifier's numbers are in its trainers/ensembles entry ("classification")
            report["classification"] = {"classifiers": list(classification), "rules": CR.RULES,
                                        "comparisons": classification_comparisons, "notes": classification_notes,
                                        "figures": {alt: path for alt, path in drawn}}
        atomic_write_json(tmp / "metrics.json", F.json_safe(report))
        atomic_write_text(tmp / "per_case.csv", F.rows_to_csv(all_rows))
        atomic_write_text(tmp / "report.md", "\n".join(md))
        tex = R.latex_table(R.RESULTS_HEADER, result_rows, caption)
        if comparisons:
            tex += "\n" + R.latex_table(R.COMPARISON_HEADER, R.comparison_table_rows(comparisons),
                                        "Paired Wilcoxon signed-rank tests (Holm-corrected) on per-image scores.")
        atomic_write_text(tmp / "table.tex", tex)
    print(markdown_table(R.RESULTS_HEADER, result_rows))
    if classification:
        print(markdown_table(CR.TABLE_HEADER, CR.table_rows(classification)))
    for t, s in summaries.items():
        if s["folds_missing"]:
            print(f"{t}: fold(s) {s['folds_missing']} missing")
    print(f"report written to {args.output}")
    return 0
