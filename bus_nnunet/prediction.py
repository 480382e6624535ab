"""``bus-nnunet predict``: lesion masks for a folder of ordinary images with a trained model.

Each image is read and converted to the model's channels by :mod:`bus_nnunet.user_images`,
then segmented by nnU-Net's own ``nnUNetPredictor`` (its preprocessing, sliding window, test-time
mirroring and the ensemble of the chosen folds), one image at a time so that one bad file costs
only itself.  :func:`load_predictor` is also how ``classify`` and ``gradcam`` load a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

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


def viewable(segmentation: np.ndarray, num_labels: int) -> np.ndarray:
    """Label map -> uint8 spread over 0..255 (0/255 for a lesion model)."""
    return (segmentation.astype(np.int64) * 255 // max(1, num_labels - 1)).astype(np.uint8)


def predict_images(inputs: Sequence, model_folder, output, folds=None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "auto", use_mirroring: bool = True, step_size: float = 0.5,
                   recursive: bool = False, overwrite: bool = False, progress: bool = True) -> Dict[str, list]:
    """Segment every image of ``inputs`` and write ``output/masks/<name>.png`` (label values),
    ``output/masks_255/<name>.png`` and ``output/summary.csv``.  Returns the ``predicted``,
    ``skipped`` (unreadable) and ``ignored`` (not images) files."""
    from PIL import Image

    from bus_nnunet import user_images as U
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_text, check_output_free

    check_output_free(output, overwrite, "output folder")
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
    with atomic_output_dir(output, overwrite) as tmp:
        for image, data in U.read_all(images, rgb, skipped, progress, desc="predicting"):
            segmentation = predictor.predict_single_npy_array(data, {"spacing": list(U.NATURAL_IMAGE_SPACING)})
            segmentation = np.asarray(segmentation)[0].astype(np.uint8)  # (1, H, W): drop the dummy axis
            for folder, pixels in ((MASKS, segmentation),
                                   (MASKS_VIEW, viewable(segmentation, num_labels))):
                target = tmp / folder / f"{image.name}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(target)
            predicted.append({"input": str(image.path), "mask": f"{MASKS}/{image.name}.png",
                              "foreground_pixels": int((segmentation > 0).sum())})
        if not predicted:
            raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
        atomic_write_text(tmp / "summary.csv", U.summary_csv(predicted, skipped, ignored, ["mask", "foreground_pixels"]))
    return {"predicted": predicted, "skipped": skipped, "ignored": ignored}

