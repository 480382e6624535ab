"""TN3K thyroid nodules (Gong et al., ISBI 2021): ``trainval-image/NNNN.jpg`` + ``trainval-mask/``
and the official test set ``test-image/`` + ``test-mask/`` (same stems, so case ids carry the
subset), JPEG masks thresholded at 128, ``tn3k-trainval-fold{0..4}.json`` (indices into the
numerically sorted trainval list) and ``label4{trainval,test}.csv`` (0 benign, 1 malignant)."""
from __future__ import annotations

import json
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, files_with_suffix, find_child_dir,
                                                locate_root, require_pairs)
from bus_nnunet.errors import UserError

_EXT = (".jpg", ".jpeg", ".png")


def _is_root(folder: Path) -> bool:
    return find_child_dir(folder, "trainval-image") is not None


def _numbered(folder: Path):
    out = {}
    for p in files_with_suffix(folder, _EXT):
        if not p.stem.isdigit():
            raise UserError(f"unexpected file {p}: TN3K files are named NNNN.jpg")
        out[int(p.stem)] = p
    return out


def _labels(path: Path):
    if not path.is_file():
        return None
    labels = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        name, _, value = line.strip().rpartition(",")
        stem = Path(name.strip()).stem
        if not stem.isdigit():
            if line_no == 1:
                continue  # header
            raise UserError(f"{path}:{line_no}: expected 'NNNN.jpg,0|1', got {line!r}")
        if value.strip() not in ("0", "1"):
            raise UserError(f"{path}:{line_no}: label {value!r} is not 0 (benign) or 1 (malignant)")
        labels[int(stem)] = "malignant" if value.strip() == "1" else "benign"
    return labels


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "TN3K (a folder with trainval-image/, trainval-mask/, test-image/, test-mask/)")
    collection = Collection(cases=[])
    for subset in ("trainval", "test"):
        image_dir, mask_dir = find_child_dir(root, f"{subset}-image"), find_child_dir(root, f"{subset}-mask")
        if image_dir is None or mask_dir is None:
            if subset == "test":
                collection.warnings.append(f"no test-image/ or test-mask/ in {root}: no official test set written")
                continue
            raise UserError(f"{root / (subset + '-mask')} not found (TN3K needs {subset}-image/ and {subset}-mask/)")
        images, masks = _numbered(image_dir), _numbered(mask_dir)
        require_pairs(images, masks, f"TN3K {subset} masks without an image", f"TN3K {subset} images without a mask")
        labels = _labels(root / f"label4{subset}.csv")
        if labels is None:
            collection.notes.append(f"no label4{subset}.csv: {subset} classes left empty")
        for n in sorted(images):
            collection.cases.append(Case(
                case_id=f"tn3k_{subset}_{n:04d}", image=images[n], masks=[masks[n]],
                cls=(labels or {}).get(n, ""), split="test" if subset == "test" else "train",
                extra={"source_id": f"{subset}/{images[n].name}"}))
    trainval = sorted(int(c.case_id.rsplit("_", 1)[1]) for c in collection.cases if c.split == "train")
    fold_files = [root / f"tn3k-trainval-fold{k}.json" for k in range(5)]
    if all(f.is_file() for f in fold_files):
        folds = []
        for f in fold_files:
            try:
                spec = json.loads(f.read_text())
                folds.append({part: [f"tn3k_trainval_{trainval[i]:04d}" for i in spec[part]] for part in ("train", "val")})
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise UserError(f"{f} is not a TN3K fold file {{'train': [...], 'val': [...]}} of indices into the "
                                f"{len(trainval)} trainval images: {e}") from e
        collection.official_folds = folds
        collection.split_policy = "official tn3k-trainval-fold{0..4}.json (val = index % 5) + official test set"
    else:
        collection.notes.append("fold JSONs missing: folds computed (stratified by class); test set still official")
    return collection


INFO = DatasetInfo(
    key="tn3k", default_id=511, default_name="TN3K", collect=collect,
    reference="Gong H, et al. Multi-task learning for thyroid nodule segmentation with thyroid region prior. "
              "ISBI 2021; Comput Biol Med 155 (2023) 106389",
    license="no dataset licence stated",
    description="TN3K thyroid nodule ultrasound (JPEG masks thresholded at 128); official test set in imagesTs.")
