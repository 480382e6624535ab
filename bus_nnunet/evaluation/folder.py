"""Evaluate a folder of nnU-Net predictions against a folder of references (shared by
``bus-nnunet evaluate`` and ``bus-nnunet cv-report``)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bus_nnunet.errors import UserError
from bus_nnunet.evaluation import metrics as M

SEG_SUFFIXES = (".png", ".nii.gz", ".nii", ".bmp", ".tif", ".tiff")


def case_id_of(path: Path) -> str:
    """File name without its segmentation suffix (``case_001.png`` -> ``case_001``)."""
    name = path.name
    for suffix in SEG_SUFFIXES + (".npz",):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def list_segmentations(folder) -> Dict[str, Path]:
    """``case_id -> path`` of the segmentation files in ``folder``.

    Several files for one case (``c1.png`` and ``c1.nii.gz``) are a UserError naming them: which one
    is meant cannot be guessed, and scoring the one that sorts first changes the result silently."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist")
    found: Dict[str, List[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(SEG_SUFFIXES) and not p.name.startswith("."):
            found.setdefault(case_id_of(p), []).append(p)
    clashes = [paths for paths in found.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(p.name for p in paths) for paths in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise UserError(f"{len(clashes)} case(s) in {folder} have more than one segmentation file: {shown}{more}; "
                        f"keep one file per case (move the others out of the folder)")
    return {case_id: paths[0] for case_id, paths in found.items()}


def read_segmentation(path) -> np.ndarray:
    """A label map from PNG/BMP/TIFF (PIL) or NIfTI (nibabel; singleton axes squeezed).

    Colour and alpha channels of an image become one plane by the converters' rule
    (:func:`bus_nnunet.masks.mask_plane`: colour channels max-combined), so a mask drawn in green
    reads as drawn; a palette image gives its indices (the labels)."""
    path = Path(path)
    if path.name.endswith((".nii.gz", ".nii")):
        import nibabel
        return np.squeeze(np.asarray(nibabel.load(str(path)).dataobj))
    from PIL import Image
    from bus_nnunet.masks import mask_plane
    with Image.open(path) as im:
        return np.squeeze(mask_plane(im))


def read_foreground_probability(path) -> np.ndarray:
    """Foreground probability (1 - background) from an nnU-Net ``--save_probabilities`` ``.npz``.

    nnU-Net stores ``probabilities`` with shape (C, 1, H, W) for 2D data (channel 0 background).
    """
    with np.load(path) as data:
        if "probabilities" not in data:
            raise UserError(f"{path} has no 'probabilities' array (keys: {list(data.keys())}); write it with "
                            f"nnUNetv2_predict --save_probabilities or nnUNetv2_train --npz")
        probs = np.asarray(data["probabilities"], dtype=np.float32)
    if probs.ndim == 4:
        probs = probs[:, 0] if probs.shape[1] == 1 else np.squeeze(probs, axis=1)
    return 1.0 - probs[0]


def read_class_probabilities(path) -> np.ndarray:
    """All class probabilities (C, H, W) of an nnU-Net ``.npz`` file."""
    with np.load(path) as data:
        probs = np.asarray(data["probabilities"], dtype=np.float32)
    return probs[:, 0] if probs.ndim == 4 else probs


def evaluate_cases(pred_dir, gt_dir, classes: Optional[Dict[str, str]] = None, label: Optional[int] = None,
                   progress: bool = True, description: str = "evaluating",
                   empty_truth: str = M.DEFAULT_EMPTY_TRUTH, expected: Optional[Sequence[str]] = None,
                   allow_missing: bool = False, *, hd95: str = M.DEFAULT_HD95) -> List[Dict[str, object]]:
    """One row per expected case: ``case_id, class, prediction_missing`` and
    :func:`metrics.segmentation_metrics` under the empty-mask rule ``empty_truth``
    (:data:`metrics.EMPTY_TRUTH_RULES`) and the HD95 convention ``hd95``
    (:data:`metrics.HD95_CONVENTIONS`).

    Every prediction must have a reference of the same shape (a UserError names the file).
    ``expected`` (default: every reference in ``gt_dir``) must all be predicted: a prediction run
    that stopped halfway must not read as a good score.  With ``allow_missing`` each missing
    prediction is scored as an empty prediction instead (``prediction_missing`` marks the row).
    """
    from tqdm import tqdm
    M.check_empty_truth(empty_truth)
    M.check_hd95_convention(hd95)
    preds, refs = list_segmentations(pred_dir), list_segmentations(gt_dir)
    if not preds:
        raise UserError(f"no segmentation files ({', '.join(SEG_SUFFIXES)}) in {pred_dir}")
    missing_ref = sorted(set(preds) - set(refs))
    if missing_ref:
        raise UserError(f"{len(missing_ref)} prediction(s) in {pred_dir} have no reference in {gt_dir} "
                        f"(e.g. {missing_ref[0]}); point --gt at the labelsTr / gt_segmentations folder")
    expected = sorted(refs) if expected is None else sorted(expected)
    unknown = [c for c in expected if c not in refs]
    if unknown:
        raise UserError(f"{len(unknown)} case(s) to score have no reference in {gt_dir} (e.g. {unknown[0]}); "
                        f"point --gt at this dataset's labelsTr / gt_segmentations folder")
    missing = [c for c in expected if c not in preds]
    if missing and not allow_missing:
        shown = ", ".join(missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        raise UserError(f"{len(missing)} of {len(expected)} reference case(s) have no prediction in {pred_dir}: "
                        f"{shown}; predict them, or pass --allow-missing to score each as an empty prediction")
    rows = []
    for case_id in tqdm(sorted(set(preds) | set(missing)), desc=description, disable=not progress, unit="case"):
        ref = read_segmentation(refs[case_id])
        pred = read_segmentation(preds[case_id]) if case_id in preds else np.zeros_like(ref)
        if pred.shape != ref.shape:
            raise UserError(f"{preds[case_id]} has shape {pred.shape} but its reference {refs[case_id]} has "
                            f"{ref.shape}; predictions must be in the reference's geometry")
        row = {"case_id": case_id, "class": (classes or {}).get(case_id, ""), "prediction_missing": case_id not in preds}
        row.update(M.segmentation_metrics(ref, pred, label=label, empty_truth=empty_truth,
                                          hd95=hd95))
        rows.append(row)
    return rows


def aggregate(rows: Sequence[Dict[str, object]], empty_truth: str = M.DEFAULT_EMPTY_TRUTH, *,
              hd95: str = M.DEFAULT_HD95) -> Dict[str, object]:
    """Per-image summaries (:func:`metrics.summarize`) of every metric, pooled Dice/IoU and the
    image-level false-positive rate on empty-reference (normal) cases. ``empty_truth`` and
    ``hd95`` (the HD95 convention) must be those the rows were scored with (:func:`evaluate_cases`); both are
    recorded in the result."""
    out = {"n_cases": len(rows), "empty_truth": M.check_empty_truth(empty_truth),
           "hd95_convention": M.check_hd95_convention(hd95), "per_image": {},
           "pooled": M.pooled_overlap(rows, empty_truth=empty_truth)}
    for name in M.PER_IMAGE_METRICS:
        out["per_image"][name] = M.summarize([r[name] for r in rows])
    normal = [r for r in rows if r["n_ref"] == 0]
    n_fp = sum(1 for r in normal if r["n_pred"] > 0)
    out["normal_images"] = {"n_normal": len(normal), "n_false_positive": n_fp,
                            "fp_rate": n_fp / len(normal) if normal else M.NAN,
                            "specificity": 1 - n_fp / len(normal) if normal else M.NAN}
    lesion = [r for r in rows if r["n_ref"] > 0]
    out["lesion_images"] = {"n_lesion": len(lesion),
                            "n_missed": sum(1 for r in lesion if r["tp"] == 0),
                            "detection_rate": (sum(1 for r in lesion if r["tp"] > 0) / len(lesion)
                                               if lesion else M.NAN)}
    return out


def aggregate_by_class(rows: Sequence[Dict[str, object]], empty_truth: str = M.DEFAULT_EMPTY_TRUTH, *,
                       hd95: str = M.DEFAULT_HD95) -> Dict[str, Dict[str, object]]:
    """:func:`aggregate` for each non-empty value of the rows' ``class`` column."""
    classes = sorted({r.get("class") for r in rows if r.get("class")})
    return {c: aggregate([r for r in rows if r.get("class") == c], empty_truth, hd95=hd95)
            for c in classes}


def rows_to_csv(rows: Sequence[Dict[str, object]]) -> str:
    """CSV text with the columns of the first row first (floats with 6 significant digits)."""
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def json_safe(obj):
    """Replace NaN/inf floats by None and numpy scalars/arrays by Python values (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def fmt(value, digits: int = 4) -> str:
    """A number for a table; ``-`` for NaN/None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def empty_rule_line(rule: str) -> str:
    """The report line saying which empty-mask rule produced the numbers."""
    return (f"Empty-mask rule `--empty-truth {rule}`: {M.EMPTY_TRUTH_RULES[rule]}. A missed lesion scores "
            f"Dice 0 under both rules.")


def hd95_rule_line(convention: str) -> str:
    """The report line saying which HD95 convention produced the numbers."""
    return f"HD95 convention `--hd95 {convention}`: {M.HD95_CONVENTIONS[convention]}."


def summary_markdown(title: str, summary: Dict[str, object], by_class: Dict[str, Dict[str, object]],
                     extra_sections: Sequence[str] = ()) -> str:
    """A human-readable report of :func:`aggregate` results (overall + per class)."""
    lines = [f"# {title}", "",
             "Per-image metrics are means over images (± sample std); *pooled* Dice/IoU sum the pixel "
             "counts of all images first. Undefined values (NaN) are excluded from their means; `n_nan` "
             "counts them.", "", empty_rule_line(summary["empty_truth"]), "",
             hd95_rule_line(summary["hd95_convention"]), ""]
    groups = [("all", summary)] + list(by_class.items())
    header = "| group | n | " + " | ".join(M.PER_IMAGE_METRICS) + " | pooled Dice | pooled IoU | FP rate (normal) |"
    lines += [header, "|" + "---|" * (len(M.PER_IMAGE_METRICS) + 5)]
    for name, s in groups:
        cells = []
        for m in M.PER_IMAGE_METRICS:
            st = s["per_image"][m]
            cell = f"{fmt(st['mean'])} ± {fmt(st['std'])}"
            if st["n_nan"]:
                cell += f" (n_nan={st['n_nan']})"
            cells.append(cell)
        lines.append(f"| {name} | {s['n_cases']} | " + " | ".join(cells) +
                     f" | {fmt(s['pooled']['dice'])} | {fmt(s['pooled']['iou'])} | "
                     f"{fmt(s['normal_images']['fp_rate'])} |")
    lines.append("")
    for section in extra_sections:
        lines += [section, ""]
    return "\n".join(lines)


METRICS_FILE = "metrics.json"  # what evaluate and cv-report write into their output folder


def read_report_json(folder, parse, command: str, *, missing_ok: bool = False):
    """``parse(metrics.json)`` of the report ``bus-nnunet <command> ... -o folder`` wrote; None when
    there is none yet and ``missing_ok``.  A missing or unreadable file is a UserError that says how
    to write it (again)."""
    import json
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        if missing_ok:
            return None
        raise UserError(f"{path} not found; write it with bus-nnunet {command} ... -o {folder}")
    try:
        return parse(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a bus-nnunet {command} report ({type(e).__name__}: {e}); "
                        f"write it again with bus-nnunet {command} ... -o {folder} --overwrite") from None
