"""TG3K thyroid gland (Gong et al. 2023): ``thyroid-image/NNNN.jpg`` + ``thyroid-mask/NNNN.jpg``
(folder case may vary), JPEG masks thresholded at 128, label ``gland``.

The shipped ``tg3k-trainval.json`` split cuts through a video, so by default the frames are
grouped into videos (runs of consecutive frames with the same resolution, the only trace of
the 16 source videos) and folds keep each video together.  ``--official-split`` writes the
shipped split as the single fold instead."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, files_with_suffix, find_child_dir,
                                                locate_root, require_pairs)
from bus_nnunet.errors import UserError

_EXT = (".jpg", ".jpeg", ".png")


def _is_root(folder: Path) -> bool:
    return find_child_dir(folder, "thyroid-image") is not None


@dataclass
class TG3KOptions:
    official_split: bool = field(default=False, metadata={
        "help": "use tg3k-trainval.json as the single fold (it cuts through a video: leaks)"})


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "TG3K (a folder with thyroid-image/ and thyroid-mask/)")
    mask_dir = find_child_dir(root, "thyroid-mask")
    if mask_dir is None:
        raise UserError(f"{root / 'thyroid-mask'} not found")
    images = {int(p.stem): p for p in files_with_suffix(find_child_dir(root, "thyroid-image"), _EXT) if p.stem.isdigit()}
    masks = {int(p.stem): p for p in files_with_suffix(mask_dir, _EXT) if p.stem.isdigit()}
    require_pairs(images, masks, "TG3K masks without an image", "TG3K images without a mask")
    collection = Collection(cases=[])
    video, previous_size = 0, None
    for n in sorted(images):
        with Image.open(images[n]) as im:
            size = im.size
        if previous_size is not None and size != previous_size:
            video += 1
        previous_size = size
        collection.cases.append(Case(case_id=f"tg3k_{n:04d}", image=images[n], masks=[masks[n]],
                                     patient_id=f"tg3k_video{video:02d}",
                                     extra={"source_id": images[n].name, "frame_size": f"{size[0]}x{size[1]}"}))
    collection.notes.append(f"{video + 1} videos recovered as runs of constant frame size; folds keep videos together")
    split_file = root / "tg3k-trainval.json"
    if options.dataset_options.official_split:
        if not split_file.is_file():
            raise UserError(f"--official-split needs {split_file}")
        spec = json.loads(split_file.read_text())
        ordered = sorted(images)
        try:
            fold = {part: [f"tg3k_{ordered[i]:04d}" for i in spec[part]] for part in ("train", "val")}
        except (KeyError, IndexError, TypeError) as e:
            raise UserError(f"{split_file} is not {{'train': [...], 'val': [...]}} of frame indices: {e}") from e
        collection.official_folds = [fold]
        collection.split_policy = "official tg3k-trainval.json (single fold; it splits one video between train and val)"
        video_of = {c.case_id: c.patient_id for c in collection.cases}
        shared = {video_of[c] for c in fold["train"]} & {video_of[c] for c in fold["val"]}
        if shared:
            collection.warnings.append(f"the official split puts frames of {len(shared)} video(s) in both train and val "
                                       f"(near-duplicate leakage)")
    return collection


INFO = DatasetInfo(
    key="tg3k", default_id=513, default_name="TG3K", label_name="gland", collect=collect, options=TG3KOptions,
    reference="Gong H, et al. Thyroid region prior guided attention for ultrasound segmentation of thyroid nodules. "
              "Comput Biol Med 155 (2023) 106389; frames of Wunderling et al. 2017",
    license="no licence stated",
    description="TG3K thyroid gland ultrasound frames (label = gland).")
