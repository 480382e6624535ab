"""BrEaST / TCIA Breast-Lesions-USG (Pawłowska et al., Sci Data 2024): a flat folder
``caseNNN.png`` + ``caseNNN_tumor.png`` (+ ``caseNNN_otherK.png``: other abnormal findings,
NOT the lesion, left out) and the clinical xlsx (class, BI-RADS).  One patient per case.
The 4 normal cases (no tumour mask) are left out unless ``--keep-normal`` (252 lesion cases)."""
from __future__ import annotations

import re
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, cell, locate_root, read_table,
                                                unmatched_error)
from bus_nnunet.errors import UserError

SHEET = "BrEaST-Lesions-USG clinical dat"  # Excel's 31-character truncation of the sheet name
_FILE = re.compile(r"^case(\d+)(?:_(tumor|other\d*))?\.png$", re.IGNORECASE)


def _is_root(folder: Path) -> bool:
    return any(_FILE.match(p.name) for p in folder.glob("case*.png"))


def _find_xlsx(source: Path, images_dir: Path):
    for folder in (images_dir, images_dir.parent, source):
        found = sorted(folder.glob("*.xlsx"))
        if found:
            return found[-1]  # the newest release sorts last (…Dec-15-2023 after …Sep-2023…)
    return None


def collect(source: Path, options) -> Collection:
    folder = locate_root(source, _is_root, "BrEaST (a folder with caseNNN.png and caseNNN_tumor.png files)")
    collection = Collection(cases=[], split_policy="")
    images, tumors, others, unexpected = {}, {}, {}, []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() == ".xlsx":
            continue
        m = _FILE.match(path.name)
        if not m:
            unexpected.append(path)
        elif m.group(2) is None:
            images[int(m.group(1))] = path
        elif m.group(2).lower() == "tumor":
            tumors[int(m.group(1))] = path
        else:
            others.setdefault(int(m.group(1)), []).append(path)
    if unexpected:
        raise unmatched_error("files in the BrEaST folder that are not caseNNN[_tumor|_otherK].png", unexpected,
                              "move them elsewhere")
    orphan = [p for k, p in tumors.items() if k not in images] + [p for k, ps in others.items() if k not in images
                                                                   for p in ps]
    if orphan:
        raise unmatched_error("BrEaST masks without their image", orphan, "restore the image or remove the mask")
    collection.counters["ignored_other_masks"] = sum(len(v) for v in others.values())

    xlsx = _find_xlsx(source, folder)
    meta = {}
    if xlsx is not None:
        sheets = read_table(xlsx, sheet=None)
        table = sheets.get(SHEET, next(iter(sheets.values())))
        needed = {"Image_filename", "Mask_tumor_filename", "Classification"}
        if not needed <= set(table.columns):
            raise UserError(f"{xlsx} lacks the columns {sorted(needed - set(table.columns))} of the BrEaST clinical table")
        for _, row in table.iterrows():
            name = cell(row["Image_filename"])
            m = _FILE.match(name)
            if not m:
                raise UserError(f"{xlsx}: unexpected Image_filename {name!r}")
            meta[int(m.group(1))] = row
        missing = sorted(set(meta) - set(images))
        if missing:
            raise UserError(f"{xlsx} lists {len(missing)} images that are not in {folder} "
                            f"(e.g. case{missing[0]:03d}.png); the folder is incomplete")
        not_listed = sorted(set(images) - set(meta))
        if not_listed:
            collection.warnings.append(f"{len(not_listed)} images are not in {xlsx.name} (no class): "
                                       f"{[images[k].name for k in not_listed[:3]]}")
    else:
        collection.warnings.append(f"no clinical xlsx found beside {folder}: classes and BI-RADS left empty, "
                                   f"images without a _tumor mask treated as normal")

    for number, image in sorted(images.items()):
        row = meta.get(number)
        tumor = tumors.get(number)
        cls = cell(row["Classification"]).lower() if row is not None else ("" if tumor else "normal")
        if row is not None:
            listed = cell(row["Mask_tumor_filename"]).split("&")[0].strip()
            if listed and tumor is None:
                raise UserError(f"{xlsx} names tumour mask {listed} for {image.name} but {folder / listed} is missing")
            if not listed and tumor is not None:
                collection.warnings.append(f"{tumor.name} exists although the table lists no tumour mask; used")
        if tumor is None and cls not in ("normal", ""):
            raise UserError(f"{image} is {cls} but has no {image.stem}_tumor.png mask")
        extra = {"source_id": image.stem, "other_masks_ignored": ";".join(p.name for p in others.get(number, []))}
        if row is not None:
            for column in ("Pixel_size", "Age", "Diagnosis", "Verification"):
                if column in row.index:
                    extra[column.lower()] = cell(row[column])
        collection.cases.append(Case(
            case_id=f"breast_case{number:03d}", image=image, masks=[tumor] if tumor else [], cls=cls,
            patient_id=f"case{number:03d}", birads=cell(row["BIRADS"]) if row is not None and "BIRADS" in row.index
            else "", extra=extra))
    return collection


INFO = DatasetInfo(
    key="breast", default_id=502, default_name="BrEaST", collect=collect,
    reference="Pawłowska A, et al. Curated benchmark dataset for ultrasound based breast lesion analysis. "
              "Sci Data 11 (2024) 148; TCIA Breast-Lesions-USG, doi:10.7937/9WKK-Q141",
    license="CC BY 4.0",
    description="BrEaST (Breast-Lesions-USG) breast ultrasound; label = _tumor mask only (_other findings left out).")
