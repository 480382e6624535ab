"""BUS-BRA (Gómez-Flores et al., Med Phys 2024): ``BUSBRA/Images/bus_NNNN-X.png``,
``Masks/mask_NNNN-X.png`` (1-bit), ``bus_data.csv`` (patient ``Case``, ``Pathology``, BI-RADS)
and the official patient-grouped ``5-fold-cv.csv`` / ``10-fold-cv.csv``: nnU-Net fold k-1
validates on ``kFold == k`` and trains on the rest."""
from __future__ import annotations

import re
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, cell, files_with_suffix,
                                                find_child_dir, locate_root, read_table, require_pairs)
from bus_nnunet.errors import UserError

_IMAGE = re.compile(r"^bus_(\d+-[a-z])$", re.IGNORECASE)
_MASK = re.compile(r"^mask_(\d+-[a-z])$", re.IGNORECASE)


def _is_root(folder: Path) -> bool:
    return find_child_dir(folder, "Images") is not None and find_child_dir(folder, "Masks") is not None


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "BUS-BRA (a BUSBRA folder with Images/ and Masks/)")
    collection = Collection(cases=[])
    images = {m.group(1).lower(): p for p in files_with_suffix(find_child_dir(root, "Images"), [".png"])
              if (m := _IMAGE.match(p.stem))}
    masks = {m.group(1).lower(): p for p in files_with_suffix(find_child_dir(root, "Masks"), [".png"])
             if (m := _MASK.match(p.stem))}
    require_pairs(images, masks, "BUS-BRA masks without an image", "BUS-BRA images without a mask")
    meta = {}
    data_csv = root / "bus_data.csv"
    if data_csv.is_file():
        table = read_table(data_csv)
        if not {"ID", "Case", "Pathology"} <= set(table.columns):
            raise UserError(f"{data_csv} lacks the columns ID, Case, Pathology (found {list(table.columns)})")
        meta = {cell(r["ID"]).lower(): r for _, r in table.iterrows()}
    else:
        collection.warnings.append(f"{data_csv} not found: no classes or patient ids (folds not patient-grouped)")
    ids = sorted(images)
    case_of = {k: f"busbra_{k}" for k in ids}
    for key in ids:
        row = meta.get(f"bus_{key}")
        if meta and row is None:
            raise UserError(f"{images[key]} is not listed in {data_csv}")
        patient = cell(row["Case"]) if row is not None else key.split("-")[0]
        extra = {"source_id": images[key].stem}
        if row is not None:
            for column in ("Histology", "Device", "Side", "BBOX"):
                if column in row.index:
                    extra[column.lower()] = cell(row[column])
        collection.cases.append(Case(
            case_id=case_of[key], image=images[key], masks=[masks[key]],
            cls=cell(row["Pathology"]).lower() if row is not None else "",
            patient_id=f"busbra_patient_{int(patient):04d}" if patient.isdigit() else patient,
            birads=cell(row["BIRADS"]) if row is not None and "BIRADS" in row.index else "", extra=extra))

    n_folds = options.folds
    fold_csv = root / f"{n_folds}-fold-cv.csv"
    if fold_csv.is_file():
        table = read_table(fold_csv)
        if not {"ID", "kFold"} <= set(table.columns):
            raise UserError(f"{fold_csv} lacks the columns ID and kFold")
        fold_of = {cell(r["ID"]).lower().removeprefix("bus_"): int(float(cell(r["kFold"]))) for _, r in table.iterrows()}
        unlisted = [k for k in ids if k not in fold_of]
        if unlisted:
            raise UserError(f"{len(unlisted)} images are not in {fold_csv} (e.g. bus_{unlisted[0]}); the fold file does "
                            f"not belong to these images")
        collection.official_folds = [
            {"train": [case_of[k] for k in ids if fold_of[k] != f], "val": [case_of[k] for k in ids if fold_of[k] == f]}
            for f in range(1, n_folds + 1)]
        collection.split_policy = (f"official {fold_csv.name}: nnU-Net fold k-1 validates on kFold == k "
                                   f"(patient-grouped); inner valid_k flags not used")
    else:
        collection.notes.append(f"no {fold_csv.name}: folds computed (stratified, grouped by patient)")
    return collection


INFO = DatasetInfo(
    key="busbra", default_id=506, default_name="BUSBRA", collect=collect, aliases=("bus-bra", "bus_bra"),
    reference="Gómez-Flores W, et al. BUS-BRA: A breast ultrasound dataset for assessing computer-aided "
              "diagnosis systems. Med Phys 51(4) (2024) 3110-3123",
    license="CC BY 4.0 (see LICENSE.txt of the release)",
    description="BUS-BRA breast ultrasound (1875 images, 1064 patients).")
