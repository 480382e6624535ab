"""The conversion pipeline of ``bus-nnunet convert``: read -> group -> split -> write -> summary.

Every dataset module only *finds* its cases (:mod:`.base`); everything after lives here once:

1. :func:`read_case` reads each image and OR-merges its lesion masks (:mod:`bus_nnunet.image_io`);
2. :func:`group_cases` unions cases of one patient and, with ``--dedup``, duplicates (:mod:`.splits`);
3. :func:`split_cases` takes the official test set or a ``--test-fraction`` hold-out, then the
   official folds or stratified group folds;
4. :func:`write_dataset` writes everything into a temporary folder that replaces the dataset folder
   only when complete;
5. the summary says what was done.

Conventions of the written nnU-Net raw dataset:

* ``imagesTr/<case>_0000.png``: single-channel uint8 grey (or one RGB PNG with ``--rgb``),
* ``labelsTr/<case>.png``: single-channel uint8 with values {0, 1} (OR of all lesion masks),
* ``imagesTs``/``labelsTs`` for official (or requested) test cases,
* ``dataset.json`` (nnU-Net's ``generate_dataset_json``), ``splits_final.json``,
  ``manifest.csv`` (:mod:`bus_nnunet.manifest`) and, with ``--dedup``, ``duplicates.csv``.

:class:`Options` holds every setting of a conversion with its default and help text; the command's
arguments are derived from it (:meth:`Options.add_arguments`), as the per-dataset options are
from :meth:`.base.DatasetInfo.add_arguments`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import os
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bus_nnunet.dataset_conversion.base import Case, Collection, DatasetInfo
from bus_nnunet.dataset_conversion.splits import (DEFAULT_PHASH_DISTANCE, UnionFind, find_duplicates, holdout_test,
                                                  make_folds, pixel_sha256)
from bus_nnunet.errors import UserError
from bus_nnunet.image_io import read_image, read_mask, resize_nearest
from bus_nnunet.io_utils import OVERWRITE_HELP, sha256_of
from bus_nnunet.masks import MASK_THRESHOLD

__all__ = ["Options", "Result", "convert", "conversion_inputs", "drop_normal_cases", "read_case", "group_cases",
           "split_cases", "write_case", "write_dataset", "ProcessedCase", "Grouping", "Split"]


# --------------------------------------------------------------------------------------------
# options and result
# --------------------------------------------------------------------------------------------
def _argument(default, help: str, *flags: str, **argparse_kwargs):
    """An :class:`Options` field that is also a ``bus-nnunet convert`` argument (``--field-name``
    unless ``flags`` are given)."""
    return field(default=default, metadata={"help": help, "flags": flags, "argparse": argparse_kwargs})


@dataclass
class Options:
    """Every setting of one conversion with its default and help: the one place they live.

    ``dataset_id``, ``name`` and ``raw_root`` left at None mean the dataset's default id and name and
    ``$nnUNet_raw`` (:meth:`with_defaults`)."""
    dataset_id: Optional[int] = _argument(None, "nnU-Net dataset id (default: the dataset's own)", "--id", type=int)
    name: Optional[str] = _argument(None, "dataset name (DatasetNNN_<name>); default: the dataset's name")
    raw_root: Optional[Path] = _argument(None, "output root (default: $nnUNet_raw)", "-o", "--raw-root")
    overwrite: bool = _argument(False, OVERWRITE_HELP)
    keep_normal: bool = _argument(False, "include normal (lesion-free) cases with empty labels; by default every "
                                         "dataset is converted to its lesion cases only, as in the segmentation papers")
    rgb: bool = _argument(False, "write 3-channel RGB images (default: grey, channel 'US')")
    folds: int = _argument(5, "number of cross-validation folds when the dataset has no official folds "
                              "(BUS-BRA: 5 or 10 selects its official fold file)", type=int)
    seed: int = _argument(12345, "seed of the fold assignment (reproducible)", type=int)
    dedup: bool = _argument(False, "detect exact and near duplicates (pHash), keep each duplicate group in one "
                                   "fold, write duplicates.csv")
    dedup_distance: int = _argument(DEFAULT_PHASH_DISTANCE, "pHash Hamming distance for near duplicates", type=int)
    test_fraction: float = _argument(0.0, "hold out this fraction (stratified, grouped) as imagesTs/labelsTs when "
                                          "the dataset has no official test set", type=float)
    resize_masks: Optional[bool] = _argument(  # None: the dataset's default
        None, "resize masks whose size differs from their image (nearest neighbour; default only for STU)",
        action="store_true")
    progress: bool = _argument(True, "no progress bar", "--no-progress")
    #: the converter's own options (an instance of ``DatasetInfo.options``; its defaults when None)
    dataset_options: Optional[object] = None

    @classmethod
    def add_arguments(cls, parser, helps: Optional[Dict[str, str]] = None) -> None:
        """Add every field that has help to ``parser``, with its default; ``helps`` replaces the help
        of some fields (e.g. the default id of each dataset). A boolean is a flag that stores the
        opposite of its default (``progress`` -> ``--no-progress``)."""
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            kwargs = dict(f.metadata["argparse"])
            if isinstance(f.default, bool):  # unset flags keep the field's default (from_arguments)
                kwargs.update(action="store_false" if f.default else "store_true", default=argparse.SUPPRESS)
            else:
                kwargs.setdefault("default", f.default)
            flags = f.metadata["flags"] or ("--" + f.name.replace("_", "-"),)
            parser.add_argument(*flags, dest=f.name, help=(helps or {}).get(f.name, f.metadata["help"]), **kwargs)

    @classmethod
    def from_arguments(cls, args, **values) -> "Options":
        """Options from arguments parsed with :meth:`add_arguments` (a field's default where
        ``args`` lacks it), ``values`` added."""
        parsed = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        return cls(**{**parsed, **values})

    def with_defaults(self, info: DatasetInfo) -> "Options":
        """These options with the dataset's defaults filled in: its id, name and own options, and
        ``$nnUNet_raw`` as the output root."""
        raw_root = self.raw_root or os.environ.get("nnUNet_raw")
        if not raw_root:
            raise UserError("no output root: set nnUNet_raw or pass -o/--raw-root")
        own = self.dataset_options
        return dataclasses.replace(
            self, dataset_id=info.default_id if self.dataset_id is None else self.dataset_id,
            name=self.name or info.default_name, raw_root=Path(raw_root),
            dataset_options=info.options() if own is None and info.options is not None else own)


@dataclass
class Result:
    folder: Path
    rows: List[Dict[str, object]]
    splits: List[Dict[str, List[str]]]
    summary: str
    duplicates: List[Dict[str, object]]
    counters: Counter


# --------------------------------------------------------------------------------------------
# the conversion
# --------------------------------------------------------------------------------------------
def _relative(path: Path, source: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(source.resolve()))
    except ValueError:
        return str(path)


def _progress(iterable, total, enabled, desc):
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="case", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def drop_normal_cases(cases: List[Case], keep_normal: bool, counters: Counter) -> List[Case]:
    """The one normal-case rule of every converter: cases of class ``normal`` (no lesion) are left
    out unless ``keep_normal`` (``--keep-normal``), as the segmentation papers train and score on
    lesion cases only (e.g. BrEaST 252 of 256).  Counts them in ``counters["normal_cases"]``."""
    normal = [c for c in cases if c.cls == "normal"]
    counters["normal_cases"] = len(normal)
    return cases if keep_normal else [c for c in cases if c.cls != "normal"]


@dataclass
class ProcessedCase:
    """One case after reading: the image as written, its OR-merged 0/1 label, the sizes its masks
    were resized from, and the grey pixels (and their hash) that de-duplication compares."""
    case: Case
    image: np.ndarray
    label: np.ndarray  # uint8, values {0, 1}
    resized_from: List[str]
    pixel_hash: str
    grey: np.ndarray


@dataclass
class Grouping:
    """Which cases must share a fold: same patient or (with ``--dedup``) duplicates of each other."""
    groups: Dict[str, str]  # case id -> id of its group
    duplicates: List[Dict[str, object]]
    by_patient: Dict[str, List[str]]


@dataclass
class Split:
    """The test set, the cross-validation folds over the rest and the sentence that says how."""
    test_ids: set
    train_ids: List[str]
    folds: List[Dict[str, List[str]]]
    policy: str

    def fold_of(self) -> Dict[str, int]:
        return {c: k for k, f in enumerate(self.folds) for c in f["val"]}


def conversion_inputs(source: Path, options: Options) -> List[Path]:
    """What a conversion reads: the source folder and any file a converter option names (e.g.
    ``folder``'s ``--classes-csv``); folder options are relative to the source, so covered by it."""
    named_files = [Path(value) for value in (dataclasses.asdict(options.dataset_options).values()
                                             if dataclasses.is_dataclass(options.dataset_options) else ())
                   if isinstance(value, (str, Path)) and value and Path(value).is_file()]
    return [Path(source), *named_files]


def _output_folder(options: Options, inputs: Sequence[Path] = ()) -> Path:
    """The dataset folder ``options`` asks for, after checking the id, the name and that it is free
    (and neither is, holds nor lies inside one of ``inputs``)."""
    from bus_nnunet.io_utils import check_output_free
    if not 1 <= options.dataset_id <= 999:
        raise UserError(f"--id must be between 1 and 999 (got {options.dataset_id})")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", options.name):
        raise UserError(f"--name {options.name!r} may only contain letters, digits, '_' and '-'")
    folder = Path(options.raw_root) / f"Dataset{options.dataset_id:03d}_{options.name}"
    check_output_free(folder, options.overwrite, "dataset folder", inputs=inputs, folder=True)
    existing = [p for p in Path(options.raw_root).glob(f"Dataset{options.dataset_id:03d}_*")
                if p.is_dir() and p.name != folder.name] if Path(options.raw_root).is_dir() else []
    if existing:
        raise UserError(f"dataset id {options.dataset_id} is already used by {existing[0]}; nnU-Net needs unique "
                        f"ids: choose another --id or remove that folder")
    return folder


def _collect(info: DatasetInfo, source: Path, options: Options) -> Tuple[Collection, Counter, List[Case]]:
    """The dataset module's cases (unique ids, normal cases dropped unless kept) and its counters."""
    collection = info.collect(source, options)
    counters = Counter(collection.counters)
    cases = list(collection.cases)
    if not cases:
        raise UserError(f"no cases found in {source} for {info.key}")
    dup_ids = [cid for cid, n in Counter(c.case_id for c in cases).items() if n > 1]
    if dup_ids:
        raise UserError(f"case ids are not unique ({dup_ids[:3]}): the source holds files that map to the same name")
    return collection, counters, drop_normal_cases(cases, options.keep_normal, counters)


def read_case(case: Case, rgb: bool, resize: bool, counters: Counter, warnings: List[str]) -> ProcessedCase:
    """Phase 1 for one case: read its image and OR-merge its masks (resized only when ``resize``)."""
    image, coloured = read_image(case.image, rgb)
    h, w = image.shape[:2]
    counters["coloured_images"] += coloured
    label = np.zeros((h, w), bool)
    resized_from = []
    if case.mask_loader is not None:
        label |= case.mask_loader((w, h))
    for mask_path in case.masks:
        read = read_mask(mask_path)
        counters["masks_with_grey_values"] += read.grey_values
        m = read.mask
        if m.shape != (h, w):
            if not resize:
                raise UserError(f"mask {mask_path} is {m.shape[1]}x{m.shape[0]} but its image {case.image} is "
                                f"{w}x{h}; pass --resize-masks to resize masks to their image "
                                f"(nearest neighbour) if that is right for this dataset")
            resized_from.append(f"{m.shape[1]}x{m.shape[0]}")
            m = resize_nearest(m, (w, h))
        label |= m  # logical OR: overlapping masks never overflow
    counters["resized_masks"] += bool(resized_from)
    counters["merged_masks"] += len(case.masks) > 1
    if not label.any():
        counters["empty_labels"] += 1
        if case.cls and case.cls != "normal":
            warnings.append(f"{case.case_id} ({case.image.name}) is {case.cls} but its mask is empty")
    grey = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
    return ProcessedCase(case, image, label.astype(np.uint8), resized_from, pixel_sha256(grey), grey)


def group_cases(processed: List[ProcessedCase], options: Options, counters: Counter) -> Grouping:
    """Phase 2: union cases of one patient and (with ``--dedup``) exact or near duplicates."""
    case_ids = [p.case.case_id for p in processed]
    duplicates = []
    if options.dedup:
        import imagehash
        phashes = [np.asarray(imagehash.phash(Image.fromarray(p.grey)).hash, np.uint8).ravel() for p in processed]
        duplicates = find_duplicates(case_ids, [p.pixel_hash for p in processed], phashes, options.dedup_distance)
        counters["dedup_checked"] = 1
    groups_uf = UnionFind(case_ids)
    by_patient = defaultdict(list)
    for p in processed:
        if p.case.patient_id:
            by_patient[p.case.patient_id].append(p.case.case_id)
    for members in by_patient.values():
        for other in members[1:]:
            groups_uf.union(members[0], other)
    for pair in duplicates:
        groups_uf.union(pair["case_a"], pair["case_b"])
    return Grouping({cid: groups_uf.find(cid) for cid in case_ids}, duplicates, dict(by_patient))


def _test_ids(info: DatasetInfo, processed: List[ProcessedCase], grouping: Grouping, options: Options,
              warnings: List[str]) -> set:
    """The official test set, or a ``--test-fraction`` hold-out where the dataset has none."""
    test_ids = {p.case.case_id for p in processed if p.case.split == "test"}
    if options.test_fraction:
        if test_ids:
            raise UserError(f"{info.key} has an official test set ({len(test_ids)} cases); --test-fraction "
                            f"would mix it up: drop the option")
        test_ids = set(holdout_test([p.case for p in processed], options.test_fraction, grouping.groups,
                                    options.seed))
    if test_ids and grouping.duplicates:
        crossing = [d for d in grouping.duplicates if (d["case_a"] in test_ids) != (d["case_b"] in test_ids)]
        if crossing:
            warnings.append(f"{len(crossing)} duplicate pairs cross the train/test boundary of the "
                            f"official test set (listed in duplicates.csv)")
    return test_ids


def _official_folds(collection: Collection, train_ids: List[str], duplicates) -> List[Dict[str, List[str]]]:
    """The dataset's own folds restricted to ``train_ids``, with warnings for what they leave out or split."""
    keep = set(train_ids)
    folds = [{"train": sorted(c for c in f["train"] if c in keep), "val": sorted(c for c in f["val"] if c in keep)}
             for f in collection.official_folds]
    missing = keep - {c for f in folds for c in f["val"]}
    if missing:
        collection.warnings.append(f"{len(missing)} training cases are in no official validation fold "
                                   f"(e.g. {sorted(missing)[:3]})")
    if duplicates:
        fold_of = {c: k for k, f in enumerate(folds) for c in f["val"]}
        crossing = [d for d in duplicates if d["case_a"] in fold_of and d["case_b"] in fold_of
                    and fold_of[d["case_a"]] != fold_of[d["case_b"]]]
        if crossing:
            collection.warnings.append(f"{len(crossing)} duplicate pairs fall in different official folds "
                                       f"(official folds kept; see duplicates.csv)")
    return folds


def split_cases(info: DatasetInfo, processed: List[ProcessedCase], grouping: Grouping, collection: Collection,
                options: Options) -> Split:
    """Phase 3: the test set, then the official folds or stratified group folds, and the policy text."""
    test_ids = _test_ids(info, processed, grouping, options, collection.warnings)
    train_ids = [p.case.case_id for p in processed if p.case.case_id not in test_ids]
    if collection.official_folds:
        return Split(test_ids, train_ids, _official_folds(collection, train_ids, grouping.duplicates),
                     collection.split_policy)
    cls_of = {p.case.case_id: p.case.cls or "none" for p in processed}
    folds = make_folds(train_ids, [cls_of[c] for c in train_ids], [grouping.groups[c] for c in train_ids],
                       options.folds, options.seed)
    grouped_by = "patient" if grouping.by_patient else ""
    grouped_by += (" and duplicate group" if grouped_by else "duplicate group") if grouping.duplicates else ""
    by_class = "by class" if any(cls_of[c] != "none" for c in train_ids) else "(no classes)"
    policy = (f"{options.folds}-fold StratifiedGroupKFold {by_class}"
              f"{', grouped by ' + grouped_by if grouped_by else ''}, seed {options.seed}")
    return Split(test_ids, train_ids, folds, policy)


def write_case(folder: Path, p: ProcessedCase, split: str, source: Path, cv_fold, duplicate_group) -> Dict[str, object]:
    """Phase 4 for one case: its image and label PNGs under ``folder``; returns its manifest row."""
    case, image, label = p.case, p.image, p.label
    suffix = "Ts" if split == "test" else "Tr"
    # fast zlib level: PNG encoding otherwise dominates the conversion time (lossless either way)
    Image.fromarray(image).save(folder / f"images{suffix}" / f"{case.case_id}_0000.png", compress_level=1)
    Image.fromarray(label).save(folder / f"labels{suffix}" / f"{case.case_id}.png", compress_level=1)
    row = {"case_id": case.case_id, "split": split, "class": case.cls,
           "source_image": _relative(case.image, source),
           "source_masks": ";".join(_relative(m, source) for m in case.masks),
           "patient_id": case.patient_id, "birads": case.birads,
           "height": image.shape[0], "width": image.shape[1], "sha256": sha256_of(case.image),
           "n_masks": len(case.masks), "mask_resized_from": ";".join(p.resized_from),
           "lesion_pixels": int(label.sum()), "cv_fold": cv_fold, "duplicate_group": duplicate_group}
    row.update(case.extra)
    return row


def write_dataset(folder: Path, info: DatasetInfo, source: Path, options: Options, processed: List[ProcessedCase],
                  grouping: Grouping, split: Split, collection: Collection) -> List[Dict[str, object]]:
    """Phase 4: every case, dataset.json, splits_final.json, manifest.csv (and duplicates.csv), all
    into a temporary folder that replaces ``folder`` only when complete (and carries the marker
    that lets a later ``--overwrite`` replace it); returns the manifest rows."""
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_json, atomic_write_text
    from bus_nnunet.manifest import write_manifest
    in_duplicate = {cid for pair in grouping.duplicates for cid in (pair["case_a"], pair["case_b"])}
    fold_of = split.fold_of()
    rows = []
    with atomic_output_dir(folder, overwrite=options.overwrite, what="dataset folder",
                           inputs=conversion_inputs(source, options)) as tmp:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if split.test_ids else ()):
            (tmp / sub).mkdir()
        for p in _progress(processed, len(processed), options.progress, f"writing {folder.name}"):
            cid = p.case.case_id
            rows.append(write_case(tmp, p, "test" if cid in split.test_ids else "train", source,
                                   fold_of.get(cid, ""), grouping.groups[cid] if cid in in_duplicate else ""))
        _write_dataset_json(tmp, info, options, len(split.train_ids), split.policy, collection)
        atomic_write_json(tmp / "splits_final.json", split.folds)
        write_manifest(tmp / "manifest.csv", rows)
        if options.dedup:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, ["case_a", "case_b", "kind", "phash_distance"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(grouping.duplicates)
            atomic_write_text(tmp / "duplicates.csv", buf.getvalue())
    return rows


def convert(info: DatasetInfo, source: Path, options: Options) -> Result:
    """Convert ``source`` with dataset module ``info`` into ``raw_root/DatasetNNN_Name``: read every
    case (pixels are needed for de-duplication before splitting), group them, split, write."""
    options = options.with_defaults(info)
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source folder {source} not found (or not a folder)")
    folder = _output_folder(options, conversion_inputs(source, options))
    collection, counters, cases = _collect(info, source, options)
    resize = info.allow_mask_resize if options.resize_masks is None else options.resize_masks
    processed = [read_case(case, options.rgb, resize, counters, collection.warnings)
                 for case in _progress(cases, len(cases), options.progress, f"reading {info.key}")]
    grouping = group_cases(processed, options, counters)
    split = split_cases(info, processed, grouping, collection, options)
    rows = write_dataset(folder, info, source, options, processed, grouping, split, collection)
    summary = _summary(info, folder, rows, split.folds, counters, grouping.duplicates, split.policy, collection,
                       options.keep_normal)
    return Result(folder, rows, split.folds, summary, grouping.duplicates, counters)


def _write_dataset_json(folder: Path, info: DatasetInfo, options: Options, n_train: int, split_policy: str,
                        collection: Collection) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    channels = {"0": "R", "1": "G", "2": "B"} if options.rgb else {"0": "US"}
    generate_dataset_json(
        str(folder), channel_names=channels, labels={"background": 0, info.label_name: 1},
        num_training_cases=n_train, file_ending=".png", dataset_name=f"Dataset{options.dataset_id:03d}_{options.name}",
        reference=info.reference or None, license=info.license or "see the dataset's original release",
        description=(f"{info.description} Converted by bus-nnunet convert {info.key}; splits: {split_policy}; "
                     f"see manifest.csv for the source files of every case."),
        converted_by="bus-nnunet convert", overwrite_image_reader_writer="NaturalImage2DIO")


def _summary(info, folder, rows, splits, counters, duplicates, split_policy, collection, keep_normal) -> str:
    per = Counter((r["split"], r["class"] or "unlabelled") for r in rows)
    classes = sorted({c for _, c in per})
    lines = [f"converted {info.key}: {len(rows)} cases -> {folder}"]
    for split in ("train", "test"):
        if any(s == split for s, _ in per):
            detail = ", ".join(f"{c} {per[(split, c)]}" for c in classes if per[(split, c)])
            lines.append(f"  {split:5s}: {sum(n for (s, _), n in per.items() if s == split)} ({detail})")
    lines.append(f"  splits_final.json: {len(splits)} folds ({split_policy}); "
                 f"val sizes {[len(f['val']) for f in splits]}")
    lines.append(f"  merged masks (cases with >1 lesion mask, OR-merged): {counters['merged_masks']}")
    lines.append(f"  resized masks (nearest neighbour to the image size): {counters['resized_masks']}")
    if counters["masks_with_grey_values"]:
        lines.append(f"  masks with grey values, thresholded at >= {MASK_THRESHOLD}: {counters['masks_with_grey_values']}")
    if counters["coloured_images"]:
        lines.append(f"  images with unequal colour channels (overlays) converted to grey: "
                     f"{counters['coloured_images']}")
    n_normal = counters["normal_cases"]
    if keep_normal:
        normal = f"{n_normal} normal cases kept (--keep-normal)"
    else:
        normal = (f"{n_normal} normal cases left out (lesion cases only; --keep-normal includes them)"
                  if n_normal else "no normal cases")
    lines.append(f"  empty labels (no lesion): {counters['empty_labels']}; {normal}")
    for key, text in (("ignored_other_masks", "'_other' masks (not the lesion) left out"),):
        if counters[key]:
            lines.append(f"  {text}: {counters[key]}")
    if counters["dedup_checked"] and not duplicates:
        lines.append("  duplicates: none found (exact pixels or pHash distance within the threshold)")
    if duplicates:
        n_exact = sum(d["kind"] == "exact" for d in duplicates)
        lines.append(f"  duplicates: {n_exact} exact and {len(duplicates) - n_exact} near pairs, kept in the same "
                     f"fold (duplicates.csv)")
    lines += [f"  note: {n}" for n in collection.notes]
    lines += [f"  warning: {w}" for w in collection.warnings[:20]]
    if len(collection.warnings) > 20:
        lines.append(f"  warning: ... {len(collection.warnings) - 20} more")
    lines.append(f"  next: nnUNetv2_plan_and_preprocess -d {folder.name[7:10]} -c 2d --verify_dataset_integrity "
                 f"(it copies splits_final.json to $nnUNet_preprocessed/{folder.name}/, so training uses these folds)")
    return "\n".join(lines)
