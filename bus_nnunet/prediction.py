"""``bus-nnunet predict``: lesion masks for a folder of ordinary images with a trained model.

Each image is read and converted to the model's channels by :mod:`bus_nnunet.user_images`,
then segmented by nnU-Net's own ``nnUNetPredictor`` (its preprocessing, sliding window, test-time
mirroring and the ensemble of the chosen folds), one image at a time so that one bad file costs
only itself.  :func:`load_predictor` is also how ``classify`` and ``gradcam`` load a model.

Each mask is written into the output's partial folder as soon as it is done; the folder becomes
the output when every image is done.  An image whose sliding window needs more than
:data:`LARGE_IMAGE_TILES` network evaluations (:func:`estimate_tiles`) is announced with the
estimate before it is predicted and shows nnU-Net's own tile progress bar.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bus_nnunet.errors import UserError

MASKS = "masks"           # label values (0/1 for lesion models): what evaluate and nnU-Net read
MASKS_VIEW = "masks_255"  # the same masks spread over 0..255, for looking at


def resolve_device(name: str = "auto"):
    import torch
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda: no CUDA device is visible to torch here; use -device cpu")
    return torch.device(name)


def parse_folds(values: Optional[Sequence[str]]):
    """``-f`` values -> nnU-Net's ``use_folds`` (ints, or 'all'); None lets nnU-Net find them."""
    if values is None:
        return None
    try:
        return tuple(v if v == "all" else int(v) for v in values)
    except ValueError:
        raise UserError(f"-f takes fold numbers or 'all', got {' '.join(values)}") from None


def resolve_folds(model_folder, folds=None, checkpoint: str = "checkpoint_final.pth") -> tuple:
    """The folds to load: ``folds`` if each has ``checkpoint``, else (None) every ``fold_*`` that
    has it; an error naming what is missing and what is there otherwise."""
    model_folder = Path(model_folder)
    if not (model_folder / "plans.json").is_file():
        raise UserError(f"{model_folder} is not an nnU-Net model folder (no plans.json); pass the "
                        f"<Trainer>__<Plans>__<configuration> folder inside nnUNet_results")
    available = [p.name[len("fold_"):] for p in sorted(model_folder.glob("fold_*")) if (p / checkpoint).is_file()]
    wanted = [str(f) for f in folds] if folds is not None else available
    missing = [f"fold_{f}" for f in wanted if f not in available]
    if missing or not wanted:
        raise UserError(f"{model_folder}: no {checkpoint} in {', '.join(missing) or 'any fold_* folder'} "
                        f"(found in: {', '.join(f'fold_{f}' for f in available) or 'none'}); train those "
                        f"folds or choose others with -f / -chk")
    return tuple(f if f == "all" else int(f) for f in wanted)


def load_predictor(model_folder, folds=None, checkpoint: str = "checkpoint_final.pth", device: str = "cpu",
                   use_mirroring: bool = True, step_size: float = 0.5):
    """nnU-Net's predictor for ``model_folder`` (``<Trainer>__<Plans>__<configuration>``) with
    the ensemble of ``folds`` (:func:`resolve_folds`)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    folds = resolve_folds(model_folder, folds, checkpoint)
    predictor = nnUNetPredictor(tile_step_size=step_size, use_mirroring=use_mirroring, device=resolve_device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), folds, checkpoint)
    return predictor


#: an image needing more network evaluations than this is announced before it is predicted, with
#: the estimate, and shows nnU-Net's tile progress bar (a 4000x3000 photo on a 64-px-patch model
#: needs ~47,000 per fold and looks hung without it)
LARGE_IMAGE_TILES = 1000


@dataclass(frozen=True)
class TileEstimate:
    """The network evaluations nnU-Net's sliding window makes for one image with one model."""
    windows: int     # sliding-window positions
    mirrorings: int  # test-time mirroring variants evaluated per window
    folds: int
    patch: tuple

    @property
    def tiles(self) -> int:
        return self.windows * self.mirrorings * self.folds

    def describe(self) -> str:
        return (f"{self.tiles:,} sliding-window tiles ({self.windows:,} windows of "
                f"{'x'.join(map(str, self.patch))} px x {self.mirrorings} mirroring(s) x {self.folds} fold(s))")


def estimate_tiles(predictor, data: np.ndarray) -> TileEstimate:
    """The tiles nnU-Net's predictor will evaluate for ``data`` (``(C, 1, H, W)``, as
    :func:`bus_nnunet.user_images.read_for_model` reads it), by nnU-Net's own rules: the crop to
    the non-zero region, the resampling to the plan's spacing, the padding to at least the patch
    and ``compute_steps_for_sliding_window``; times its mirroring variants and folds."""
    from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from bus_nnunet.user_images import NATURAL_IMAGE_SPACING
    plans, configuration = predictor.plans_manager, predictor.configuration_manager
    order = list(plans.transpose_forward)
    data = data.transpose([0, *[axis + 1 for axis in order]])
    spacing = [NATURAL_IMAGE_SPACING[axis] for axis in order]
    nonzero = create_nonzero_mask(data)
    cropped = [hi - lo for lo, hi in get_bbox_from_mask(nonzero)] if nonzero.any() else list(data.shape[1:])
    target = list(configuration.spacing)
    if len(target) < len(cropped):  # a 2D configuration keeps the spacing between slices
        target = [spacing[0], *target]
    shape = [int(n) for n in compute_new_shape(cropped, spacing, target)]
    patch = tuple(int(p) for p in configuration.patch_size)
    padded = [max(n, p) for n, p in zip(shape[-len(patch):], patch)]
    steps = compute_steps_for_sliding_window(padded, patch, predictor.tile_step_size)
    windows = math.prod(len(s) for s in steps) * math.prod(shape[:-len(patch)])
    axes = predictor.allowed_mirroring_axes if predictor.use_mirroring else None
    return TileEstimate(windows, 2 ** len(axes) if axes else 1, len(predictor.list_of_parameters), patch)


def _report_stale_partials(output) -> None:
    """Remove the partial folders killed runs left beside ``output`` (io_utils' rule), saying how
    many images each had got through."""
    import glob

    from bus_nnunet.io_utils import remove_stale_partials
    output = Path(output)
    held = {str(p): sum(1 for _ in (p / MASKS).rglob("*.png")) if p.is_dir() else 0
            for p in output.parent.glob(f".{glob.escape(output.name)}.partial-*")}

    def log(message: str) -> None:
        matches = [p for p in held if p in message]
        done = f"; it held the masks of {held[max(matches, key=len)]} image(s)" if matches else ""
        print(message + done, file=sys.stderr)

    remove_stale_partials(output, log)


def viewable(segmentation: np.ndarray, num_labels: int) -> np.ndarray:
    """Label map -> uint8 spread over 0..255 (0/255 for a lesion model)."""
    return (segmentation.astype(np.int64) * 255 // max(1, num_labels - 1)).astype(np.uint8)


def predict_images(inputs: Sequence, model_folder, output, *, folds=None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "auto", use_mirroring: bool = True, step_size: float = 0.5,
                   recursive: bool = False, overwrite: bool = False, progress: bool = True,
                   on_image: Optional[Callable[[dict, Path], None]] = None) -> Dict[str, list]:
    """Segment every image of ``inputs`` and write ``output/masks/<name>.png`` (label values),
    ``output/masks_255/<name>.png`` and ``output/summary.csv``.  Returns the ``predicted``,
    ``skipped`` (unreadable) and ``ignored`` (not images) files.

    ``output`` may not be, contain or lie inside an input or the model folder.  Each image's files
    are written into the output's partial folder as soon as it is done; ``on_image(row, partial)``
    is then called with its summary row (progress reporting; an exception it raises stops the run
    and, like any interruption, leaves ``output`` untouched)."""
    from PIL import Image

    from bus_nnunet import user_images as U
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_text, check_output_free

    protected = [*inputs, model_folder]
    check_output_free(output, overwrite, "output folder", inputs=protected)
    images, ignored = U.collect_images(inputs, recursive)
    U.require_some(images, ignored, inputs)
    folds = resolve_folds(model_folder, folds, checkpoint)
    predictor = load_predictor(model_folder, folds, checkpoint, device, use_mirroring, step_size)
    rgb = U.model_wants_rgb(predictor.dataset_json, model_folder)
    U.require_natural_image_model(predictor.configuration_manager, model_folder)
    num_labels = len(predictor.dataset_json["labels"])
    print(f"predicting {len(images)} image(s) as {'RGB' if rgb else 'grey'} with {predictor.trainer_name}, "
          f"fold(s) {', '.join(map(str, folds))}, "
          f"mirroring {'on' if use_mirroring else 'off'}, on {predictor.device}")
    predicted: List[dict] = []
    skipped: List[U.Unreadable] = []
    _report_stale_partials(output)
    with atomic_output_dir(output, overwrite, inputs=protected) as tmp:
        print(f"each mask is written into {tmp} when done; it becomes {output} when all are")
        try:
            for image, data in U.read_all(images, rgb, skipped, progress, desc="predicting"):
                estimate = estimate_tiles(predictor, data)
                large = estimate.tiles > LARGE_IMAGE_TILES
                if large:
                    _warn(f"warning: {image.path} ({data.shape[-1]}x{data.shape[-2]} px) needs an estimated "
                          f"{estimate.describe()} and will take long; a model with a larger patch, a smaller "
                          f"image or --disable-tta makes it faster")
                predictor.allow_tqdm = progress and large  # nnU-Net's own bar over this image's tiles
                segmentation = predictor.predict_single_npy_array(data, {"spacing": list(U.NATURAL_IMAGE_SPACING)})
                segmentation = np.asarray(segmentation)[0].astype(np.uint8)  # (1, H, W): drop the dummy axis
                for folder, pixels in ((MASKS, segmentation),
                                       (MASKS_VIEW, viewable(segmentation, num_labels))):
                    target = tmp / folder / f"{image.name}.png"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels).save(target)
                predicted.append({"input": str(image.path), "mask": f"{MASKS}/{image.name}.png",
                                  "foreground_pixels": int((segmentation > 0).sum()),
                                  "note": U.orientation_note(image.path)})
                if on_image is not None:
                    on_image(predicted[-1], tmp)
        except BaseException as e:
            _warn(f"stopped after {len(predicted)} of {len(images)} image(s) ({type(e).__name__}); "
                  f"{output} was not written")
            raise
        if not predicted:
            raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
        atomic_write_text(tmp / "summary.csv",
                          U.summary_csv(predicted, skipped, ignored, ["mask", "foreground_pixels", "note"]))
    return {"predicted": predicted, "skipped": skipped, "ignored": ignored}


def _warn(message: str) -> None:
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)  # above a running progress bar, not through it
