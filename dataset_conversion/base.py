"""What a dataset module needs: the contract of ``bus-nnunet convert`` and small helpers for finding
cases in a release's own layout.

A converter module (``dataset_conversion/<key>.py``, docs/extending.md) defines ``INFO`` (a
:class:`DatasetInfo`) whose ``collect(source, options)`` only *finds* the cases and returns a
:class:`Collection` of :class:`Case` s.  Reading pixels lives in :mod:`bus_nnunet.image_io`; the
conversion itself (read -> group -> split -> write -> summary) in :mod:`.pipeline`.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bus_nnunet.errors import UserError

__all__ = ["Case", "Collection", "DatasetInfo", "sanitize", "require_dir", "find_child_dir", "locate_root",
           "files_with_suffix", "unmatched_error", "require_complete_mask_sets", "require_pairs", "read_table",
           "cell"]

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
