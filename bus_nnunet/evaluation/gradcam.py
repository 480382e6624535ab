"""Grad-CAM heatmaps of a trained nnU-Net model over the lesion class (``grad-cam`` package).

The model is loaded with nnU-Net's own ``nnUNetPredictor.initialize_from_trained_model_folder``;
images are read as ``bus-nnunet predict`` reads them and go through the model's own
preprocessing (crop, normalisation), so the CAM explains exactly what the trained network sees. The target is
``SemanticSegmentationTarget(label, predicted mask of that label)``: the summed lesion logit over
the pixels the model segments as lesion (the whole image if it segments none).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from bus_nnunet.errors import UserError


def conv_layers(network, input_shape: Tuple[int, ...]) -> List[Tuple[str, Tuple[int, ...]]]:
    """Every Conv2d the network runs on an input of ``input_shape``, in execution order, with its
    output shape: the layers Grad-CAM can explain (BCHW activations)."""
    import torch
    import torch.nn as nn
    executed = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: executed.append((n, tuple(o.shape))))
             for name, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            network(torch.zeros(1, *input_shape[1:]))
    finally:
        for h in hooks:
            h.remove()
    return executed


def default_target_layer(network, input_shape: Tuple[int, ...], num_classes: int,
                         layers: Optional[List[Tuple[str, Tuple[int, ...]]]] = None) -> str:
    """The last Conv2d at the finest resolution any such layer reaches, with more channels than the
    segmentation head: the final decoder features.  Full resolution for PlainConvUNet; 1/4 for
    networks whose last full-resolution step is not a convolution (SS-Net's patch expansion).
    ``layers``: :func:`conv_layers` already run on this input."""
    layers = conv_layers(network, input_shape) if layers is None else layers
    candidates = [(n, shape) for n, shape in layers if shape[1] > num_classes]
    if not candidates:
        raise UserError("the network runs no convolution with more channels than its head; pass --layer "
                        "(see --list-layers)")
    finest = max(shape[-2] * shape[-1] for _, shape in candidates)
    return [n for n, shape in candidates if shape[-2] * shape[-1] == finest][-1]


def _pad_to(data: np.ndarray, shape: Sequence[int]) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    pad = [(0, max(0, s - d)) for d, s in zip(data.shape[-2:], shape)]
    padded = np.pad(data, [(0, 0)] * (data.ndim - 2) + pad)
    return padded, tuple(slice(0, d) for d in data.shape[-2:])


def network_input_size(predictor, size: Sequence[int]) -> Tuple[int, int]:
    """``size`` padded to at least the patch size and to a multiple of the network's total stride."""
    cm = predictor.configuration_manager
    patch = [int(s) for s in cm.patch_size]
    try:
        divisor = [int(np.prod([k[i] for k in cm.pool_op_kernel_sizes])) for i in range(2)]
    except (KeyError, AttributeError, TypeError):
        divisor = [32, 32]
    return tuple(max(p, int(np.ceil(s / d) * d)) for s, p, d in zip(size, patch, divisor))


def load_predictor(model_folder, fold: str = "0", checkpoint: str = "checkpoint_final.pth"):
    """nnU-Net's predictor with the one fold to explain, on the CPU (Grad-CAM needs gradients of
    one network, not an ensemble)."""
    from bus_nnunet.inference.segmentation import load_predictor as load, parse_folds
    predictor = load(model_folder, parse_folds([fold]), checkpoint, device="cpu")
    predictor.network.eval()
    return predictor


def gradcam_case(predictor, image: np.ndarray, label: int = 1, layer: Optional[str] = None):
    """Grad-CAM map (H, W, in [0, 1], original image geometry), the predicted lesion mask, the
    image (first channel) and the layer name for one image: ``(C, 1, H, W)`` as
    :func:`bus_nnunet.inference.images.read_for_model` gives it."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    pm, cm, dj = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    from bus_nnunet.inference.images import NATURAL_IMAGE_SPACING
    props = {"spacing": list(NATURAL_IMAGE_SPACING)}
    original = np.asarray(image[0, 0], dtype=np.float32)
    data, _, props = cm.preprocessor_class(verbose=False).run_case_npy(image, None, props, pm, cm, dj)
    data = np.asarray(data[:, 0], dtype=np.float32)   # (C, H', W') of the 2D configuration
    target_size = network_input_size(predictor, data.shape[-2:])
    padded, valid = _pad_to(data, target_size)
    x = torch.from_numpy(padded)[None]
    network = predictor.network
    num_heads = predictor.label_manager.num_segmentation_heads
    if not 0 < label < num_heads:
        raise UserError(f"--label {label} is not a foreground class of this model (1..{num_heads - 1})")
    layer_name = layer or default_target_layer(network, tuple(x.shape), num_heads)
    modules = dict(network.named_modules())
    if layer_name not in modules:
        raise UserError(f"layer {layer_name!r} not in the network; choose one of: {', '.join(list(modules)[1:40])} ...")
    with torch.no_grad():
        logits = network(x)
    logits = logits[0] if isinstance(logits, (list, tuple)) else logits
    mask = (logits[0].argmax(0) == label).numpy().astype(np.float32)
    target_mask = mask if mask.any() else np.ones_like(mask)
    with GradCAM(model=network, target_layers=[modules[layer_name]]) as cam:
        heat = cam(input_tensor=x, targets=[SemanticSegmentationTarget(label, target_mask)])[0]
    heat, mask = heat[valid], mask[valid]
    return _to_original_geometry(heat, props, original.shape), \
        _to_original_geometry(mask, props, original.shape) > 0.5, original, layer_name


def _to_original_geometry(arr: np.ndarray, props: dict, shape: Tuple[int, int]) -> np.ndarray:
    """Undo nnU-Net's resampling (if any) and crop-to-nonzero for a 2D map."""
    import torch
    import torch.nn.functional as Fn
    cropped_shape = tuple(props["shape_after_cropping_and_before_resampling"])[-2:]
    if arr.shape != cropped_shape:
        arr = Fn.interpolate(torch.from_numpy(arr)[None, None].float(), size=cropped_shape, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    out = np.zeros(shape, dtype=np.float32)
    bbox = props["bbox_used_for_cropping"][-2:]
    out[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1]] = arr
    return out


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """RGB uint8 image with the heatmap blended in (pytorch_grad_cam's show_cam_on_image)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image
    img = image.astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0, 1)
    img = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return show_cam_on_image(np.repeat(img[..., None], 3, axis=2), heat.astype(np.float32), use_rgb=True)
