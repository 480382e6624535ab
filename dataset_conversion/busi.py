"""BUSI (Al-Dhabyani et al., Data in Brief 2020): ``Dataset_BUSI_with_GT/<class>/<class> (N).png``
with ``<class> (N)_mask.png`` and extra lesion masks ``_mask_1``, ``_mask_2`` (OR-merged).

Normal images (all-zero masks) are excluded by default, as in the segmentation papers
(647 lesion images of 780).  No patient ids exist, so folds are stratified by class only;
``--dedup`` groups BUSI's known duplicate images into one fold."""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, find_child_dir, locate_root,
                                                require_complete_mask_sets, unmatched_error)

CLASSES = ("benign", "malignant", "normal")
_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)(_mask(?:_(\d+))?)?\.png$", re.IGNORECASE)


def _is_root(folder: Path) -> bool:
    return sum(find_child_dir(folder, c) is not None for c in CLASSES) >= 2


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "BUSI (a folder with benign/, malignant/ and normal/ sub-folders, "
                                         "e.g. Dataset_BUSI_with_GT)")
    collection = Collection(cases=[], split_policy="")
    images, masks, unexpected = {}, defaultdict(list), []
    for cls in CLASSES:
        folder = find_child_dir(root, cls)
        if folder is None:
            collection.warnings.append(f"class folder {root / cls} is missing")
            continue
        for path in sorted(folder.iterdir()):
            m = _NAME.match(path.name)
            if not path.is_file() or path.name.startswith("."):
                continue
            if not m or m.group(1).lower() != cls:
                unexpected.append(path)
                continue
            key = (cls, int(m.group(2)))
            if m.group(3):
                masks[key].append((int(m.group(4) or 0), path))
            else:
                images[key] = path
    if unexpected:
        raise unmatched_error("files that do not follow BUSI's '<class> (N).png' / '<class> (N)_mask*.png' naming",
                              unexpected, "rename or remove them")
    orphans = [p for key in masks if key not in images for _, p in masks[key]]
    if orphans:
        raise unmatched_error("BUSI masks without their image", orphans, "restore the image or remove the mask")
    lonely = [images[key] for key in images if key not in masks]
    if lonely:
        raise unmatched_error("BUSI images without a '_mask.png'", lonely, "restore the mask files")
    require_complete_mask_sets(masks, images, "_mask.png", "_mask_{}.png")
    for (cls, number), path in sorted(images.items()):
        mask_paths = [p for _, p in sorted(masks[(cls, number)])]
        collection.cases.append(Case(case_id=f"busi_{cls}_{number:04d}", image=path, masks=mask_paths, cls=cls,
                                     extra={"source_id": f"{cls} ({number})"}))
    return collection


INFO = DatasetInfo(
    key="busi", default_id=501, default_name="BUSI", collect=collect,
    reference="Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. "
              "Data in Brief 28 (2020) 104863",
    license="CC0 (Kaggle release); cite the paper",
    description="BUSI breast ultrasound, lesion masks OR-merged (_mask, _mask_1, _mask_2).")
