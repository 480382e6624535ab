"""STU-Hospital (Zhuang et al., PLOS ONE 2019): ``Hospital/Test_Image_N.png`` (128×128) with
``mask_N.png``.  Most masks are larger than their image and anti-aliased: they are thresholded
at 128 and resized to the image with nearest neighbour (reported per case in the manifest)."""
from __future__ import annotations

import re
from pathlib import Path

from bus_nnunet.dataset_conversion.base import (Case, Collection, DatasetInfo, files_with_suffix, locate_root,
                                                require_pairs, unmatched_error)

_IMAGE = re.compile(r"^(?:Test_Image|image)_(\d+)$", re.IGNORECASE)
_MASK = re.compile(r"^mask_(\d+)$", re.IGNORECASE)


def _is_root(folder: Path) -> bool:
    return any(_MASK.match(p.stem) for p in folder.glob("*.png")) and any(_IMAGE.match(p.stem) for p in folder.glob("*.png"))


def collect(source: Path, options) -> Collection:
    root = locate_root(source, _is_root, "STU-Hospital (a folder with Test_Image_N.png and mask_N.png)")
    images, masks, unexpected = {}, {}, []
    for p in files_with_suffix(root, [".png"]):
        im, mk = _IMAGE.match(p.stem), _MASK.match(p.stem)
        if im:
            images[int(im.group(1))] = p
        elif mk:
            masks[int(mk.group(1))] = p
        else:
            unexpected.append(p)
    if unexpected:
        raise unmatched_error("files in the STU folder that are not Test_Image_N.png / mask_N.png", unexpected,
                              "move them elsewhere")
    require_pairs(images, masks, "STU masks without an image", "STU images without a mask")
    cases = [Case(case_id=f"stu_{n:04d}", image=images[n], masks=[masks[n]], extra={"source_id": images[n].stem})
             for n in sorted(images)]
    return Collection(cases=cases, notes=["STU has no class labels or patient ids; masks larger than their "
                                          "128x128 image are resized with nearest neighbour"])


INFO = DatasetInfo(
    key="stu", default_id=504, default_name="STU", allow_mask_resize=True, collect=collect, aliases=("stu-hospital",),
    reference="Zhuang Z, et al. An RDAU-NET model for lesion segmentation in breast ultrasound images. "
              "PLOS ONE 14(8) (2019) e0221535",
    license="public research release (no licence stated)",
    description="STU-Hospital breast ultrasound (external test set in the literature).")
