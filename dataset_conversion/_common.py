"""Shared machinery of the dataset converters: every dataset module only *finds* its cases
(:class:`Case` list plus official splits); reading, binarising, merging, writing, splitting,
de-duplication, the manifest and the summary live here once.

Conventions of the written nnU-Net raw dataset:

* ``imagesTr/<case>_0000.png``: single-channel uint8 grey (or one RGB PNG with ``--rgb``),
* ``labelsTr/<case>.png``: single-channel uint8 with values {0, 1} (OR of all lesion masks),
* ``imagesTs``/``labelsTs`` for official (or requested) test cases,
* ``dataset.json`` (nnU-Net's ``generate_dataset_json``), ``splits_final.json``,
  ``manifest.csv`` (:mod:`bus_nnunet.manifest`) and, with ``--dedup``, ``duplicates.csv``.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bus_nnunet.errors import UserError
from bus_nnunet.masks import MASK_THRESHOLD, mask_plane  # 0/255 masks: >= 128 is foreground

DEFAULT_PHASH_DISTANCE = 8  # 64-bit pHash Hamming distance for near-duplicates (as used on BUSI)

Image.MAX_IMAGE_PIXELS = None  # ultrasound frames are small; avoid PIL's decompression-bomb noise


# --------------------------------------------------------------------------------------------
# what a dataset module returns
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One image and its lesion masks as found in the source folder.

    ``masks`` are OR-merged; an empty list means an empty label (normal case).  ``mask_loader``
    replaces file masks for datasets whose annotation is not an image (DDTI XML polygons): it
    gets the image size (W, H) and returns a bool array."""
    case_id: str
    image: Path
    masks: List[Path] = field(default_factory=list)
    cls: str = ""
    patient_id: str = ""
    birads: str = ""
    split: str = "train"  # "train" or "test" (official test set)
    extra: Dict[str, object] = field(default_factory=dict)
    mask_loader: Optional[Callable[[Tuple[int, int]], np.ndarray]] = None


@dataclass
class Collection:
    """Everything a dataset module found: cases, official splits and notes for the summary."""
    cases: List[Case]
    # official cross-validation folds over training case ids: [{"train": [...], "val": [...]}, ...]
    official_folds: Optional[List[Dict[str, List[str]]]] = None
    split_policy: str = ""
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)


@dataclass
class DatasetInfo:
    """Static facts of one converter; a module of ``bus_nnunet.dataset_conversion`` that defines
    ``INFO`` is a ``bus-nnunet convert`` dataset (found by itself, see that package)."""
    key: str
    default_id: int
    default_name: str
    label_name: str = "lesion"
    allow_mask_resize: bool = False
    reference: str = ""
    license: str = ""
    description: str = ""
    collect: Callable = None  # collect(source: Path, options) -> Collection
    #: other names ``bus-nnunet convert`` accepts for this dataset
    aliases: Tuple[str, ...] = ()
    #: the converter's own options: a dataclass whose fields (default, ``metadata["help"]``) become
    #: ``--field-name`` options of ``bus-nnunet convert``; ``collect`` reads them as
    #: ``options.dataset_options``
    options: Optional[type] = None

    def add_arguments(self, parser) -> None:
        """Add this converter's own options to ``parser`` in a group of their own."""
        if self.options is None:
            return
        group = parser.add_argument_group(f"{self.key} only", self.description)
        for f in dataclasses.fields(self.options):
            flag = "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):
                group.add_argument(flag, action="store_true", help=f.metadata.get("help"))
            else:
                group.add_argument(flag, default=f.default, help=f.metadata.get("help"))

    def options_from(self, args) -> Optional[object]:
        """This converter's options from parsed arguments (the defaults where ``args`` lacks one)."""
        if self.options is None:
            return None
        return self.options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(self.options)
                               if hasattr(args, f.name)})


# --------------------------------------------------------------------------------------------
# small helpers for dataset modules
# --------------------------------------------------------------------------------------------
def sanitize(text: str) -> str:
    """A case-id fragment: letters, digits, '-' only; runs of anything else become '_'."""
    return re.sub(r"[^A-Za-z0-9-]+", "_", str(text)).strip("_")


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    if not Path(path).is_dir():
        raise UserError(f"{what} folder {path} not found{'; ' + hint if hint else ''}")
    return Path(path)


def find_child_dir(parent: Path, name: str) -> Optional[Path]:
    """``parent/name`` matched case-insensitively (``Thyroid-image`` vs ``thyroid-image``)."""
    if not parent.is_dir():
        return None
    exact = parent / name
    if exact.is_dir():
        return exact
    for child in parent.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def locate_root(source: Path, is_root: Callable[[Path], bool], what: str, depth: int = 3) -> Path:
    """The first folder at or below ``source`` (breadth first, ``depth`` levels) for which
    ``is_root`` holds: users point at the unzipped archive, which nests the real root."""
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source folder {source} not found")
    level = [source]
    for _ in range(depth + 1):
        for folder in level:
            if is_root(folder):
                return folder
        level = sorted(c for f in level for c in f.iterdir() if c.is_dir() and not c.name.startswith("."))
    raise UserError(f"{source} does not look like {what}")


def files_with_suffix(folder: Path, suffixes: Sequence[str]) -> List[Path]:
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


def unmatched_error(kind: str, paths: Sequence[Path], fix: str) -> UserError:
    shown = ", ".join(str(p) for p in list(paths)[:5])
    more = f" (and {len(paths) - 5} more)" if len(paths) > 5 else ""
    return UserError(f"{len(paths)} {kind}: {shown}{more}; {fix}")


def require_complete_mask_sets(numbered: Mapping, image_of: Mapping, primary: str, numbered_name: str) -> None:
    """Raise a UserError for every case whose numbered lesion masks have a gap.

    ``numbered`` maps a case key to its ``(index, path)`` masks, index 0 being the primary mask
    (e.g. BUSI's ``_mask``, then ``_mask_1``, ``_mask_2``).  A missing primary or a missing middle
    number is never a smaller lesion: merging what is there would silently drop part of the label.
    """
    gaps = []
    for key in sorted(numbered):
        have = sorted(i for i, _ in numbered[key])
        missing = sorted(set(range(max(have) + 1)) - set(have))
        if missing:
            names = ", ".join(primary if i == 0 else numbered_name.format(i) for i in missing)
            gaps.append(f"{image_of[key]} (missing {names}; found {', '.join(p.name for _, p in sorted(numbered[key]))})")
    if gaps:
        shown = "; ".join(gaps[:5]) + (f" (and {len(gaps) - 5} more)" if len(gaps) > 5 else "")
        raise UserError(f"{len(gaps)} case(s) with an incomplete set of lesion masks: {shown}; restore the missing "
                        f"mask files (merging the rest would lose part of each lesion)")


def require_pairs(images: Mapping, masks: Mapping, masks_without_image: str, images_without_mask: str,
                  fix_image: str = "restore the missing file", fix_mask: str = "restore the missing file") -> None:
    """Raise a UserError listing masks whose key has no image (then images without a mask); the
    two descriptions name the dataset and file kinds, the fixes say what to restore."""
    for kind, found, other, fix in ((masks_without_image, masks, images, fix_image),
                                    (images_without_mask, images, masks, fix_mask)):
        lonely = [found[k] for k in sorted(found) if k not in other]
        if lonely:
            raise unmatched_error(kind, lonely, fix)


def read_table(path: Path, sheet=0):
    """A CSV or Excel table as a pandas DataFrame (``sheet=None``: dict of all sheets); a UserError
    naming the file if it is unreadable."""
    import pandas as pd
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            return pd.read_excel(path, sheet_name=sheet)
        return pd.read_csv(path, encoding="utf-8-sig")
    except ImportError as e:
        raise UserError(f"reading {path} needs {e.name}: pip install openpyxl") from e
    except Exception as e:  # noqa: BLE001 - report which file is broken
        raise UserError(f"cannot read table {path}: {e}") from e


def cell(value) -> str:
    """A table cell as a clean string ('' for NaN/None; 4.0 -> '4')."""
    if value is None:
        return ""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    return str(value).strip()


# --------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------
def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input file
        raise UserError(f"cannot read image file {path}: {e}; re-extract or remove the file") from e


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit / int / float images rescaled to 0..255 (uint8 passes through)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)


def read_image(path: Path, rgb: bool = False) -> Tuple[np.ndarray, bool]:
    """Image as uint8 H×W (grey) or H×W×3 (``rgb``), and whether its colour channels differed
    (overlays, Doppler) before conversion to grey.  Alpha is dropped; EXIF rotation ignored."""
    img = _open(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(img))
        return (np.repeat(grey[..., None], 3, -1) if rgb else grey), False
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode not in ("1", "LA", "La") else "L")
    arr = np.asarray(img)
    if arr.ndim == 2:
        return (np.repeat(arr[..., None], 3, -1) if rgb else arr), False
    coloured = bool((arr[..., 0] != arr[..., 1]).any() or (arr[..., 0] != arr[..., 2]).any())
    if rgb:
        return np.ascontiguousarray(arr), coloured
    return np.asarray(img.convert("L")), coloured


@dataclass
class MaskRead:
    mask: np.ndarray  # bool H×W
    grey_values: bool  # had values other than background/foreground extremes (JPEG, anti-aliasing)


def read_mask(path: Path) -> MaskRead:
    """A lesion mask as bool H×W.

    Handles mode '1' (bool), 'L' 0/255 or 0/1, JPEG noise and anti-aliased edges (foreground is
    >= 128 on the 0..255 scale), RGB/RGBA (a constant alpha is dropped, colour channels are
    max-combined so colour-coded masks count too; an alpha-only mask uses alpha), palette and
    16-bit PNG.  Values that look like a multi-label map are refused."""
    img = _open(path)
    if img.mode == "1":
        return MaskRead(np.asarray(img).astype(bool), False)
    if img.mode == "P":
        img = img.convert("RGBA")
    arr = mask_plane(img)  # colour / alpha -> one plane, the rule evaluate's reader shares
    if arr.dtype != np.uint8:
        if arr.max() > 255:  # 16-bit 0/65535
            arr = (arr.astype(np.float64) / 257.0).round()
        arr = arr.astype(np.uint8) if arr.max() > 1 else (arr > 0).astype(np.uint8)
    top = int(arr.max())
    if top <= 1:  # a 0/1 label image
        return MaskRead(arr > 0, False)
    if top < MASK_THRESHOLD:
        values = np.unique(arr)[:8].tolist()
        raise UserError(f"mask {path} has values {values} but none >= {MASK_THRESHOLD}: it looks like a "
                        f"multi-label map, not a 0/255 (or 0/1) lesion mask; convert it to binary first")
    grey = bool(((arr > 0) & (arr < 255)).any())
    return MaskRead(arr >= MASK_THRESHOLD, grey)


def resize_nearest(mask: np.ndarray, size_wh: Tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size_wh, Image.NEAREST)) >= 128


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(repr(arr.shape).encode() + np.ascontiguousarray(arr).tobytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# options and result
# --------------------------------------------------------------------------------------------
@dataclass
class Options:
    dataset_id: int
    name: str
    raw_root: Path
    overwrite: bool = False
    keep_normal: bool = False  # see drop_normal_cases: lesion cases only unless asked
    rgb: bool = False
    folds: int = 5
    seed: int = 12345
    dedup: bool = False
    dedup_distance: int = DEFAULT_PHASH_DISTANCE
    test_fraction: float = 0.0
    resize_masks: Optional[bool] = None  # None: the dataset's default
    progress: bool = True
    #: the converter's own options (an instance of ``DatasetInfo.options``; its defaults when None)
    dataset_options: Optional[object] = None


@dataclass
class Result:
    folder: Path
    rows: List[Dict[str, object]]
    splits: List[Dict[str, List[str]]]
    summary: str
    duplicates: List[Dict[str, object]]
    counters: Counter


# --------------------------------------------------------------------------------------------
# splits and duplicates
# --------------------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self, items):
        self.parent = {i: i for i in items}

    def find(self, x):
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(case_ids: List[str], pixel_hashes: List[str], phashes: List[np.ndarray],
                    max_distance: int) -> List[Dict[str, object]]:
    """Pairs of exact (same pixels) and near (pHash Hamming distance <= max_distance) duplicates."""
    pairs = []
    by_hash = defaultdict(list)
    for cid, h in zip(case_ids, pixel_hashes):
        by_hash[h].append(cid)
    exact = set()
    for ids in by_hash.values():
        for other in ids[1:]:
            pairs.append({"case_a": ids[0], "case_b": other, "kind": "exact", "phash_distance": 0})
            exact.add((ids[0], other))
    if max_distance >= 0 and len(phashes) > 1:
        bits = np.stack(phashes).astype(np.float32)  # n × 64 of 0/1
        dist = bits @ (1 - bits).T + (1 - bits) @ bits.T
        ia, ib = np.nonzero(np.triu(dist <= max_distance, k=1))
        for a, b in zip(ia.tolist(), ib.tolist()):
            if (case_ids[a], case_ids[b]) not in exact and pixel_hashes[a] != pixel_hashes[b]:
                pairs.append({"case_a": case_ids[a], "case_b": case_ids[b], "kind": "near",
                              "phash_distance": int(dist[a, b])})
    return pairs


def make_folds(case_ids: List[str], labels: List[str], groups: List[str], n_folds: int,
               seed: int) -> List[Dict[str, List[str]]]:
    """``n_folds`` folds stratified by ``labels`` with every group in one fold (StratifiedGroupKFold,
    shuffled with ``seed``: the same input gives the same folds)."""
    from sklearn.model_selection import StratifiedGroupKFold
    import warnings
    if n_folds < 2:
        raise UserError(f"--folds must be at least 2 (got {n_folds})")
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise UserError(f"only {n_groups} independent case groups for {n_folds} folds; use --folds {max(2, n_groups)} "
                        f"or fewer")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    ids = np.array(case_ids)
    folds = []
    with warnings.catch_warnings():  # "least populated class has only N members": expected for tiny sets
        warnings.simplefilter("ignore", UserWarning)
        for train_idx, val_idx in splitter.split(ids, labels, groups):
            folds.append({"train": sorted(ids[train_idx].tolist()), "val": sorted(ids[val_idx].tolist())})
    return folds


def holdout_test(cases: List[Case], fraction: float, groups: Dict[str, str], seed: int) -> List[str]:
    """Case ids of a stratified, group-respecting test hold-out of about ``fraction``."""
    if not 0 < fraction <= 0.5:  # the hold-out is one of round(1 / fraction) stratified group folds
        raise UserError(f"--test-fraction must be above 0 and at most 0.5 (got {fraction}): a larger hold-out "
                        f"than training set is not a cross-validation setup")
    labels = [c.cls or "none" for c in cases]
    scarce = sorted((k, v) for k, v in Counter(labels).items() if v < 2)
    if scarce:
        raise UserError(f"--test-fraction {fraction} keeps every class in both the hold-out and training, which "
                        f"needs at least 2 cases per class; {', '.join(f'class {k} has {v}' for k, v in scarce)} "
                        f"(of {len(cases)} cases): add cases or drop --test-fraction")
    n_splits = max(2, int(round(1 / fraction)))
    folds = make_folds([c.case_id for c in cases], labels,
                       [groups[c.case_id] for c in cases], n_splits, seed)
    return folds[0]["val"]


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
    groups_uf = _UnionFind(case_ids)
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
           "height": image.shape[0], "width": image.shape[1], "sha256": file_sha256(case.image),
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
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"source folder {source} not found (or not a folder)")
    if options.dataset_options is None and info.options is not None:
        options = dataclasses.replace(options, dataset_options=info.options())
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
