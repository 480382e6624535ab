"""Cross-validation of several nnU-Net trainers, scored from their out-of-fold validation
predictions: per-fold and pooled metrics, paired statistics, and the Markdown/LaTeX tables and
figures that cv-report's report (:mod:`.cross_validation_report`) is made of.

Layout read (nnU-Net's own)::

    $nnUNet_results/DatasetXXX_Name/<trainer>__<plans>__<configuration>/fold_k/validation/*.png (+ *.npz)
    $nnUNet_preprocessed/DatasetXXX_Name/gt_segmentations/*.png
    $nnUNet_raw/DatasetXXX_Name/imagesTr/<case>_0000.png   (montage images only)
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bus_nnunet.errors import UserError
from bus_nnunet.evaluation import folder as F
from bus_nnunet.evaluation import metrics as M
from bus_nnunet.evaluation import stats as S

#: metrics compared pairwise between trainers (higher is better for the overlap ones)
COMPARED_METRICS = ("dice", "iou", "hd95")
TABLE_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")


@dataclass
class TrainerResults:
    trainer: str
    folder: Path
    rows: List[Dict[str, object]] = field(default_factory=list)   # every scored case, with 'fold'
    folds_found: List[int] = field(default_factory=list)
    folds_missing: List[int] = field(default_factory=list)
    npz: Dict[str, Path] = field(default_factory=dict)            # case -> probabilities, if saved
    empty_truth: str = M.DEFAULT_EMPTY_TRUTH                      # the rule the rows were scored with
    hd95: str = M.DEFAULT_HD95                                    # and the HD95 convention


def env_folder(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise UserError(f"{name} is not set; export {name}=/path/to/{name} (nnU-Net's folder layout)")
    return Path(value)


def resolve_dataset(dataset: str) -> str:
    """``990``, ``Dataset990`` or ``Dataset990_Name`` -> ``Dataset990_Name`` (nnU-Net's lookup)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        return maybe_convert_to_dataset_name(int(dataset) if str(dataset).isdigit() else dataset)
    except RuntimeError as e:
        raise UserError(f"dataset {dataset}: {e}") from None


def _require_trained(results_root: Path, trainers: Sequence[str], plans: str, configuration: str) -> None:
    """A trainer without a model folder is a typo or the wrong plans / configuration: say which,
    with the close matches among what was trained, instead of reporting an empty trainer."""
    from bus_nnunet.errors import did_you_mean
    suffix = f"__{plans}__{configuration}"
    trained = sorted(p.name[:-len(suffix)] for p in results_root.glob(f"*{suffix}") if p.is_dir()) \
        if results_root.is_dir() else []
    for trainer in trainers:
        if (results_root / f"{trainer}{suffix}").is_dir():
            continue
        raise UserError(f"unknown trainer {trainer!r}: no {trainer}{suffix} in {results_root}; "
                        f"{did_you_mean(trainer, trained)}"
                        f"trained here with {plans} / {configuration}: {', '.join(trained) or 'none'}")


def score_validation_fold(val_dir, gt_dir, fold: int, expected: Sequence[str], *,
                          classes: Optional[Dict[str, str]] = None, progress: bool = True,
                          description: str = "evaluating", empty_truth: str = M.DEFAULT_EMPTY_TRUTH,
                          hd95: str = M.DEFAULT_HD95, allow_missing: bool = False) -> List[Dict[str, object]]:
    """The rows of one fold's validation folder (:func:`folder.evaluate_cases` of the ``expected``
    cases, each with its ``fold``): the one scoring of a trainer's and of an ensemble's
    (:mod:`.ensembles`) predictions, so both follow the same rules."""
    rows = F.evaluate_cases(val_dir, gt_dir, classes, progress=progress, description=description,
                            empty_truth=empty_truth, expected=expected, allow_missing=allow_missing, hd95=hd95)
    for r in rows:
        r["fold"] = fold
    return rows


def collect(dataset_name: str, trainers: Sequence[str], plans: str = "nnUNetPlans", configuration: str = "2d",
            folds: Sequence[int] = (0, 1, 2, 3, 4), classes: Optional[Dict[str, str]] = None,
            progress: bool = True, empty_truth: str = M.DEFAULT_EMPTY_TRUTH,
            allow_missing: bool = False, *, hd95: str = M.DEFAULT_HD95) -> Dict[str, TrainerResults]:
    """Score every trainer's validation predictions fold by fold (empty-mask rule ``empty_truth``,
    HD95 convention ``hd95``); missing folds are recorded.  A fold's validation folder
    must hold every validation case of nnU-Net's ``splits_final.json`` (``allow_missing``: the
    missing ones score as empty predictions)."""
    results_root = env_folder("nnUNet_results") / dataset_name
    preprocessed = env_folder("nnUNet_preprocessed") / dataset_name
    gt_dir = preprocessed / "gt_segmentations"
    if not gt_dir.is_dir():
        raise UserError(f"{gt_dir} not found; run nnUNetv2_plan_and_preprocess for {dataset_name} first")
    splits_file = preprocessed / "splits_final.json"
    splits = json.loads(splits_file.read_text()) if splits_file.is_file() else []
    _require_trained(results_root, trainers, plans, configuration)
    out = {}
    for trainer in trainers:
        model_dir = results_root / f"{trainer}__{plans}__{configuration}"
        res = TrainerResults(trainer, model_dir, empty_truth=empty_truth, hd95=hd95)
        for fold in folds:
            val_dir = model_dir / f"fold_{fold}" / "validation"
            predicted = F.list_segmentations(val_dir) if val_dir.is_dir() else {}
            if not predicted:
                res.folds_missing.append(fold)
                continue
            # without nnU-Net's splits (a hand-made results folder) only what was predicted is known
            expected = splits[fold]["val"] if fold < len(splits) else sorted(predicted)
            try:
                rows = score_validation_fold(val_dir, gt_dir, fold, expected, classes=classes, progress=progress,
                                             description=f"{trainer} fold {fold}", empty_truth=empty_truth,
                                             hd95=hd95, allow_missing=allow_missing)
            except UserError as e:
                raise UserError(f"{trainer} fold {fold} ({splits_file.name} validation cases): {e}; or rerun "
                                f"nnUNetv2_train ... --val to write them") from None
            res.rows += rows
            res.folds_found.append(fold)
            res.npz.update({F.case_id_of(p): p for p in val_dir.glob("*.npz")})
        out[trainer] = res
    if not any(r.folds_found for r in out.values()):
        raise UserError(f"no validation predictions under {results_root} for trainers {list(trainers)} "
                        f"({plans}, {configuration}, folds {list(folds)}); train with nnUNetv2_train first")
    return out


def trainer_summary(res: TrainerResults, n_resamples: int = 10_000) -> Dict[str, object]:
    """Per-fold aggregates, mean ± std of the fold means, the pooled (all cases) aggregate and a
    bootstrap CI of the per-image mean Dice."""
    rules = {"empty_truth": res.empty_truth, "hd95": res.hd95}
    per_fold = {}
    for fold in res.folds_found:
        per_fold[fold] = F.aggregate([r for r in res.rows if r["fold"] == fold], **rules)
    over_folds = {}
    for m in M.PER_IMAGE_METRICS + ("pooled_dice",):
        values = [s["pooled"]["dice"] if m == "pooled_dice" else s["per_image"][m]["mean"] for s in per_fold.values()]
        over_folds[m] = M.summarize(values)
    pooled = F.aggregate(res.rows, **rules) if res.rows else None
    return {"folder": str(res.folder), "folds_found": res.folds_found, "folds_missing": res.folds_missing,
            "per_fold": per_fold, "over_folds": over_folds, "all_cases": pooled,
            "by_class": F.aggregate_by_class(res.rows, **rules), "empty_truth": res.empty_truth,
            "hd95_convention": res.hd95,
            "dice_ci95": S.bootstrap_ci([r["dice"] for r in res.rows], n_resamples=n_resamples)}


def pairwise_comparisons(results: Dict[str, TrainerResults], metrics: Sequence[str] = COMPARED_METRICS,
                         n_resamples: int = 10_000) -> List[Dict[str, object]]:
    """Wilcoxon signed-rank + bootstrap CI of the difference for every trainer pair and metric on
    the cases both trainers scored; p-values Holm-corrected within each metric."""
    out = []
    names = [t for t, r in results.items() if r.rows]
    for metric in metrics:
        block = []
        for a, b in itertools.combinations(names, 2):
            sa = {r["case_id"]: r[metric] for r in results[a].rows}
            sb = {r["case_id"]: r[metric] for r in results[b].rows}
            common = sorted(set(sa) & set(sb))
            cmp = S.paired_comparison([sa[c] for c in common], [sb[c] for c in common], n_resamples=n_resamples)
            block.append({"metric": metric, "trainer_a": a, "trainer_b": b, **cmp})
        for row, p in zip(block, S.holm_correction([r["p_value"] for r in block])):
            row["p_holm"] = float(p)
        out += block
    return out


# ------------------------------------------------------------------------------------------ tables
def _mean_std(stat) -> str:
    return f"{F.fmt(stat['mean'])} ± {F.fmt(stat['std'])}"


def results_table_rows(summaries: Dict[str, Dict[str, object]]) -> List[List[str]]:
    rows = []
    for trainer, s in summaries.items():
        a = s["all_cases"]
        if a is None:
            rows.append([trainer, "0"] + ["-"] * (len(TABLE_METRICS) + 3))
            continue
        ci = s["dice_ci95"]
        cells = [trainer, f"{len(s['folds_found'])}/{len(s['folds_found']) + len(s['folds_missing'])}",
                 f"{_mean_std(s['over_folds']['dice'])}",
                 f"{F.fmt(ci['mean'])} [{F.fmt(ci['low'])}, {F.fmt(ci['high'])}]"]
        cells += [_mean_std(a["per_image"][m]) for m in TABLE_METRICS[1:]]
        cells += [F.fmt(a["pooled"]["dice"]), F.fmt(a["normal_images"]["fp_rate"])]
        rows.append(cells)
    return rows


RESULTS_HEADER = (["trainer", "folds", "Dice (folds)", "Dice (cases) [95% CI]"] +
                  [m if m in ("hd95", "assd") else m.capitalize() if m != "iou" else "IoU" for m in TABLE_METRICS[1:]]
                  + ["pooled Dice", "FP rate (normal)"])


def latex_table(header, rows, caption: str) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("±", r"$\pm$").replace("%", r"\%")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(caption)}}}",
             r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def format_p(p) -> str:
    """A p-value for a table: 4 decimals, ``<0.0001`` below that (never a misleading 0.0000),
    ``-`` when undefined."""
    if p is None or not np.isfinite(p):
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def comparison_table_rows(comparisons) -> List[List[str]]:
    return [[c["metric"], f"{c['trainer_a']} vs {c['trainer_b']}", str(c["n_pairs"]),
             f"{c['n_a_better']} / {c['n_b_better']}",
             f"{F.fmt(c['mean_difference'])} [{F.fmt(c['ci_low'])}, {F.fmt(c['ci_high'])}]",
             format_p(c["p_value"]), format_p(c["p_holm"])] for c in comparisons]


# "a > b / a < b": images on which a scores higher / lower (ties left out of the test); which of
# the two is better depends on the metric (Dice: higher, HD95: lower)
COMPARISON_HEADER = ["metric", "pair (a vs b)", "n", "a > b / a < b", "mean a-b [95% CI]", "Wilcoxon p", "Holm p"]


# ----------------------------------------------------------------------------------------- figures
def plot_dice_distribution(results: Dict[str, TrainerResults], path: Path) -> None:
    """Violin + box plot of per-image Dice per trainer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [t for t, r in results.items() if r.rows]
    data = [[r["dice"] for r in results[t].rows] for t in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 4))
    ax.violinplot(data, showextrema=False)
    ax.boxplot(data, widths=0.15)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel("per-image Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc_curves(results: Dict[str, TrainerResults], gt_dir: Path, path: Path) -> Dict[str, float]:
    """Pixel-level ROC of every trainer that saved probabilities (--npz); returns the AUCs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    refs = F.list_segmentations(gt_dir)
    aucs = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for trainer, res in results.items():
        cases = [r["case_id"] for r in res.rows if r["case_id"] in res.npz]
        if not cases:
            continue
        roc = M.pixel_roc_curve([F.read_segmentation(refs[c]) for c in cases],
                                [F.read_foreground_probability(res.npz[c]) for c in cases])
        if roc["fpr"].size:
            aucs[trainer] = roc["auc"]
            ax.plot(roc["fpr"], roc["tpr"], label=f"{trainer} (AUC {roc['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (pixels)")
    ax.set_ylabel("true-positive rate (pixels)")
    if aucs:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    if aucs:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return aucs


def find_raw_image(raw_dataset_dir: Path, case_id: str) -> Optional[Path]:
    for split in ("imagesTr", "imagesTs"):
        for p in sorted((raw_dataset_dir / split).glob(f"{case_id}_0000.*")):
            return p
    return None


def plot_montage(res: TrainerResults, gt_dir: Path, raw_dataset_dir: Path, path: Path) -> List[Dict[str, object]]:
    """Best, median and worst case by Dice (lesion cases first; ties by case id): image with the
    reference (green) and prediction (red) contours. Returns the cases shown."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bus_nnunet.image_io import read_image
    rows = [r for r in res.rows if r["n_ref"] > 0] or list(res.rows)
    rows = sorted(rows, key=lambda r: (r["dice"], r["case_id"]))
    picks = [("best", rows[-1]), ("median", rows[len(rows) // 2]), ("worst", rows[0])]
    refs = F.list_segmentations(gt_dir)
    pred_dir = res.folder
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    shown = []
    for ax, (label, row) in zip(axes, picks):
        ref = F.read_segmentation(refs[row["case_id"]]) > 0
        pred_path = F.list_segmentations(pred_dir / f"fold_{row['fold']}" / "validation").get(row["case_id"])
        pred = F.read_segmentation(pred_path) > 0 if pred_path else np.zeros(ref.shape, bool)  # --allow-missing
        image_path = find_raw_image(raw_dataset_dir, row["case_id"])
        image = read_image(image_path)[0] if image_path else np.zeros(ref.shape)  # grey, as the converters make it
        if image.shape != ref.shape:
            image = np.zeros(ref.shape)
        ax.imshow(image, cmap="gray")
        if ref.any():
            ax.contour(ref.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        if pred.any():
            ax.contour(pred.astype(float), levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(f"{label}: {row['case_id']}\nDice {row['dice']:.3f} (fold {row['fold']})", fontsize=8)
        ax.axis("off")
        shown.append({"which": label, "case_id": row["case_id"], "dice": row["dice"], "fold": row["fold"]})
    fig.suptitle(f"{res.trainer}: reference (green) vs prediction (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return shown
