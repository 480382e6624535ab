"""The per-case manifest every converter writes next to ``dataset.json`` (``manifest.csv``).

One row per case.  Columns (converters may add more; readers ignore unknown ones):

========================  =====================================================================
``case_id``               nnU-Net case identifier (file name without ``_0000.png`` / ``.png``)
``split``                 ``train`` (imagesTr) or ``test`` (imagesTs)
``class``                 ``benign`` / ``malignant`` / ``normal`` (empty if the dataset has none)
``source_image``          original image path, relative to the source folder
``source_masks``          original mask path(s), ``;``-separated
``patient_id``            where the dataset has one, else empty
``birads``                where present, else empty
``height``, ``width``     image size in pixels
``sha256``                of the original image file
========================  =====================================================================

Classifying trainers (ACSNet, the ``<Trainer>_Cls*`` variants: :func:`classification_labels`) and the
evaluation tools read the ``class`` column from here.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from bus_nnunet.errors import UserError

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ["case_id", "split", "class", "source_image", "source_masks", "patient_id", "birads",
                    "height", "width", "sha256"]
CLASS_NAMES = ("benign", "malignant", "normal")
MANIFEST_ENV = "BUS_NNUNET_MANIFEST"


def read_manifest(path) -> List[Dict[str, str]]:
    """Rows of a manifest as dicts; a UserError naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest {path} not found; convert the dataset with `bus-nnunet convert` "
                        f"or write a CSV with at least the columns case_id,class")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "case_id" not in reader.fieldnames:
            raise UserError(f"manifest {path} has no 'case_id' column (columns: {reader.fieldnames})")
        return list(reader)


def case_classes(path) -> Dict[str, str]:
    """``case_id -> class`` from a manifest (only rows with a non-empty class)."""
    rows = read_manifest(path)
    if rows and "class" not in rows[0]:
        raise UserError(f"manifest {path} has no 'class' column")
    return {r["case_id"]: r["class"].strip().lower() for r in rows if r.get("class", "").strip()}


def case_classes_for(path, case_ids) -> Dict[str, str]:
    """:func:`case_classes`, after checking that the manifest lists every one of ``case_ids``: a
    manifest of another dataset would otherwise silently drop the per-class results."""
    rows = read_manifest(path)
    unknown = sorted(set(case_ids) - {r["case_id"] for r in rows})
    if unknown:
        raise UserError(f"{len(unknown)} of {len(set(case_ids))} scored case(s) are not in manifest {path} "
                        f"(e.g. {', '.join(unknown[:3])}); pass this dataset's manifest.csv, which bus-nnunet "
                        f"convert writes next to its dataset.json")
    return case_classes(path)


def classification_labels(path, case_ids: Sequence[str]) -> Tuple[List[str], Dict[str, int]]:
    """Class names and ``case_id -> class index`` of ``case_ids`` for a classifying trainer.

    The rule every classifying trainer shares: benign = 0, malignant = 1, and normal = 2 only if
    one of ``case_ids`` is normal.  A UserError (one line) names the manifest and the cases that
    have no class, or a case with a class outside :data:`CLASS_NAMES`.
    """
    classes = case_classes(path)
    missing = [c for c in case_ids if c not in classes]
    if missing:
        which = (f"any of the {len(case_ids)}" if len(missing) == len(case_ids) else
                 f"{len(missing)} of the {len(case_ids)}")
        raise UserError(f"manifest {path} gives no class for {which} training cases: {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                        + f"; classifying trainers need {'/'.join(CLASS_NAMES)} for every training case: fill the "
                          f"'class' column or point {MANIFEST_ENV} at a manifest that has it")
    unknown = sorted({classes[c] for c in case_ids} - set(CLASS_NAMES))
    if unknown:
        case = next(c for c in case_ids if classes[c] == unknown[0])
        raise UserError(f"manifest {path}: case {case!r} has class {unknown[0]!r}; classifying trainers know "
                        f"{', '.join(CLASS_NAMES)}")
    names = list(CLASS_NAMES[:2]) + (["normal"] if any(classes[c] == "normal" for c in case_ids) else [])
    return names, {c: names.index(classes[c]) for c in case_ids}


def find_manifest(dataset_name: str, raw_root: Optional[str] = None, must_exist: bool = False) -> Path:
    """The manifest of an nnU-Net dataset: ``$BUS_NNUNET_MANIFEST`` if set, else
    ``$nnUNet_raw/<dataset_name>/manifest.csv``.  ``must_exist``: a missing file is a UserError naming
    the path, where it came from, and the fixes."""
    override = os.environ.get(MANIFEST_ENV)
    if override:
        path = Path(override)
        if must_exist and not path.is_file():
            raise UserError(f"manifest {path} (${MANIFEST_ENV}) not found; fix: point {MANIFEST_ENV} at the "
                            f"dataset's manifest.csv, or unset it to use $nnUNet_raw/{dataset_name}/{MANIFEST_NAME}")
        return path
    raw_root = raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserError(f"cannot locate the manifest of {dataset_name}: nnUNet_raw is not set "
                        f"(or set {MANIFEST_ENV}=/path/to/manifest.csv)")
    path = Path(raw_root) / dataset_name / MANIFEST_NAME
    if must_exist and not path.is_file():
        raise UserError(f"manifest {path} not found (the class of every training case is read from it); fix: "
                        f"convert the dataset with `bus-nnunet convert`, which writes it next to dataset.json, "
                        f"or set {MANIFEST_ENV}=/path/to/manifest.csv (a CSV with at least the columns "
                        f"case_id,class)")
    return path


def write_manifest(path, rows: List[Dict[str, object]]) -> None:
    """Write rows with the standard columns first, then any extra columns in first-seen order."""
    from bus_nnunet.io_utils import atomic_write_text
    import io
    extra = []
    for r in rows:
        extra += [k for k in r if k not in MANIFEST_COLUMNS and k not in extra]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS + extra, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
