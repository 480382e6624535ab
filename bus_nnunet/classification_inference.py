"""Image-level classification with multi-task networks trained by nnU-Net (ACSNet).

The segmentation outputs of such a model go through nnU-Net's own tools (``nnUNetv2_predict``,
``--val``, ensembling).  The class outputs go through here:

* :func:`class_probabilities` -- one preprocessed case (nnU-Net's normalisation and spacing) ->
  softmax class probabilities.  The network sees the **whole image**, zero-padded (0 = the mean
  intensity after nnU-Net's z-score normalisation) symmetrically to a multiple of the network's
  size divisor; the classifier pools globally, so no tiling is needed.  Predictions are averaged
  over the model's test-time mirroring axes (lateral only for bus-nnunet trainers), as nnU-Net
  does for segmentation.
* :func:`classify_images` -- ``bus-nnunet classify``: ordinary image files, converted to the
  model's channels as ``bus-nnunet predict`` converts them, preprocessed with the model's own
  plans, probabilities averaged over the selected folds.
* :func:`write_classification_csv` -- ``case_id,true_class,p_<class>...,predicted_class``.
"""
from __future__ import annotations

import io
import csv
import itertools
from typing import Dict, List, Optional, Sequence

import numpy as np

from bus_nnunet.errors import UserError

#: where a trainer stores its classification class names inside the model's plans (configuration)
PLANS_CLASSES_KEY = "classification_classes"
DEFAULT_CLASSES = ("benign", "malignant")


def classes_from_configuration(configuration: dict) -> List[str]:
    """Class names recorded in a plans configuration (benign/malignant if none is recorded)."""
    return list(configuration.get(PLANS_CLASSES_KEY) or DEFAULT_CLASSES)


def pad_to_multiple(image, divisor: int = 32):
    """``(C, H, W)`` tensor -> ``(1, C, H', W')`` with H', W' the next multiples of ``divisor``,
    zero-padded symmetrically (extra pixel after)."""
    import torch.nn.functional as F
    h, w = image.shape[-2:]
    ph, pw = -h % divisor, -w % divisor
    return F.pad(image[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def class_probabilities(network, data, device, mirror_axes: Optional[Sequence[int]] = (), divisor: int = 32):
    """Softmax class probabilities (numpy, shape (K,)) of one preprocessed 2D case.

    ``data`` is nnU-Net's preprocessed array ``(C, 1, H, W)`` (2D configurations) or ``(C, H, W)``;
    ``network`` must have ``forward_classification``; ``mirror_axes`` are nnU-Net's spatial axes
    (0 = rows, 1 = columns) to average over, all combinations as in nnU-Net's mirroring.
    """
    import torch
    data = torch.as_tensor(np.asarray(data, dtype=np.float32))
    if data.ndim == 4:
        if data.shape[1] != 1:
            raise ValueError(f"classification needs 2D cases; got preprocessed data of shape {tuple(data.shape)}")
        data = data[:, 0]
    x = pad_to_multiple(data, divisor).to(device)
    axes = [a + 2 for a in (mirror_axes or ())]
    flips = [list(c) for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            probs = sum(torch.softmax(network.forward_classification(torch.flip(x, f) if f else x).float(), 1)
                        for f in flips) / len(flips)
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


def classify_images(inputs: Sequence, model_folder, folds: Optional[Sequence] = None,
                    checkpoint_name: str = "checkpoint_final.pth", device: str = "cpu", recursive: bool = False,
                    progress: bool = True):
    """Class probabilities of every image of ``inputs`` (files / folders of ordinary images, read
    as :mod:`bus_nnunet.user_images` reads them for ``predict``), averaged over ``folds`` of the
    trained model in ``model_folder``.

    Returns ``(names, probabilities (N, K), class_names, skipped, ignored)``.
    """
    from tqdm import tqdm

    from bus_nnunet import user_images as U
    from bus_nnunet.prediction import load_predictor

    images, ignored = U.collect_images(inputs, recursive)
    U.require_some(images, ignored, inputs)
    predictor = load_predictor(model_folder, folds, checkpoint_name, device)
    network = predictor.network
    if not hasattr(network, "forward_classification"):
        raise UserError(f"{model_folder} was trained by {predictor.trainer_name}, whose network has no "
                        f"classification output (use an ACSNet trainer)")
    rgb = U.model_wants_rgb(predictor.dataset_json, model_folder)
    U.require_natural_image_model(predictor.configuration_manager, model_folder)
    class_names = classes_from_configuration(predictor.configuration_manager.configuration)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    divisor = int(getattr(network, "size_divisor", 32))
    skipped: List[U.Unreadable] = []
    names, preprocessed = [], []
    for image, data in U.read_all(images, rgb, skipped, progress, desc="preprocessing"):
        names.append(image.name)
        preprocessed.append(preprocessor.run_case_npy(data, None, {"spacing": list(U.NATURAL_IMAGE_SPACING)},
                                                      predictor.plans_manager, predictor.configuration_manager,
                                                      predictor.dataset_json)[0])
    if not names:
        raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
    device = predictor.device
    probabilities = np.zeros((len(names), len(class_names)))
    for params in tqdm(predictor.list_of_parameters, desc="folds", disable=not progress):
        network.load_state_dict(params)
        network.to(device)
        for i, data in enumerate(preprocessed):
            probabilities[i] += class_probabilities(network, data, device, predictor.allowed_mirroring_axes, divisor)
    probabilities /= len(predictor.list_of_parameters)
    return names, probabilities, class_names, skipped, ignored
