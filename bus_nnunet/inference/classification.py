"""Image-level classification with multi-task networks trained by nnU-Net (ACSNet, the
``<Trainer>_Cls*`` variants of ``bus_nnunet.trainers.classification``).

The segmentation outputs of such a model go through nnU-Net's own tools (``nnUNetv2_predict``,
``--val``, ensembling).  The class outputs go through here:

* :func:`class_probabilities` -- one preprocessed case (nnU-Net's normalisation and spacing) ->
  softmax class probabilities.  The network sees the **whole image**, zero-padded (0 = the mean
  intensity after nnU-Net's z-score normalisation) symmetrically to a multiple of the network's
  ``size_divisor`` and to at least its ``min_size``; the classifier pools globally, so no tiling is
  needed.  A network that takes one input size only (``input_size``: SS-Net) sees the image in
  tiles of that size at nnU-Net's sliding-window positions (half-tile steps), and the tiles'
  probabilities are averaged.  Predictions are averaged over the model's test-time mirroring axes
  (lateral only for bus-nnunet trainers), as nnU-Net does for segmentation.
* :func:`classify_images` -- ``bus-nnunet classify``: ordinary image files, converted to the
  model's channels as ``bus-nnunet predict`` converts them, preprocessed with the model's own
  plans, probabilities averaged over the selected folds and (weighted) over several models.
* :func:`write_classification_csv` -- ``case_id,true_class,p_<class>...,predicted_class``.
"""
from __future__ import annotations

import io
import csv
import itertools
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from bus_nnunet.errors import UserError

from bus_nnunet.manifest import CLASS_NAMES

#: where a classifying trainer stores its class names inside the model's plans (configuration)
PLANS_CLASSES_KEY = "classification_classes"
#: the classes of a plans configuration that records none
DEFAULT_CLASSES = CLASS_NAMES[:2]


def classes_from_configuration(configuration: dict) -> List[str]:
    """Class names recorded in a plans configuration (benign/malignant if none is recorded)."""
    return list(configuration.get(PLANS_CLASSES_KEY) or DEFAULT_CLASSES)


def check_same_classes(model_folders: Sequence) -> List[str]:
    """The class names every model folder's plans record (``<Trainer>__<Plans>__<configuration>``);
    a UserError naming each model and its classes when they differ."""
    import json
    found = {}
    for folder in map(Path, model_folders):
        plans = folder / "plans.json"
        if not plans.is_file():
            raise UserError(f"{folder} is not an nnU-Net model folder (no plans.json); pass the "
                            f"<Trainer>__<Plans>__<configuration> folder inside nnUNet_results")
        configuration = json.loads(plans.read_text()).get("configurations", {}).get(folder.name.rsplit("__", 1)[-1], {})
        found[folder] = classes_from_configuration(configuration)
    first, classes = next(iter(found.items()))
    if any(c != classes for c in found.values()):
        raise UserError("the models classify into different classes: "
                        + "; ".join(f"{f}: {c}" for f, c in found.items()) + "; average only models of the same classes")
    return classes


def pad_to_multiple(image, divisor=32, min_size=0):
    """``(C, H, W)`` tensor -> ``(1, C, H', W')`` with H', W' the next multiples of ``divisor`` (one
    int, or one per axis) that are at least ``min_size`` (int or per axis), zero-padded
    symmetrically (extra pixel after)."""
    import torch.nn.functional as F
    h, w = image.shape[-2:]
    dh, dw = (divisor, divisor) if np.isscalar(divisor) else divisor
    mh, mw = (min_size, min_size) if np.isscalar(min_size) else min_size
    ph, pw = max(mh - h, 0), max(mw - w, 0)
    ph, pw = ph + -(h + ph) % dh, pw + -(w + pw) % dw
    return F.pad(image[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _geometry(network):
    """``(size_divisor per axis, min_size per axis, fixed input size or None)`` of a classifying network."""
    divisor = getattr(network, "size_divisor", 32)
    divisor = (divisor, divisor) if np.isscalar(divisor) else tuple(divisor)
    fixed = getattr(network, "input_size", None)
    minimum = tuple(fixed) if fixed else (getattr(network, "min_size", 0),) * 2
    return divisor, minimum, (tuple(fixed) if fixed else None)


def describe_input(network, mirror_axes: Optional[Sequence[int]] = ()) -> str:
    """What :func:`class_probabilities` feeds ``network``, in words (for the summaries)."""
    divisor, minimum, fixed = _geometry(network)
    if fixed:
        text = f"whole image zero-padded to at least {list(fixed)}, tiles of {list(fixed)} at half-tile steps averaged"
    else:
        text = f"whole image, zero-padded to a multiple of {list(divisor)} (at least {list(minimum)})"
    return text + f", mirroring axes {list(mirror_axes or ())}"


def class_probabilities(network, data, device, mirror_axes: Optional[Sequence[int]] = ()):
    """Softmax class probabilities (numpy, shape (K,)) of one preprocessed 2D case.

    ``data`` is nnU-Net's preprocessed array ``(C, 1, H, W)`` (2D configurations) or ``(C, H, W)``;
    ``network`` must have ``forward_classification`` (and may state ``size_divisor``, ``min_size``,
    ``input_size``: see the module docstring); ``mirror_axes`` are nnU-Net's spatial axes
    (0 = rows, 1 = columns) to average over, all combinations as in nnU-Net's mirroring.
    """
    import torch
    data = torch.as_tensor(np.asarray(data, dtype=np.float32))
    if data.ndim == 4:
        if data.shape[1] != 1:
            raise ValueError(f"classification needs 2D cases; got preprocessed data of shape {tuple(data.shape)}")
        data = data[:, 0]
    divisor, minimum, fixed = _geometry(network)
    x = pad_to_multiple(data, divisor, minimum).to(device)
    if fixed:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
        steps = compute_steps_for_sliding_window(tuple(x.shape[-2:]), fixed, 0.5)
        tiles = [x[..., r:r + fixed[0], c:c + fixed[1]] for r in steps[0] for c in steps[1]]
    else:
        tiles = [x]
    axes = [a + 2 for a in (mirror_axes or ())]
    flips = [list(c) for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            probs = sum(torch.softmax(network.forward_classification(torch.flip(t, f) if f else t).float(), 1)
                        for t in tiles for f in flips) / (len(flips) * len(tiles))
    finally:
        network.train(was_training)
    return probs[0].cpu().numpy()


def write_classification_csv(path, case_ids: Sequence[str], probabilities: np.ndarray, class_names: Sequence[str],
                             true_classes: Optional[Dict[str, str]] = None) -> None:
    """Write ``case_id,true_class,p_<class>...,predicted_class`` (true_class empty where unknown)."""
    from bus_nnunet.io_utils import atomic_write_text
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "true_class", *[f"p_{c}" for c in class_names], "predicted_class"])
    for case, p in zip(case_ids, probabilities):
        writer.writerow([case, (true_classes or {}).get(case, ""), *[f"{v:.6f}" for v in p],
                         class_names[int(np.argmax(p))]])
    atomic_write_text(path, buf.getvalue())


def summarize_classification(true_labels: Sequence[int], probabilities: np.ndarray,
                             class_names: Sequence[str]) -> Dict[str, float]:
    """Accuracy over all classes (argmax) plus malignant-vs-rest metrics
    (:func:`bus_nnunet.evaluation.classification.binary_classification_metrics` on p_malignant)."""
    from bus_nnunet.evaluation.classification import binary_classification_metrics
    y = np.asarray(true_labels, dtype=int)
    probs = np.asarray(probabilities, dtype=float).reshape(len(y), len(class_names))
    malignant = list(class_names).index("malignant")
    metrics = binary_classification_metrics((y == malignant).astype(int), probs[:, malignant])
    metrics["accuracy"] = float((probs.argmax(1) == y).mean()) if len(y) else float("nan")
    return metrics


def model_class_probabilities(member, data: np.ndarray) -> np.ndarray:
    """Softmax class probabilities (K,) of one image ``(C, 1, H, W)`` (as
    :func:`bus_nnunet.inference.images.read_for_model` reads it) with one ensemble member
    (:class:`bus_nnunet.inference.segmentation.Member`): its own preprocessing, averaged over its folds."""
    from bus_nnunet.inference.images import NATURAL_IMAGE_SPACING
    predictor = member.predictor
    network = predictor.network
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    preprocessed = preprocessor.run_case_npy(data, None, {"spacing": list(NATURAL_IMAGE_SPACING)},
                                             predictor.plans_manager, predictor.configuration_manager,
                                             predictor.dataset_json)[0]
    probabilities = np.zeros(len(classes_from_configuration(predictor.configuration_manager.configuration)))
    for params in predictor.list_of_parameters:
        network.load_state_dict(params)
        network.to(predictor.device)
        probabilities += class_probabilities(network, preprocessed, predictor.device,
                                             predictor.allowed_mirroring_axes)
    return probabilities / len(predictor.list_of_parameters)


def classify_images(inputs: Sequence, model_folders, folds: Optional[Sequence] = None,
                    checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu", recursive: bool = False,
                    progress: bool = True, weights: Optional[Sequence[float]] = None):
    """Class probabilities of every image of ``inputs`` (files / folders of ordinary images, read
    as :mod:`bus_nnunet.inference.images` reads them for ``predict``): per model (one folder or several,
    loaded as ``predict`` loads an ensemble) averaged over its ``folds``, then the models' weighted
    mean (``weights`` normalised by their sum; default equal).  Every model must classify into
    the same classes.  One image at a time.

    Returns ``(names, probabilities (N, K), class_names, skipped, ignored)``.
    """
    from bus_nnunet.inference import images as U
    from bus_nnunet.inference.segmentation import load_ensemble

    images, ignored = U.collect_images(inputs, recursive)
    U.require_some(images, ignored, inputs)
    # from the plans, before any weights load: a head of another class count would not even load
    class_names = check_same_classes([model_folders] if isinstance(model_folders, (str, Path)) else model_folders)
    ensemble = load_ensemble(model_folders, weights, folds, checkpoint_name, device)
    for member in ensemble.members:
        if not hasattr(member.predictor.network, "forward_classification"):
            raise UserError(f"{member.folder} was trained by {member.predictor.trainer_name}, whose network has no "
                            f"classification output; train a classifying trainer (ACSNetTrainer, or a "
                            f"{member.predictor.trainer_name}_Cls variant: `bus-nnunet trainers`)")
    total_weight = sum(m.weight for m in ensemble.members)
    skipped: List[U.Unreadable] = []
    names, probabilities = [], []
    for image, data in U.read_all(images, ensemble.rgb, skipped, progress, desc="classifying"):
        names.append(image.name)
        probabilities.append(sum(m.weight * model_class_probabilities(m, data) for m in ensemble.members)
                             / total_weight)
    if not names:
        raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
    return names, np.asarray(probabilities), class_names, skipped, ignored
