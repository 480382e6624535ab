"""The study's summary that ``bus-nnunet study report`` writes: ``summary.md``, one
self-contained ``summary.html`` (figures inlined, no external assets) and ``summary.json``.

Built from what the stages left: each dataset x plans ``cv-report`` (read through
:func:`bus_nnunet.evaluation.cross_validation_report.read_cross_validation_report`; its
``per_case.csv`` and Dice-distribution figure), the external-validation jobs' scores, nnU-Net's ``inference_information.json`` from
``nnUNetv2_find_best_configuration`` (the ensemble's score) and the learning curves nnU-Net logs
in every checkpoint.
"""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from bus_nnunet.text_tables import markdown_table
from bus_nnunet.study import jobs as J
from bus_nnunet.study.config import Study

METRICS = (("dice", "Dice"), ("iou", "IoU"), ("hd95", "HD95 (px)"))
#: the external-validation heatmap's colours (mean Dice 0..1)
EXTERNAL_CMAP = "viridis"
LOWER_IS_BETTER = {"hd95"}


def _mean_std(stat) -> str:
    if not stat or stat.get("mean") is None or not np.isfinite(stat["mean"]):
        return "–"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def collect(study: Study, layout: J.Layout) -> Dict[str, object]:
    """Per dataset: the cv-report of each plans (:class:`CrossValidationReport`), the ensemble
    result and the fold states."""
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    datasets = []
    for ds in (d for d in study.datasets if d.train):  # test-only datasets have no cross-validation
        entry = {"id": ds.id, "name": layout.dataset_name(ds.id) or f"Dataset{ds.id:03d}", "plans": {},
                 "ensemble": None}
        for plans in map(study.trained_plans, study.plans):
            report = read_cross_validation_report(layout.cv_report(ds.id, plans), missing_ok=True)
            if report is not None:
                entry["plans"][plans] = report
        info = layout.results / entry["name"] / "inference_information.json"
        if info.is_file():
            entry["ensemble"] = json.loads(info.read_text())
        datasets.append(entry)
    return {"datasets": datasets}


def results_rows(study: Study, entry) -> List[Dict[str, object]]:
    """One row per plans x trainer: mean ± std over all folds' validation cases."""
    rows = []
    for plans, report in entry["plans"].items():
        for trainer in study.trainers:
            all_cases = report.all_cases(trainer)
            if not all_cases:
                rows.append({"plans": plans, "trainer": trainer, "n": 0})
                continue
            rows.append({"plans": plans, "trainer": trainer, "n": all_cases["n_cases"],
                         "folds": report.trainers[trainer]["folds_found"],
                         **{m: report.per_image(trainer, m) for m, _ in METRICS}})
        # cv-report's ensemble rows (--ensembles), scored on the same validation cases as the trainers
        for name, summary in report.ensembles.items():
            if report.all_cases(name):
                rows.append({"plans": plans, "trainer": name, "n": report.all_cases(name)["n_cases"],
                             "folds": summary["folds_found"], "folder": summary.get("folder"),
                             **{m: report.per_image(name, m) for m, _ in METRICS}})
    return rows


def best_row(rows) -> Optional[Dict[str, object]]:
    scored = [r for r in rows if r.get("dice") and np.isfinite(r["dice"]["mean"])]
    return max(scored, key=lambda r: r["dice"]["mean"]) if scored else None


def baseline_tests(study: Study, report) -> List[Dict[str, object]]:
    """cv-report's paired Dice tests of each trainer against the study's baseline."""
    base = study.baseline_trainer
    out = []
    for c in report.paired_tests("dice"):
        if base not in (c["trainer_a"], c["trainer_b"]):
            continue
        other = c["trainer_b"] if c["trainer_a"] == base else c["trainer_a"]
        sign = 1 if c["trainer_a"] == other else -1  # differences are a - b
        diff = c.get("mean_difference")
        out.append({"trainer": other, "difference": None if diff is None else sign * diff,
                    "p_holm": c.get("p_holm"), "n": c.get("n_pairs")})
    return out


def classification_section(cv_report: Path, report, plans: str) -> Tuple[List[str], List[Path]]:
    """cv-report's classification results (trainers that write validation/classification.csv):
    the AUC table with DeLong CIs, the paired DeLong tests, and its ROC and reliability figures."""
    from bus_nnunet.evaluation import classification_report as CR
    section = report.classification
    if not section:
        return [], []
    summaries = report.classifiers()
    lines = [f"Classification, malignant vs rest ({plans}; out-of-fold p_malignant; AUC with DeLong's 95% CI; "
             f"@Youden: threshold chosen on the other folds' cases; ECE: {CR.N_BINS} equal-width bins):", "",
             markdown_table(CR.TABLE_HEADER, CR.table_rows(summaries)), ""]
    if section.get("comparisons"):
        lines += [f"Paired AUC comparisons ({plans}; DeLong, Holm-corrected):", "",
                  markdown_table(CR.COMPARISON_HEADER, CR.comparison_rows(section["comparisons"])), ""]
    figs = [cv_report / path for path in (section.get("figures") or {}).values() if (cv_report / path).is_file()]
    return lines, figs


def ensemble_summary(info) -> Optional[str]:
    """nnU-Net's choice and its cross-validation Dice, from ``inference_information.json``."""
    if not info:
        return None
    best = info.get("best_model_or_ensemble", {})
    chosen = best.get("selected_model_or_models", [])
    names = " + ".join(f"{m.get('trainer')} ({m.get('plans_identifier')})" for m in chosen) or "?"
    text = f"{'ensemble' if len(chosen) > 1 else 'single model'} {names}"
    pre, post = best.get("result_on_crossval_pre_pp"), best.get("result_on_crossval_post_pp")
    if isinstance(pre, (int, float)):
        text += f"; nnU-Net's cross-validation Dice {pre:.3f}"
        if isinstance(post, (int, float)):
            text += f" ({post:.3f} with its postprocessing)"
    return text


# -- figures ---------------------------------------------------------------------------------------
def plot_learning_curves(study: Study, layout: J.Layout, dataset_id: int, plans: str, path: Path) -> bool:
    """nnU-Net's logged pseudo-Dice (EMA) and losses per epoch, mean over folds, per trainer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    curves = {}
    for trainer in study.trainers:
        per_fold = []
        for fold in study.folds:
            folder = layout.fold_folder(dataset_id, trainer, plans, fold)
            ckpt = next((folder / c for c in ("checkpoint_final.pth", "checkpoint_latest.pth")
                         if folder and (folder / c).is_file()), None)
            if ckpt is None:
                continue
            logging = torch.load(ckpt, map_location="cpu", weights_only=False).get("logging", {})
            if logging.get("ema_fg_dice"):
                per_fold.append({k: np.asarray(logging.get(k, []), float)
                                 for k in ("ema_fg_dice", "train_losses", "val_losses")})
        if per_fold:
            n = min(len(f["ema_fg_dice"]) for f in per_fold)
            curves[trainer] = {k: np.mean([f[k][:n] for f in per_fold], 0) for k in per_fold[0]}
    if not curves:
        return False
    fig, (ax_dice, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for trainer, c in curves.items():
        epochs = np.arange(1, len(c["ema_fg_dice"]) + 1)
        ax_dice.plot(epochs, c["ema_fg_dice"], ".-", label=trainer)
        line, = ax_loss.plot(epochs, c["train_losses"], ".-", label=f"{trainer} train")
        ax_loss.plot(epochs, c["val_losses"], ".--", color=line.get_color())
    ax_dice.set(xlabel="epoch", ylabel="pseudo-Dice (EMA)", title="validation pseudo-Dice, mean over folds")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="train (solid) / validation (dashed) loss")
    ax_dice.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_worst_cases(layout: J.Layout, dataset_id: int, plans: str, trainer: str, n: int, path: Path,
                     folder: Optional[str] = None) -> List[str]:
    """The ``n`` lowest-Dice validation cases of ``trainer`` (an ensemble row: its cv-report
    ``folder``): image / reference / prediction."""
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.evaluation.cross_validation import find_raw_image
    per_case = layout.cv_report(dataset_id, plans) / "per_case.csv"
    name = layout.dataset_name(dataset_id)
    rows = [r for r in csv.DictReader(open(per_case)) if r["trainer"] == trainer]
    rows = sorted(rows, key=lambda r: (float(r["dice"]), r["case_id"]))[:n]
    refs = F.list_segmentations(layout.preprocessed / name / "gt_segmentations") if rows else {}
    cases = []
    for r in rows:
        ref = F.read_segmentation(refs[r["case_id"]]) > 0
        model = Path(folder) if folder else layout.model_folder(dataset_id, trainer, plans)
        pred_file = F.list_segmentations(model / f"fold_{r['fold']}" / "validation").get(r["case_id"])
        pred = F.read_segmentation(pred_file) > 0 if pred_file else np.zeros(ref.shape, bool)
        image_file = find_raw_image(layout.raw / name, r["case_id"])
        image = F.read_segmentation(image_file) if image_file else np.zeros(ref.shape)
        cases.append((r["case_id"], image, ref, pred, float(r["dice"])))
    return draw_overlays(cases, path)


# -- external validation ---------------------------------------------------------------------------
def cv_dice(study: Study, layout: J.Layout, plans: str, model: str) -> Dict[int, Optional[dict]]:
    """In-domain Dice per trained dataset (mean ± std over all folds' validation cases, from its
    cv-report) of a trainer, or of the ensemble where cv-report scored it."""
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    from bus_nnunet.study import external_validation as EV
    out = {}
    for dataset_id in EV.trained_datasets(study):
        report = read_cross_validation_report(layout.cv_report(dataset_id, plans), missing_ok=True)
        if report is None:
            out[dataset_id] = None
            continue
        # the ensemble: cv-report's row of the same ensemble (--ensembles best<k>)
        name = report.ensemble_of(EV.ensemble_selection(study)) if model == EV.ENSEMBLE else model
        out[dataset_id] = report.per_image(name, "dice") if name else None
    return out


def external_matrix(study: Study, layout: J.Layout, plans: str, model: str) -> Dict[tuple, Optional[dict]]:
    """(train id, test id) -> Dice summary of one model: the external jobs' per-image mean ± std,
    and the in-domain cross-validation on the diagonal."""
    from bus_nnunet.study import external_validation as EV
    cells = {(d, d): s for d, s in cv_dice(study, layout, plans, model).items()}
    for train, test in EV.external_pairs(study):
        scores = EV.read_scores(layout, train, test, plans, model)
        cells[(train, test)] = scores["summary"]["per_image"]["dice"] if scores else None
    return cells


def _matrix_axes(study: Study):
    from bus_nnunet.study import external_validation as EV
    pairs = EV.external_pairs(study)
    order = [d.id for d in study.datasets]
    rows = sorted({t for t, _ in pairs}, key=order.index)
    columns = [i for i in order if i in rows or any(i == t for _, t in pairs)]
    return rows, columns


def plot_external_heatmap(study: Study, layout: J.Layout, plans: str, matrices: Dict[str, dict], path: Path) -> bool:
    """One train x test heatmap of mean Dice per model, the diagonal (cross-validation) outlined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows, columns = _matrix_axes(study)
    if not rows:
        return False
    short = {d: (layout.dataset_name(d) or f"Dataset{d:03d}") for d in columns}
    fig, axes = plt.subplots(1, len(matrices), figsize=(0.9 + (1.2 + 0.9 * len(columns)) * len(matrices),
                                                          2.1 + 0.7 * len(rows)), squeeze=False)
    for ax, (model, cells) in zip(axes[0], matrices.items()):
        values = np.full((len(rows), len(columns)), np.nan)
        for i, train in enumerate(rows):
            for j, test in enumerate(columns):
                stat = cells.get((train, test))
                if stat and stat.get("mean") is not None:
                    values[i, j] = stat["mean"]
        ax.imshow(np.ma.masked_invalid(values), cmap=EXTERNAL_CMAP, vmin=0, vmax=1)
        for i, train in enumerate(rows):
            for j, test in enumerate(columns):
                if np.isfinite(values[i, j]):
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] < 0.6 else "black")
                if train == test:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        ax.set_xticks(range(len(columns)), [short[c] for c in columns], rotation=30, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), [short[r] for r in rows], fontsize=7)
        ax.set_xlabel("tested on", fontsize=8)
        ax.set_ylabel("trained on", fontsize=8)
        ax.set_title(model, fontsize=8)
    fig.suptitle(f"mean Dice, {plans} (outlined: in-domain cross-validation)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def external_section(study: Study, layout: J.Layout, figures: Path, worst: int) -> Tuple[List[str], List[Path]]:
    """The summary's external-validation part: per plans, a train x test Dice table per model,
    the heatmap, and per tested pair the paired tests between the models and the worst cases."""
    from bus_nnunet.study import external_validation as EV
    pairs = EV.external_pairs(study)
    lines: List[str] = []
    figs: List[Path] = []
    if not pairs:
        return lines, figs
    rows, columns = _matrix_axes(study)
    names = {d: layout.dataset_name(d) or f"Dataset{d:03d}" for d in columns}
    models = EV.external_models(study)
    lines += ["Models trained on one dataset, tested on another's images (its imagesTs where it has a test split, "
              "else all of them): mean ± std of per-image Dice; the diagonal (CV) is the in-domain "
              "cross-validation of the same model (all folds' validation cases, cv-report). The ensemble averages "
              f"the softmax of the {study.ensemble_best_k} trainers with the best cross-validation Dice.", ""]
    for plans in map(study.trained_plans, study.plans):
        matrices = {m: external_matrix(study, layout, plans, m) for m in models}
        for model, cells in matrices.items():
            table = []
            for train in rows:
                row = [names[train]]
                for test in columns:
                    stat = cells.get((train, test))
                    text = _mean_std(stat) if (train, test) in cells else ""
                    row.append(f"{text} (CV)" if train == test and text else text)
                table.append(row)
            lines += [f"Train x test Dice of {model} ({plans}):", "",
                      markdown_table(["trained on \\ tested on", *[names[c] for c in columns]], table), ""]
        heatmap = figures / f"external_{plans}.png"
        if plot_external_heatmap(study, layout, plans, matrices, heatmap):
            figs.append(heatmap)
        for train, test in pairs:
            per_model = {m: EV.read_per_case(layout, train, test, plans, m) for m in models}
            comparisons = EV.paired_tests(per_model)
            if comparisons:
                lines += [f"Paired Dice tests on {names[test]} of the models trained on {names[train]} ({plans}; "
                          f"Wilcoxon, Holm-corrected):", "",
                          markdown_table(["pair (a vs b)", "images", "a > b / a < b", "Dice a - b", "p (Holm)"],
                                         [[f"{c['trainer_a']} vs {c['trainer_b']}", str(c["n_pairs"]),
                                           f"{c['n_a_better']} / {c['n_b_better']}", _signed(c["mean_difference"]),
                                           _p(c["p_holm"])] for c in comparisons]), ""]
            shown = _best_external_model(per_model)
            if shown:
                png = figures / f"external_worst_{train}_to_{test}_{plans}.png"
                cases = plot_external_worst_cases(layout, train, test, plans, shown, per_model[shown], worst, png)
                if cases:
                    lines += [f"Worst cases on {names[test]} of {shown} trained on {names[train]} ({plans}): "
                              f"{', '.join(cases)}.", ""]
                    figs.append(png)
    return lines, figs


def _best_external_model(per_model) -> Optional[str]:
    """The model whose external failures are shown: the ensemble when it was scored, else the best trainer."""
    from bus_nnunet.study import external_validation as EV
    if per_model.get(EV.ENSEMBLE):
        return EV.ENSEMBLE
    scored = {m: np.nanmean([r["dice"] for r in rows if isinstance(r.get("dice"), float)])
              for m, rows in per_model.items() if rows}
    return max(scored, key=scored.get) if scored else None


def plot_external_worst_cases(layout: J.Layout, train: int, test: int, plans: str, model: str, rows, n: int,
                              path: Path) -> List[str]:
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.study import external_validation as EV
    images = EV.external_images(layout, test)
    masks = EV.pair_folder(layout, train, test, plans, model) / "masks"
    refs = F.list_segmentations(images.labels)
    worst_rows = sorted((r for r in rows if isinstance(r.get("dice"), float)),
                        key=lambda r: (r["dice"], r["case_id"]))[:n]
    cases = []
    for r in worst_rows:
        ref = F.read_segmentation(refs[r["case_id"]]) > 0
        pred_file = masks / f"{r['case_id']}.png"
        pred = F.read_segmentation(pred_file) > 0 if pred_file.is_file() else np.zeros(ref.shape, bool)
        cases.append((r["case_id"], F.read_segmentation(images.images[r["case_id"]]), ref, pred, r["dice"]))
    return draw_overlays(cases, path)


def draw_overlays(cases, path: Path) -> List[str]:
    """One row per ``(case id, image, reference, prediction, dice)``: the image, the reference
    (green) and the prediction (red) over it; returns the case ids drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not cases:
        return []
    fig, axes = plt.subplots(len(cases), 3, figsize=(7.5, 2.5 * len(cases)), squeeze=False)
    for ax_row, (case_id, image, ref, pred, dice) in zip(axes, cases):
        image = image if image.shape[:2] == ref.shape else np.zeros(ref.shape)
        for ax, (title, mask, colour) in zip(ax_row, (("image", None, None), ("reference", ref, (0, 1, 0)),
                                                      ("prediction", pred, (1, 0, 0)))):
            ax.imshow(image, cmap="gray")
            if mask is not None and mask.any():
                overlay = np.zeros((*mask.shape, 4))
                overlay[mask] = (*colour, 0.45)
                ax.imshow(overlay)
            ax.set_title(f"{case_id} {title}" + (f" (Dice {dice:.3f})" if title == "prediction" else ""), fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [c[0] for c in cases]


# -- the pages -------------------------------------------------------------------------------------
def write_report(study: Study, layout: J.Layout, states: Dict[str, str], worst: int = 3) -> Path:
    from bus_nnunet.io_utils import atomic_write_text, atomic_write_json
    out = layout.output
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    data = collect(study, layout)
    md = [f"# Study {study.name or study.output_dir.name}", "",
          f"Trainers {', '.join(study.trainers)}; plans {', '.join(study.plans)}; folds "
          f"{', '.join(map(str, study.folds))}; configuration {study.configuration}; baseline "
          f"{study.baseline_trainer}." + (f" Schedule override: {study.schedule.overrides()}." if
                                           study.schedule.overrides() else ""), ""]
    counts = {s: list(states.values()).count(s) for s in sorted(set(states.values()))}
    md += [f"Jobs: {', '.join(f'{n} {s}' for s, n in counts.items())}.", ""]
    sections = []  # (title, markdown lines, [figure paths]) for the HTML too
    for entry in data["datasets"]:
        lines: List[str] = []
        figs: List[Path] = []
        rows = results_rows(study, entry)
        best = best_row(rows)
        if not rows:
            lines += ["No cross-validation report yet (training or cv-report not finished).", ""]
        else:
            header = ["plans", "trainer", "cases", *[label for _, label in METRICS]]
            table = []
            for r in rows:
                mark = " **(best)**" if r is best else ""
                table.append([r["plans"], f"{r['trainer']}{mark}", str(r["n"]),
                              *[_mean_std(r.get(m)) for m, _ in METRICS]])
            lines += ["Mean ± std over all folds' validation cases (per image).", "", markdown_table(header, table), ""]
        for plans, report in entry["plans"].items():
            tests = baseline_tests(study, report)
            if tests:
                lines += [f"Paired Dice against {study.baseline_trainer} ({plans}; Wilcoxon, Holm-corrected):", "",
                          markdown_table(["trainer", "Dice difference", "p (Holm)", "cases"],
                                    [[t["trainer"], _signed(t["difference"]), _p(t["p_holm"]), str(t["n"] or "")]
                                     for t in tests]), ""]
            dist = layout.cv_report(entry["id"], plans) / "figures" / "dice_per_image.png"
            if dist.is_file():
                figs.append(dist)
            cls_lines, cls_figs = classification_section(layout.cv_report(entry["id"], plans), report, plans)
            lines += cls_lines
            figs += cls_figs
            curve = figures / f"learning_{entry['id']}_{plans}.png"
            if plot_learning_curves(study, layout, entry["id"], plans, curve):
                figs.append(curve)
        ensemble = ensemble_summary(entry["ensemble"])
        lines += [f"nnUNetv2_find_best_configuration: {ensemble}" if ensemble else
                  "nnUNetv2_find_best_configuration: not run yet.", ""]
        if best:
            worst_png = figures / f"worst_{entry['id']}.png"
            cases = plot_worst_cases(layout, entry["id"], best["plans"], best["trainer"], worst, worst_png,
                                     best.get("folder"))
            if cases:
                lines += [f"Worst cases of the best model ({best['trainer']}, {best['plans']}): {', '.join(cases)}.",
                          ""]
                figs.append(worst_png)
        for f in figs:
            lines += [f"![{f.stem}]({_relative(f, out)})", ""]
        sections.append((entry["name"], lines, figs))
        md += [f"## {entry['name']}", "", *lines]
    lines, figs = external_section(study, layout, figures, worst)
    if lines:
        lines += [f"![{f.stem}]({_relative(f, out)})" for f in figs] + [""]
        sections.append(("External validation", lines, figs))
        md += ["## External validation", "", *lines]
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    atomic_write_text(out / "summary.html", _html(study, md[:5], sections))
    datasets = [{**d, "plans": {p: r.to_json() for p, r in d["plans"].items()}} for d in data["datasets"]]
    atomic_write_json(out / "summary.json", {"states": states, "datasets": datasets})
    return out / "summary.html"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _signed(value) -> str:
    return "–" if value is None else f"{value:+.3f}"


def _p(value) -> str:
    return "–" if value is None else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def _html(study: Study, intro: List[str], sections) -> str:
    """One page, inline CSS, figures as data URIs: it can be mailed or archived as one file."""
    import re
    body = []
    for line in intro:
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    for title, lines, figs in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        table: List[str] = []
        for line in [part for entry in lines for part in entry.split("\n")] + [""]:
            if line.startswith("|"):
                table.append(line)
                continue
            if table:
                body.append(_html_table(table))
                table = []
            if line and not line.startswith("!["):
                text = html.escape(line)
                text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
                body.append(f"<p>{text}</p>")
        for f in figs:
            data = base64.b64encode(f.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(f.stem)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(f.stem)}</figcaption></figure>")
    css = ("body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}th{background:#eee}"
           "tr.best td{background:#e8f5e9;font-weight:bold}img{max-width:100%}figcaption{color:#666;font-size:.8em}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study "
            f"{html.escape(study.name or study.output_dir.name)}</title><style>{css}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def _html_table(lines: List[str]) -> str:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, rows = cells[0], [r for r in cells[2:]]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        best = any("**(best)**" in c for c in r)
        r = [html.escape(c.replace(" **(best)**", " (best)")) for c in r]
        out.append(f"<tr{' class=best' if best else ''}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"
