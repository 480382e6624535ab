"""UDIAT Dataset B (Yap et al., IEEE JBHI 2018): ``original/NNNNNN.png`` + ``GT/NNNNNN.png``
(0/255) and ``DatasetB.xlsx`` (sheet ``Hoja1``: Image, Type, Diagnosis).  Ids are not
contiguous (1–147 and 295–310); pairing is by id, never by position.  One image per woman."""
from __future__ import annotations

import re
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, cell, files_with_suffix,
                                                find_child_dir, locate_root, read_table, require_pairs)
from bus_nnunet.errors import UserError

_ID = re.compile(r"^(\d+)$")


def _is_root(folder: Path) -> bool:
    return find_child_dir(folder, "original") is not None and find_child_dir(folder, "GT") is not None


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "UDIAT Dataset B (a folder with original/ and GT/)")
    collection = Collection(cases=[])
    images = {int(p.stem): p for p in files_with_suffix(find_child_dir(root, "original"), [".png"]) if _ID.match(p.stem)}
    masks = {int(p.stem): p for p in files_with_suffix(find_child_dir(root, "GT"), [".png"]) if _ID.match(p.stem)}
    require_pairs(images, masks, "UDIAT masks without an image", "UDIAT images without a GT mask",
                  fix_image="restore original/<id>.png", fix_mask="restore GT/<id>.png")
    meta = {}
    xlsx = next((p for p in (root / "DatasetB.xlsx", root.parent / "DatasetB.xlsx") if p.is_file()), None)
    if xlsx is None:
        found = sorted(root.glob("*.xlsx"))
        xlsx = found[0] if found else None
    if xlsx is not None:
        sheets = read_table(xlsx, sheet=None)
        table = sheets.get("Hoja1", next(iter(sheets.values())))
        if not {"Image", "Type"} <= set(table.columns):
            raise UserError(f"{xlsx} has no 'Image' and 'Type' columns (found {list(table.columns)[:6]})")
        for _, row in table.iterrows():
            if cell(row["Image"]):
                meta[int(float(cell(row["Image"])))] = row
        unlisted = sorted(set(images) - set(meta))
        if unlisted:
            collection.warnings.append(f"{len(unlisted)} images are not in {xlsx.name} (no class), e.g. {unlisted[:3]}")
    else:
        collection.warnings.append("no DatasetB.xlsx found: classes left empty (folds stratified without class)")
    for number in sorted(images):
        row = meta.get(number)
        cls = cell(row["Type"]).lower() if row is not None else ""
        if cls and cls not in ("benign", "malignant"):
            raise UserError(f"{xlsx}: image {number} has Type {cls!r}, expected Benign or Malignant")
        extra = {"source_id": f"{number:06d}"}
        if row is not None and "Diagnosis" in row.index:
            extra["diagnosis"] = cell(row["Diagnosis"])
        collection.cases.append(Case(case_id=f"udiat_{number:06d}", image=images[number], masks=[masks[number]],
                                     cls=cls, patient_id=f"udiat_{number:06d}", extra=extra))
    return collection


INFO = DatasetInfo(
    key="udiat", default_id=503, default_name="UDIAT", collect=collect, aliases=("datasetb",),
    reference="Yap MH, et al. Automated breast ultrasound lesions detection using convolutional neural networks. "
              "IEEE JBHI 22(4) (2018) 1218-1226",
    license="research licence agreement (no redistribution)",
    description="UDIAT Dataset B breast ultrasound (class from DatasetB.xlsx).")
