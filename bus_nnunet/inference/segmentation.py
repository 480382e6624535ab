"""``bus-nnunet predict``: lesion masks for a folder of ordinary images with a trained model.

Each image is read and converted to the model's channels by :mod:`bus_nnunet.inference.images`,
then segmented by nnU-Net's own ``nnUNetPredictor`` (its preprocessing, sliding window, test-time
mirroring and the ensemble of the chosen folds), one image at a time so that one bad file costs
only itself.  :func:`load_predictor` is also how ``classify`` and ``gradcam`` load a model.

Each mask is written into the output's partial folder as soon as it is done; the folder becomes
the output when every image is done.  An image whose sliding window needs more than
:data:`LARGE_IMAGE_TILES` network evaluations (:func:`estimate_tiles`) is announced with the
estimate before it is predicted and shows nnU-Net's own tile progress bar.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

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
#: needs ~46,000 per fold with mirroring and looks hung without it)
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
    :func:`bus_nnunet.inference.images.read_for_model` reads it), by nnU-Net's own rules: the crop to
    the non-zero region, the resampling to the plan's spacing, the padding to at least the patch
    and ``compute_steps_for_sliding_window``; times its mirroring variants and folds."""
    from acvl_utils.cropping_and_padding.bounding_boxes import get_bbox_from_mask
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from bus_nnunet.inference.images import NATURAL_IMAGE_SPACING
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


@dataclass
class Member:
    """One model of an ensemble: nnU-Net's predictor with the ensemble of its folds."""
    folder: Path
    label: str       # its name in summaries: the model folder's name (numbered when two share one)
    predictor: object
    folds: tuple
    weight: float


@dataclass
class EnsemblePrediction:
    segmentation: np.ndarray            # (H, W) uint8 label map of the ensemble
    probabilities: np.ndarray           # (C, 1, H, W) float32 ensemble softmax, nnU-Net's npz layout
    member_segmentations: List[np.ndarray]  # (H, W) uint8, each member's own label map


class Ensemble:
    """Models trained on the same labels and input channels (any trainers, plans, patch sizes),
    each with nnU-Net's predictor over its folds and mirroring; their softmax probabilities, each
    resampled back to the image by nnU-Net, are averaged with ``weights`` (normalised by their
    sum) and argmax-ed by nnU-Net's label manager: with equal weights exactly what
    ``nnUNetv2_ensemble`` computes from each model's ``--save_probabilities``.  A single model is
    an ensemble of one."""

    def __init__(self, members: List[Member]):
        self.members = members
        first = members[0].predictor
        self.dataset_json = first.dataset_json
        self.label_manager = first.label_manager
        from bus_nnunet.inference.images import model_wants_rgb
        self.rgb = model_wants_rgb(first.dataset_json, members[0].folder)  # the same for all: checked

    def __len__(self) -> int:
        return len(self.members)

    def estimate_tiles(self, data: np.ndarray) -> List[TileEstimate]:
        return [estimate_tiles(m.predictor, data) for m in self.members]

    def predict(self, data: np.ndarray, tile_progress: bool = False) -> EnsemblePrediction:
        """``data``: ``(C, 1, H, W)`` as :func:`bus_nnunet.inference.images.read_for_model` reads it.
        Memory holds one running sum and the members' label maps, whatever the number of members."""
        from bus_nnunet.inference.images import NATURAL_IMAGE_SPACING
        member_segmentations = []

        def member_probabilities():
            for member in self.members:
                member.predictor.allow_tqdm = tile_progress  # nnU-Net's own bar over the tiles
                segmentation, probabilities = member.predictor.predict_single_npy_array(
                    data, {"spacing": list(NATURAL_IMAGE_SPACING)}, save_or_return_probabilities=True)
                member_segmentations.append(np.asarray(segmentation)[0].astype(np.uint8))
                yield probabilities

        segmentation, total = average_probabilities(member_probabilities(), [m.weight for m in self.members],
                                                    self.label_manager)
        return EnsemblePrediction(segmentation, total, member_segmentations)


def average_probabilities(probabilities: Iterable[np.ndarray], weights: Sequence[float],
                          label_manager) -> Tuple[np.ndarray, np.ndarray]:
    """The ensemble rule: the ``weights``-weighted mean of softmax arrays ((C, 1, H, W), nnU-Net's
    npz layout) and nnU-Net's label map of it ((H, W) uint8).  ``probabilities`` is consumed one
    array at a time (memory: one running sum); with equal weights it is ``nnUNetv2_ensemble``'s
    mean.  Also how a study's external ensemble averages its members' saved probabilities."""
    total = None
    for probability, weight in zip(probabilities, weights):
        weighted = np.asarray(probability, dtype=np.float32) * np.float32(weight)
        if total is None:
            total = weighted
        else:
            total += weighted
    total /= np.float32(sum(weights))  # nnUNetv2_ensemble: sum, then divide
    segmentation = np.asarray(label_manager.convert_probabilities_to_segmentation(total))[0]
    return segmentation.astype(np.uint8), total


def _channels(dataset_json) -> dict:
    return dict(dataset_json.get("channel_names") or dataset_json.get("modality") or {})


def _as_folders(model_folders) -> List[Path]:
    if isinstance(model_folders, (str, Path)):
        return [Path(model_folders)]
    folders = [Path(f) for f in model_folders]
    if not folders:
        raise UserError("no model given: pass at least one -m MODEL")
    return folders


def check_ensemble_compatible(model_folders: Sequence) -> None:
    """Refuse models that cannot be averaged: different labels (or regions) or different input
    channels; the error names every model and what it has.  Reads only their ``dataset.json``."""
    from bus_nnunet.inference.images import model_wants_rgb
    datasets = {}
    for folder in model_folders:
        path = Path(folder) / "dataset.json"
        if not path.is_file():
            raise UserError(f"{folder} is not an nnU-Net model folder (no dataset.json); pass the "
                            f"<Trainer>__<Plans>__<configuration> folder inside nnUNet_results")
        datasets[Path(folder)] = json.loads(path.read_text())
    for what, key in (("labels", lambda d: (d["labels"], d.get("regions_class_order"))),
                      ("input channels", lambda d: len(_channels(d)))):
        if len({json.dumps(key(d), sort_keys=True) for d in datasets.values()}) > 1:
            listed = "; ".join(f"{f}: {_channels(d) if what == 'input channels' else d['labels']}"
                               for f, d in datasets.items())
            raise UserError(f"the models differ in their {what}, so their probabilities cannot be averaged: "
                            f"{listed}; ensemble only models trained on the same {what}")
    for folder, dataset_json in datasets.items():
        model_wants_rgb(dataset_json, folder)  # 1 or 3 channels: what image files convert to


def check_weights(weights: Optional[Sequence[float]], n_models: int) -> List[float]:
    """``--weights``: one positive number per model (default: all 1, nnU-Net's plain mean)."""
    if weights is None:
        return [1.0] * n_models
    weights = [float(w) for w in weights]
    if len(weights) != n_models:
        raise UserError(f"--weights gives {len(weights)} weight(s) for {n_models} model(s) (-m); give one per model, "
                        f"in the order of -m")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserError(f"--weights must be positive numbers, got {' '.join(map(str, weights))}")
    return weights


def load_ensemble(model_folders, weights: Optional[Sequence[float]] = None, folds=None,
                  checkpoint: str = "checkpoint_final.pth", device: str = "cpu", use_mirroring: bool = True,
                  step_size: float = 0.5) -> Ensemble:
    """The :class:`Ensemble` of ``model_folders`` (one folder or several), each with ``folds``
    (:func:`resolve_folds`: None = every fold that has ``checkpoint``); checked by
    :func:`check_ensemble_compatible` and :func:`check_weights` before any weight is loaded."""
    from bus_nnunet.inference.images import require_natural_image_model
    folders = _as_folders(model_folders)
    weights = check_weights(weights, len(folders))
    fold_sets = [resolve_folds(f, folds, checkpoint) for f in folders]  # model folders with those folds
    check_ensemble_compatible(folders)
    names = [f.name for f in folders]
    labels = [n if names.count(n) == 1 else f"{k}_{n}" for k, n in enumerate(names, 1)]
    members = []
    for folder, label, model_folds, weight in zip(folders, labels, fold_sets, weights):
        predictor = load_predictor(folder, model_folds, checkpoint, device, use_mirroring, step_size)
        require_natural_image_model(predictor.configuration_manager, folder)
        members.append(Member(folder, label, predictor, model_folds, weight))
    return Ensemble(members)


def mean_pairwise_dice(segmentations: Sequence[np.ndarray]) -> float:
    """The members' agreement: mean Dice of every pair of foreground masks (both empty: 1)."""
    from itertools import combinations

    from bus_nnunet.evaluation.metrics import dice_score
    return float(np.mean([dice_score(a, b) for a, b in combinations(segmentations, 2)]))


PROBABILITIES = "probabilities"  # <name>.npz, key 'probabilities' (C, 1, H, W): as nnU-Net saves them
UNCERTAINTY = "uncertainty"      # <name>_entropy.png, <name>_disagreement.png: 0..255 = 0..1


def predict_images(inputs: Sequence, model_folders, output, *, weights: Optional[Sequence[float]] = None,
                   folds=None, checkpoint: str = "checkpoint_final.pth", device: str = "auto",
                   use_mirroring: bool = True, step_size: float = 0.5, recursive: bool = False,
                   overwrite: bool = False, progress: bool = True, save_probabilities: bool = False,
                   uncertainty: bool = False, on_image: Optional[Callable[[dict, Path], None]] = None
                   ) -> Dict[str, list]:
    """Segment every image of ``inputs`` (image files / folders) with the ensemble of
    ``model_folders`` (one model folder or several, :func:`load_ensemble`) and write into ``output``:

    * ``masks/<name>.png`` (label values) and ``masks_255/<name>.png`` (0..255, for viewing);
    * ``summary.csv``: every file's status, the mask's foreground pixels, with several models each
      member's foreground pixels and ``mean_pairwise_dice`` (their agreement), and a note for an
      image whose EXIF orientation is ignored;
    * ``save_probabilities``: ``probabilities/<name>.npz``, the ensemble's softmax in nnU-Net's
      layout (what ``bus-nnunet evaluate --probabilities`` / ``uncertainty`` read);
    * ``uncertainty``: ``uncertainty/<name>_entropy.png`` (normalised entropy of the ensemble's
      probabilities) and ``_disagreement.png`` (fraction of members whose label differs from the
      ensemble's; 0 for one model), 0..255 = 0..1, and their means in summary.csv.

    Images are read and predicted one at a time (memory does not grow with their number).
    ``output`` may not be, contain or lie inside an input or a model folder.  Each image's files
    are written into the output's partial folder as soon as it is done; ``on_image(row, partial)``
    is then called with its summary row (progress reporting; an exception it raises stops the run
    and, like any interruption, leaves ``output`` untouched).  Returns the ``predicted`` rows and
    the ``skipped`` (unreadable) and ``ignored`` (not images) files."""
    from PIL import Image

    from bus_nnunet.inference import images as U
    from bus_nnunet.evaluation.uncertainty import uncertainty_maps
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_text, check_output_free

    folders = _as_folders(model_folders)
    protected = [*inputs, *folders]
    check_output_free(output, overwrite, "output folder", inputs=protected)
    images, ignored = U.collect_images(inputs, recursive)
    U.require_some(images, ignored, inputs)
    ensemble = load_ensemble(folders, weights, folds, checkpoint, device, use_mirroring, step_size)
    num_labels = len(ensemble.dataset_json["labels"])
    total_weight = sum(m.weight for m in ensemble.members)
    described = "; ".join(f"{m.label} ({m.predictor.trainer_name}, fold(s) {', '.join(map(str, m.folds))}"
                          + (f", weight {m.weight / total_weight:.3g}" if len(ensemble) > 1 else "") + ")"
                          for m in ensemble.members)
    print(f"predicting {len(images)} image(s) as {'RGB' if ensemble.rgb else 'grey'} with "
          f"{'an ensemble of ' + str(len(ensemble)) + ' models: ' if len(ensemble) > 1 else ''}{described}, "
          f"mirroring {'on' if use_mirroring else 'off'}, on {ensemble.members[0].predictor.device}")
    columns = ["mask", "foreground_pixels"]
    if len(ensemble) > 1:
        columns += [f"foreground_pixels_{m.label}" for m in ensemble.members] + ["mean_pairwise_dice"]
    columns += ([PROBABILITIES] if save_probabilities else []) + (
        ["mean_entropy", "mean_disagreement"] if uncertainty else []) + ["note"]
    predicted: List[dict] = []
    skipped: List[U.Unreadable] = []
    _report_stale_partials(output)
    with atomic_output_dir(output, overwrite, inputs=protected) as tmp:
        print(f"each mask is written into {tmp} when done; it becomes {output} when all are")

        def save_png(folder: str, name: str, pixels: np.ndarray) -> str:
            target = tmp / folder / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target)
            return f"{folder}/{name}.png"

        try:
            for image, data in U.read_all(images, ensemble.rgb, skipped, progress, desc="predicting"):
                estimates = ensemble.estimate_tiles(data)
                tiles = sum(e.tiles for e in estimates)
                large = tiles > LARGE_IMAGE_TILES
                if large:
                    how = (estimates[0].describe() if len(ensemble) == 1 else f"{tiles:,} sliding-window tiles over "
                           f"{len(ensemble)} models ({'; '.join(f'{m.label}: {e.describe()}' for m, e in zip(ensemble.members, estimates))})")
                    _warn(f"warning: {image.path} ({data.shape[-1]}x{data.shape[-2]} px) needs an estimated {how} "
                          f"and will take long; a model with a larger patch, a smaller image"
                          f"{' or --disable-tta' if use_mirroring else ''} makes it faster")
                result = ensemble.predict(data, tile_progress=progress and large)
                segmentation = result.segmentation
                row = {"input": str(image.path), "mask": save_png(MASKS, image.name, segmentation),
                       "foreground_pixels": int((segmentation > 0).sum()), "note": U.orientation_note(image.path)}
                save_png(MASKS_VIEW, image.name, viewable(segmentation, num_labels))
                if len(ensemble) > 1:
                    for member, member_segmentation in zip(ensemble.members, result.member_segmentations):
                        row[f"foreground_pixels_{member.label}"] = int((member_segmentation > 0).sum())
                    row["mean_pairwise_dice"] = f"{mean_pairwise_dice(result.member_segmentations):.4f}"
                if save_probabilities:
                    target = tmp / PROBABILITIES / f"{image.name}.npz"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(target, probabilities=result.probabilities)
                    row[PROBABILITIES] = f"{PROBABILITIES}/{image.name}.npz"
                if uncertainty:
                    entropy = uncertainty_maps([result.probabilities[:, 0]])["entropy"]  # of the ensemble's mean
                    disagreement = np.mean([m != segmentation for m in result.member_segmentations], axis=0)
                    for kind, values in (("entropy", entropy), ("disagreement", disagreement)):
                        save_png(UNCERTAINTY, f"{image.name}_{kind}", np.round(values * 255).astype(np.uint8))
                        row[f"mean_{kind}"] = f"{float(values.mean()):.4f}"
                predicted.append(row)
                if on_image is not None:
                    on_image(row, tmp)
        except BaseException as e:
            _warn(f"stopped after {len(predicted)} of {len(images)} image(s) ({type(e).__name__}); "
                  f"{output} was not written")
            raise
        if not predicted:
            raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
        atomic_write_text(tmp / "summary.csv", U.summary_csv(predicted, skipped, ignored, columns))
    return {"predicted": predicted, "skipped": skipped, "ignored": ignored}


def _warn(message: str) -> None:
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)  # above a running progress bar, not through it
