"""Ordinary image files (PNG, JPEG, BMP, TIFF in any mode) as input to a trained model.

``nnUNetv2_predict`` wants images exactly as the converter wrote them: ``<case>_0000.png``, grey
for a grey model, one RGB PNG for an ``--rgb`` model.  An RGBA, palette, 16-bit or JPEG file,
or an RGB file into a grey model, fails inside nnU-Net and takes the whole folder down with it.
``bus-nnunet predict`` / ``classify`` / ``gradcam`` read users' images here instead:

* :func:`collect_images` -- image files of files and folders, each with an output *name*;
* :func:`model_wants_rgb` -- the channels a model was trained on (its ``dataset.json``);
* :func:`read_for_model` -- one file -> nnU-Net's ``(C, 1, H, W)`` array, converted by the
  converters' own :func:`bus_nnunet.image_io.read_image`, so a prediction sees what training saw.

A file that cannot be read is reported (:class:`Unreadable`) and every other file still runs.

EXIF orientation is ignored, as the converters ignore it: a mask is aligned with the *stored*
pixels, which a viewer that honours the tag shows rotated or mirrored.  One rule for training and
prediction; :func:`orientation_note` says it for each file whose tag asks for a transform.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bus_nnunet.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: nnU-Net's raw naming puts the channel after the case (``case_0000.png``); dropping it names a
#: prediction of a converted ``imagesTs`` folder as nnU-Net names its labels (``case.png``)
NNUNET_CHANNEL_SUFFIX = "_0000"
#: spacing nnU-Net's NaturalImage2DIO gives every 2D image (the first axis is the dummy one)
NATURAL_IMAGE_SPACING = (999.0, 1.0, 1.0)
#: the EXIF tag that tells viewers how to rotate / mirror the stored pixels for display
EXIF_ORIENTATION_TAG = 0x0112
#: what a viewer does for each EXIF orientation value (1 = shown as stored)
EXIF_ORIENTATIONS = {2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
                     5: "mirrored along the main diagonal", 6: "rotated 90 degrees clockwise",
                     7: "mirrored along the anti-diagonal", 8: "rotated 90 degrees counter-clockwise"}


@dataclass(frozen=True)
class InputImage:
    path: Path
    name: str  # output name: path relative to the given folder, without suffix, posix separators


@dataclass(frozen=True)
class Unreadable:
    path: Path
    reason: str


def _name(relative: Path) -> str:
    stem = relative.with_suffix("").as_posix()
    return stem[:-len(NNUNET_CHANNEL_SUFFIX)] if stem.endswith(NNUNET_CHANNEL_SUFFIX) else stem


def collect_images(inputs: Sequence, recursive: bool = False) -> Tuple[List[InputImage], List[Unreadable]]:
    """Image files named by ``inputs`` (files, or folders scanned for :data:`IMAGE_SUFFIXES`,
    sub-folders too with ``recursive``).  Files of other types inside a folder are returned as
    :class:`Unreadable` (*ignored*) so a summary can list them; a named path that does not exist is an error.
    Names that would collide (``a.png`` and ``a.jpg``) keep their suffix (``a.png``, ``a.jpg``)."""
    found: List[Tuple[Path, Path]] = []  # (file, path relative to what the user named)
    ignored: List[Unreadable] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            files = sorted(p for p in (root.rglob("*") if recursive else root.iterdir()) if p.is_file())
            for f in files:
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f, f.relative_to(root)))
                else:
                    ignored.append(Unreadable(f, f"not an image file type ({', '.join(IMAGE_SUFFIXES)})"))
        elif root.is_file():
            found.append((root, Path(root.name)))
        else:
            raise UserError(f"input {root} does not exist; pass image files or folders of images")
    counts = Counter(_name(rel) for _, rel in found)
    images, seen = [], set()
    for path, rel in found:
        name = _name(rel) if counts[_name(rel)] == 1 else rel.as_posix()
        if name in seen:  # the same file named twice (a folder and a file in it)
            continue
        seen.add(name)
        images.append(InputImage(path, name))
    return images, ignored


def model_wants_rgb(dataset_json: Mapping, model_folder) -> bool:
    """True for a model trained on RGB images (``--rgb``: channels R, G, B in one file), False
    for grey.  Models of other layouts (several files per case) need ``nnUNetv2_predict``."""
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) in (1, 3):
        return len(channels) == 3
    raise UserError(f"{model_folder} was trained on {len(channels)} input channels ({dict(channels)}); "
                    f"ordinary images convert to 1 (grey) or 3 (RGB) channels only: use nnUNetv2_predict "
                    f"with images in that dataset's own format")


def require_natural_image_model(configuration_manager, model_folder) -> None:
    """Ordinary images carry no pixel spacing; the model must be one trained on natural images
    (spacing 1, as nnU-Net's NaturalImage2DIO reads them), or predictions would be resampled."""
    spacing = [float(s) for s in configuration_manager.spacing][-2:]
    if spacing != [1.0, 1.0]:
        raise UserError(f"{model_folder} was trained at pixel spacing {spacing}, but image files carry no "
                        f"spacing; use nnUNetv2_predict with images in that dataset's own format")


def read_for_model(path: Path, rgb: bool) -> np.ndarray:
    """``(C, 1, H, W)`` float32 as nnU-Net's NaturalImage2DIO gives the converted training image
    (C = 3 for ``rgb`` else 1).  Raises :class:`UserError` naming the file when it cannot be read."""
    from bus_nnunet.image_io import read_image  # the converters' rule, applied again
    pixels, _ = read_image(Path(path), rgb)
    channels_first = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]
    return np.ascontiguousarray(channels_first[:, None], dtype=np.float32)


def exif_orientation(path: Path) -> Optional[int]:
    """The EXIF orientation value of an image file (1..8), or None when it has none (or no EXIF)."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            value = img.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # unreadable files are reported by read_for_model
        return None
    return int(value) if value is not None else None


def orientation_note(path: Path) -> str:
    """A note for a file whose EXIF orientation makes viewers show it otherwise than stored
    (empty for none): its mask follows the stored pixels, as the converters read training images."""
    value = exif_orientation(path)
    if value is None or value == 1:
        return ""
    shown = EXIF_ORIENTATIONS.get(value, "transformed")
    return (f"EXIF orientation {value} ignored: viewers show this image {shown}, the mask follows the "
            f"stored pixels (as the converters read training images)")


def read_all(images: Iterable[InputImage], rgb: bool, skipped: List[Unreadable], progress: bool = True,
             desc: str = "reading") -> Iterable[Tuple[InputImage, np.ndarray]]:
    """``(image, array)`` for every readable image; an unreadable one is appended to ``skipped``
    with its reason and printed, and the rest go on."""
    from tqdm import tqdm
    images = list(images)
    for image in tqdm(images, desc=desc, unit="image", disable=not progress):
        try:
            yield image, read_for_model(image.path, rgb)
        except UserError as e:
            skipped.append(Unreadable(image.path, str(e)))
            tqdm.write(f"skipped {image.path}: {e}")


def require_some(images: Sequence, ignored: Sequence[Unreadable], inputs) -> None:
    if not images:
        why = f" ({len(ignored)} other file(s), e.g. {ignored[0].path.name})" if ignored else ""
        raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}{why}")


def summary_csv(rows: Sequence[Mapping], skipped: Sequence[Unreadable], ignored: Sequence[Unreadable],
                columns: Sequence[str]) -> str:
    """``input,status,<columns>...,reason``: one row per file, status ``predicted``, ``skipped``
    (an image that could not be read) or ``ignored`` (not an image file)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["input", "status", *columns, "reason"])
    for row in rows:
        writer.writerow([row["input"], "predicted", *[row.get(c, "") for c in columns], ""])
    for status, files in (("skipped", skipped), ("ignored", ignored)):
        for s in files:
            writer.writerow([str(s.path), status, *[""] * len(columns), s.reason])
    return buf.getvalue()


def files_message(files: Sequence[Unreadable], what: str, limit: int = 5) -> Optional[str]:
    """``"2 image(s) skipped: a.png (why); b.tif (why)"`` or None when there are none."""
    if not files:
        return None
    listed = "; ".join(f"{s.path.name} ({s.reason.split('; ')[0]})" for s in files[:limit])
    more = f"; and {len(files) - limit} more" if len(files) > limit else ""
    return f"{len(files)} {what}: {listed}{more}"
