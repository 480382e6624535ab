"""``bus-nnunet cv-report``'s report on the trainers' cross-validation: what it holds, how it is
made, its writer and its reader side by side (as nnU-Net keeps ``save_summary_json`` and
``load_summary_json`` together), so the keys of its ``metrics.json`` live here only; the study
summary reads reports through :func:`read_cross_validation_report`.

The report folder::

    metrics.json    CrossValidationReport.to_json(): the dataset, plans, configuration, folds and rules;
                    "trainers" and "ensembles" (name -> entry: cross_validation.trainer_summary, an ensemble's
                    members and selection, a classifier's "classification"), the paired "comparisons",
                    "pixel_auc", "montage_cases" and, with classifiers, the "classification" section
    per_case.csv    every scored case of every trainer and ensemble row (column "trainer" first)
    report.md, table.tex
    figures/        per-image Dice, pixel ROC, montages; the classifiers' ROC and reliability diagram
    ensembles/<name>/fold_k/validation   the ensemble rows' segmentations, in nnU-Net's layout
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from bus_nnunet.evaluation import folder as F
from bus_nnunet.evaluation import metrics as M

METRICS_FILE = F.METRICS_FILE


@dataclass
class CrossValidationReport:
    """One cv-report.  The fields up to ``classification`` are ``metrics.json``; ``rows``
    (per_case.csv), ``markdown`` (report.md) and ``latex`` (table.tex) are only set by
    :func:`make_cross_validation_report`, not by :func:`read_cross_validation_report`."""
    dataset: str
    configuration: str
    plans: str
    folds: List[int]
    empty_truth: str                            # metrics.EMPTY_TRUTH_RULES key the rows were scored with
    hd95: str                                   # metrics.HD95_CONVENTIONS key
    trainers: Dict[str, Dict[str, object]]      # trainer -> entry (cross_validation.trainer_summary)
    ensembles: Dict[str, Dict[str, object]]     # ensemble row -> entry (+ members, selection, ...)
    comparisons: List[Dict[str, object]]        # cross_validation.pairwise_comparisons
    pixel_auc: Dict[str, float]
    montage_cases: Dict[str, List[Dict[str, object]]]
    classification: Optional[Dict[str, object]] = None  # classifiers, rules, comparisons, notes, figures
    rows: List[Dict[str, object]] = field(default_factory=list, repr=False)
    markdown: str = field(default="", repr=False)
    latex: str = field(default="", repr=False)

    def to_json(self) -> Dict[str, object]:
        """``metrics.json``'s content (strict JSON: NaN written as null)."""
        out = {"dataset": self.dataset, "configuration": self.configuration, "plans": self.plans,
               "folds": self.folds, "empty_truth": self.empty_truth,
               "empty_rule": M.EMPTY_TRUTH_RULES[self.empty_truth], "hd95_convention": self.hd95,
               "hd95_rule": M.HD95_CONVENTIONS[self.hd95], "trainers": self.trainers,
               "ensembles": self.ensembles, "comparisons": self.comparisons, "pixel_auc": self.pixel_auc,
               "montage_cases": self.montage_cases}
        if self.classification:
            # each classifier's numbers are in its trainers/ensembles entry ("classification")
            out["classification"] = self.classification
        return F.json_safe(out)

    @classmethod
    def from_json(cls, data: Dict[str, object]) -> "CrossValidationReport":
        return cls(dataset=data["dataset"], configuration=data["configuration"], plans=data["plans"],
                   folds=list(data["folds"]), empty_truth=data["empty_truth"], hd95=data["hd95_convention"],
                   trainers=data["trainers"], ensembles=data.get("ensembles") or {},
                   comparisons=data.get("comparisons") or [], pixel_auc=data.get("pixel_auc") or {},
                   montage_cases=data.get("montage_cases") or {}, classification=data.get("classification"))

    # -- what readers ask ----------------------------------------------------------------------
    def entry(self, name: str) -> Optional[Dict[str, object]]:
        """The entry of a trainer or an ensemble row (None: not in this report)."""
        return self.trainers.get(name, self.ensembles.get(name))

    def all_cases(self, name: str) -> Optional[Dict[str, object]]:
        """:func:`folder.aggregate` over all validation cases of a trainer or ensemble row (None:
        not in the report, or no fold was scored)."""
        return (self.entry(name) or {}).get("all_cases")

    def per_image(self, name: str, metric: str) -> Optional[Dict[str, object]]:
        """The per-image summary (mean, std, ...) of ``metric`` over all validation cases."""
        return ((self.all_cases(name) or {}).get("per_image") or {}).get(metric)

    def ensemble_of(self, selection: str) -> Optional[str]:
        """The name of the ensemble row that ``--ensembles selection`` (``all``, ``best<k>``) made."""
        return next((name for name, e in self.ensembles.items() if e.get("selection") == selection), None)

    def classifiers(self) -> Dict[str, Dict[str, object]]:
        """name -> classification summary, for each trainer and ensemble row that classified."""
        return {name: entry["classification"] for name, entry in {**self.trainers, **self.ensembles}.items()
                if entry.get("classification")}

    def paired_tests(self, metric: str) -> List[Dict[str, object]]:
        """The paired comparisons (Wilcoxon, bootstrap CI, Holm) of ``metric`` between rows."""
        return [c for c in self.comparisons if c["metric"] == metric]

    def console_summary(self, output) -> str:
        """What ``cv-report`` prints when the report is written to ``output``."""
        from bus_nnunet.evaluation import classification_report as CR
        from bus_nnunet.evaluation import cross_validation as R
        from bus_nnunet.text_tables import markdown_table
        rows = {**self.trainers, **self.ensembles}
        lines = [markdown_table(R.RESULTS_HEADER, R.results_table_rows(rows))]
        if self.classification:
            lines.append(markdown_table(CR.TABLE_HEADER, CR.table_rows(self.classifiers())))
        lines += [f"{t}: fold(s) {s['folds_missing']} missing" for t, s in rows.items() if s["folds_missing"]]
        lines.append(f"report written to {output}")
        return "\n".join(lines)


def make_cross_validation_report(dataset, trainers: Sequence[str], output, *, plans: str = "nnUNetPlans",
                                 configuration: str = "2d", folds: Sequence[int] = (0, 1, 2, 3, 4), manifest=None,
                                 empty_truth: str = M.DEFAULT_EMPTY_TRUTH, hd95: str = M.DEFAULT_HD95,
                                 allow_missing: bool = False, ensembles: Sequence[str] = (),
                                 n_resamples: int = 10_000, overwrite: bool = False,
                                 progress: bool = True) -> CrossValidationReport:
    """Score the ``trainers``' validation predictions of ``dataset`` (nnU-Net's folders from
    ``nnUNet_raw`` / ``_preprocessed`` / ``_results``), add the ``ensembles`` rows and the
    classifiers' section, and write the report folder ``output`` at once (never over an input,
    an existing folder only with ``overwrite``).  Bad input (unknown trainer, stale csv, a
    selection larger than the trainers) fails before anything is written."""
    from bus_nnunet.evaluation import classification_report as CR
    from bus_nnunet.evaluation import cross_validation as R
    from bus_nnunet.evaluation import ensembles as E
    from bus_nnunet.io_utils import atomic_output_dir, check_output_free
    from bus_nnunet.manifest import case_classes_for
    from bus_nnunet.text_tables import markdown_table

    folds = list(folds)
    dataset = R.resolve_dataset(dataset)
    raw_dir = Path(R.env_folder("nnUNet_raw")) / dataset
    manifest_given = bool(manifest)
    manifest = Path(manifest) if manifest_given else raw_dir / "manifest.csv"
    gt_dir = Path(R.env_folder("nnUNet_preprocessed")) / dataset / "gt_segmentations"
    # read: montage images and manifest, references and splits, every trainer's model folder
    inputs = [raw_dir, manifest, gt_dir.parent, Path(R.env_folder("nnUNet_results")) / dataset]
    check_output_free(output, overwrite, "output folder", inputs=inputs, folder=True)
    gt_cases = F.list_segmentations(gt_dir) if gt_dir.is_dir() else {}
    classes = case_classes_for(manifest, gt_cases) if (manifest_given or manifest.is_file()) else {}
    results = R.collect(dataset, trainers, plans, configuration, folds, classes, progress=progress,
                        empty_truth=empty_truth, allow_missing=allow_missing, hd95=hd95)
    # image-level classification of the trainers that write fold_k/validation/classification.csv;
    # a stale or malformed csv fails before any output is written
    classifiers = CR.collect(results, classes, allow_missing=allow_missing)
    # a bad selection (best5 of three trainers) fails before any output is written
    chosen, ensemble_notes = E.choose_ensembles(results, ensembles)
    slugs = {e.name: e.slug for e in chosen}
    with atomic_output_dir(output, overwrite, inputs=inputs) as tmp:
        # the ensembles' segmentations are part of the report, in nnU-Net's layout
        # (ensembles/<slug>/fold_k/validation), so `bus-nnunet evaluate` and the montages read them as a trainer's
        ensemble_results = {e.name: E.score_ensemble(e, results, tmp / "ensembles" / e.slug, gt_dir=gt_dir,
                                                     classes=classes, progress=progress)
                            for e in chosen}
        # ensemble rows are scored like trainers from here on (tables, paired tests, figures)
        scored = {**results, **ensemble_results}
        summaries = {t: R.trainer_summary(r, n_resamples) for t, r in scored.items()}
        dice_by_trainer = E.mean_dice_by_trainer(results)
        for e in chosen:
            summaries[e.name].update(folder=str(Path(output) / "ensembles" / e.slug),
                                     **E.ensemble_summary_fields(e, dice_by_trainer))
        comparisons = R.pairwise_comparisons(scored, n_resamples=n_resamples)
        classification_notes = []
        for e in chosen if classifiers else ():
            cr, why = CR.ensemble(e.name, e.members, classifiers, ensemble_results[e.name].folds_found)
            if cr is None:
                classification_notes.append(why)
            else:
                classifiers[e.name] = cr
        classification = {name: CR.summarize(cr) for name, cr in classifiers.items()}
        for name, entry in classification.items():
            summaries[name]["classification"] = entry
        classification_comparisons = CR.compare(classifiers)

        caption = (f"{dataset}, {configuration}, {plans}: {len(folds)}-fold cross-validation. "
                   f"Dice (folds): mean ± std of the fold means; other metrics: mean ± std over all out-of-fold "
                   f"images; pooled Dice sums pixel counts over all images. Empty-mask rule: "
                   f"--empty-truth {empty_truth}; HD95: --hd95 {hd95}.")
        result_rows = R.results_table_rows(summaries)
        md = [f"# Cross-validation report: {dataset}", "", caption, "",
              markdown_table(R.RESULTS_HEADER, result_rows), ""]
        for t, s in summaries.items():
            if s["folds_missing"]:
                why = ("not every member has it" if t in ensemble_results else
                       f"no predictions in {s['folder']}/fold_k/validation")
                md.append(f"- **{t}: fold(s) {', '.join(map(str, s['folds_missing']))} missing** ({why})")
        md += ["", F.empty_rule_line(empty_truth) + " Undefined values are left out of their means.", "",
               F.hd95_rule_line(hd95), ""]
        if chosen:
            md += [E.describe(chosen, ensemble_notes), ""]
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

        figures = tmp / "figures"
        figures.mkdir()
        drawn = []
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
        tex = R.latex_table(R.RESULTS_HEADER, result_rows, caption)
        if comparisons:
            tex += "\n" + R.latex_table(R.COMPARISON_HEADER, R.comparison_table_rows(comparisons),
                                        "Paired Wilcoxon signed-rank tests (Holm-corrected) on per-image scores.")
        section = None
        if classification:
            section = {"classifiers": list(classification), "rules": CR.RULES,
                       "comparisons": classification_comparisons, "notes": classification_notes,
                       "figures": {alt: path for alt, path in drawn}}
        # through JSON's types (NaN -> None, fold keys -> str): the report returned is the one read back
        report = CrossValidationReport.from_json(CrossValidationReport(
            dataset=dataset, configuration=configuration, plans=plans, folds=folds, empty_truth=empty_truth,
            hd95=hd95, trainers={t: summaries[t] for t in results},
            ensembles={e.name: summaries[e.name] for e in chosen}, comparisons=comparisons, pixel_auc=aucs,
            montage_cases=montages, classification=section).to_json())
        report.rows = [{"trainer": t, **row} for t, r in scored.items() for row in r.rows]
        report.markdown, report.latex = "\n".join(md), tex
        write_cross_validation_report(report, tmp)
    return report


def write_cross_validation_report(report: CrossValidationReport, folder) -> None:
    """Write ``metrics.json``, ``per_case.csv``, ``report.md`` and ``table.tex`` into ``folder``
    (each file atomically; :func:`make_cross_validation_report` writes the whole folder at once)."""
    from bus_nnunet.io_utils import atomic_write_json, atomic_write_text
    folder = Path(folder)
    atomic_write_json(folder / METRICS_FILE, report.to_json())
    atomic_write_text(folder / "per_case.csv", F.rows_to_csv(report.rows))
    atomic_write_text(folder / "report.md", report.markdown)
    atomic_write_text(folder / "table.tex", report.latex)


def read_cross_validation_report(folder, *, missing_ok: bool = False) -> Optional[CrossValidationReport]:
    """The report ``bus-nnunet cv-report ... -o folder`` wrote (its ``metrics.json``); None when
    there is none yet and ``missing_ok``."""
    return F.read_report_json(folder, CrossValidationReport.from_json, "cv-report", missing_ok=missing_ok)
