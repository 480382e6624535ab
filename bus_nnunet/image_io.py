"""Reading ultrasound images and lesion masks from image files: the one rule the dataset
converters (``bus-nnunet convert``), the images users give ``predict`` / ``classify`` / ``gradcam``
(:mod:`bus_nnunet.inference.images`) and the report figures apply, so a prediction sees what training saw.

* :func:`read_image` -- any mode (grey, RGB, RGBA, palette, 16-bit, float) -> uint8 grey or RGB;
* :func:`read_mask` -- any lesion-mask encoding (0/1, 0/255, JPEG noise, anti-aliasing, colour or
  alpha drawn) -> bool, refusing multi-label maps; the colour/alpha rule is :func:`masks.mask_plane`;
* :func:`resize_nearest` -- a mask resized to its image (nearest neighbour), where a dataset allows it.

EXIF orientation is ignored: masks are aligned with the *stored* pixels.  A file that cannot be
decoded is a :class:`~bus_nnunet.errors.UserError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from bus_nnunet.errors import UserError
from bus_nnunet.masks import MASK_THRESHOLD, mask_plane  # 0/255 masks: >= 128 is foreground

__all__ = ["open_image", "read_image", "MaskRead", "read_mask", "resize_nearest"]

Image.MAX_IMAGE_PIXELS = None  # ultrasound frames are small; avoid PIL's decompression-bomb noise


def open_image(path: Path) -> Image.Image:
    """The decoded PIL image at ``path``; a UserError naming the file if it cannot be read."""
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
    img = open_image(path)
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
    img = open_image(path)
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
    """A bool mask resized to ``size_wh`` (W, H) by nearest neighbour."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size_wh, Image.NEAREST)) >= 128
