"""BUSIS (Xian et al., Healthcare 2022): ``caseNNNN.png`` with ``caseNNNN_GT.png`` or ``.bmp``
(anywhere below the source; BUSBench arranges them as ``imgs/`` + ``GT/``) and, optionally,
``BUSIS562.csv`` (``img name, Ground Truth Name, tumor type`` B/M) or ``BUSIS.xlsx``."""
from __future__ import annotations

import re
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, cell, read_table, require_pairs)
from bus_nnunet.errors import UserError

_IMAGE = re.compile(r"^case(\d+)$", re.IGNORECASE)
_MASK = re.compile(r"^case(\d+)_GT$", re.IGNORECASE)
_EXT = (".png", ".bmp", ".jpg", ".tif", ".tiff")
_CLASS = {"b": "benign", "m": "malignant", "benign": "benign", "malignant": "malignant"}


def _labels(source: Path, collection: Collection):
    tables = sorted(list(source.rglob("BUSIS*.csv")) + list(source.rglob("BUSIS*.xlsx")))
    if not tables:
        collection.warnings.append("no BUSIS562.csv / BUSIS.xlsx found: classes left empty")
        return {}
    table = read_table(tables[0])
    columns = {c.strip().lower(): c for c in table.columns}
    name_col = next((columns[c] for c in ("img name", "image", "img_name", "name") if c in columns), None)
    type_col = next((columns[c] for c in ("tumor type", "tumor_type", "type", "class") if c in columns), None)
    if name_col is None or type_col is None:
        raise UserError(f"{tables[0]} needs an image-name and a tumor-type column (found {list(table.columns)})")
    labels = {}
    for _, row in table.iterrows():
        m = _IMAGE.match(Path(cell(row[name_col])).stem)
        value = cell(row[type_col]).lower()
        if m:
            if value not in _CLASS:
                raise UserError(f"{tables[0]}: {cell(row[name_col])} has tumor type {value!r}, expected B or M")
            labels[int(m.group(1))] = _CLASS[value]
    return labels


def collect(source: Path, options) -> Collection:
    if not Path(source).is_dir():
        raise UserError(f"source folder {source} not found")
    collection = Collection(cases=[])
    images, masks = {}, {}
    for p in sorted(Path(source).rglob("case*")):
        if not p.is_file() or p.suffix.lower() not in _EXT:
            continue
        im, mk = _IMAGE.match(p.stem), _MASK.match(p.stem)
        target = images if im else masks if mk else None
        if target is None:
            continue
        number = int((im or mk).group(1))
        if number in target:
            raise UserError(f"two files for BUSIS case {number}: {target[number]} and {p}; keep one")
        target[number] = p
    if not images:
        raise UserError(f"{source} does not look like BUSIS (no caseNNNN.png files below it)")
    if not masks:  # caseNNN.png alone is also BrEaST's naming: do not report 'missing masks' for it
        raise UserError(f"{source} does not look like BUSIS: {len(images)} caseNNNN images but no caseNNNN_GT mask "
                        f"below it (BrEaST names its masks caseNNN_tumor.png: `bus-nnunet convert breast`; "
                        f"`bus-nnunet convert --help` lists every dataset)")
    require_pairs(images, masks, "BUSIS GT masks without an image", "BUSIS images without a caseNNNN_GT mask")
    labels = _labels(Path(source), collection)
    for n in sorted(images):
        collection.cases.append(Case(case_id=f"busis_{n:04d}", image=images[n], masks=[masks[n]],
                                     cls=labels.get(n, ""), extra={"source_id": images[n].stem}))
    return collection


INFO = DatasetInfo(
    key="busis", default_id=505, default_name="BUSIS", collect=collect,
    reference="Xian M, et al. BUSIS: A Benchmark for Breast Ultrasound Image Segmentation. Healthcare 10 (2022) 729",
    license="licence agreement (no redistribution)",
    description="BUSIS breast ultrasound (562 images).")
