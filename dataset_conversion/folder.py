"""Any dataset laid out as ``<source>/images/*`` + ``<source>/masks/*``: each image's mask(s) are
found with ``--mask-pattern`` (``{stem}`` = image name without extension; glob characters allowed,
all matches OR-merged).  An optional ``--classes-csv`` (columns ``case``, ``class`` [,
``patient_id``]) adds classes and patient grouping."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, cell, files_with_suffix, read_table,
                                                require_dir, sanitize, unmatched_error)
from bus_nnunet.errors import UserError

_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class FolderOptions:
    images_dir: str = field(default="images", metadata={"help": "image sub-folder of source_dir"})
    masks_dir: str = field(default="masks", metadata={"help": "mask sub-folder of source_dir"})
    mask_pattern: str = field(default="{stem}.png", metadata={
        "help": "mask file name(s) for an image stem; glob characters allowed, all matches OR-merged, "
                "e.g. '{stem}_mask*.png'"})
    classes_csv: Optional[str] = field(default=None, metadata={
        "help": "optional CSV with columns case (image stem), class [, patient_id]"})


def collect(source: Path, options) -> Collection:
    own = options.dataset_options
    source = require_dir(source, "source")
    image_dir = require_dir(source / own.images_dir, "images", "set --images-dir")
    mask_dir = require_dir(source / own.masks_dir, "masks", "set --masks-dir")
    pattern = own.mask_pattern
    if "{stem}" not in pattern:
        raise UserError(f"--mask-pattern {pattern!r} must contain '{{stem}}'")
    classes, patients = {}, {}
    if own.classes_csv:
        csv_path = Path(own.classes_csv)
        table = read_table(csv_path)
        if not {"case", "class"} <= set(table.columns):
            raise UserError(f"{csv_path} needs the columns case,class (found {list(table.columns)})")
        for _, row in table.iterrows():
            classes[Path(cell(row["case"])).stem] = cell(row["class"]).lower()
            if "patient_id" in table.columns:
                patients[Path(cell(row["case"])).stem] = cell(row["patient_id"])
        bad = sorted({c for c in classes.values() if c not in ("benign", "malignant", "normal", "")})
        if bad:
            raise UserError(f"{csv_path}: classes must be benign/malignant/normal, found {bad}")
    prefix = sanitize(options.name).lower()
    collection = Collection(cases=[])
    used_masks, lonely = set(), []
    for image in files_with_suffix(image_dir, _EXT):
        masks = sorted(mask_dir.glob(pattern.replace("{stem}", glob_escape(image.stem))))
        if not masks:
            lonely.append(image)
            continue
        used_masks.update(masks)
        collection.cases.append(Case(case_id=f"{prefix}_{sanitize(image.stem)}", image=image, masks=masks,
                                     cls=classes.get(image.stem, ""), patient_id=patients.get(image.stem, ""),
                                     extra={"source_id": image.stem}))
    if lonely:
        raise unmatched_error(f"images without a mask matching {pattern!r} in {mask_dir}", lonely,
                              "fix --mask-pattern or add the masks")
    orphans = [p for p in files_with_suffix(mask_dir, _EXT) if p not in used_masks]
    if orphans:
        raise unmatched_error("masks that belong to no image", orphans, "fix --mask-pattern or remove them")
    if classes:
        unknown = [c.image.name for c in collection.cases if c.image.stem not in classes]
        if unknown:
            collection.warnings.append(f"{len(unknown)} images are not in the classes CSV (no class): {unknown[:3]}")
    return collection


def glob_escape(text: str) -> str:
    from glob import escape
    return escape(text)


INFO = DatasetInfo(key="folder", default_id=599, default_name="UltrasoundFolder", collect=collect, options=FolderOptions,
                   description="Generic images/ + masks/ ultrasound dataset.")
