"""How a mask image's colour and alpha channels become one plane: the one rule shared by the
dataset converters' lesion-mask reader (``bus_nnunet.image_io.read_mask``) and the label-map
reader of ``evaluate`` / ``cv-report`` (``evaluation.folder.read_segmentation``).

Masks drawn in a colour (green lesion on black) have the lesion in one channel only, so reading
channel 0 would read them as empty; the channels are max-combined instead.
"""
from __future__ import annotations

import numpy as np

#: alpha (and 0..255 mask values) at or above this count as "on": JPEG noise and anti-aliased edges
#: never reach 255, and the middle of the scale splits them
MASK_THRESHOLD = 128

_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")


def mask_plane(image) -> np.ndarray:
    """The pixel values of a PIL mask image as one H×W plane.

    Parameters
    ----------
    image : PIL.Image.Image
        A mask in any mode. Single-plane modes (``1``, ``L``, ``P``, ``I;16``, ``I``, ``F``) pass
        through as they are (a palette image gives its indices).

    Returns
    -------
    numpy.ndarray
        H×W, the image's dtype. Colour channels are max-combined, so a mask drawn in any colour
        counts as drawn (a red lesion beside a green one is one foreground). A constant alpha
        is dropped; a varying alpha keeps the colour where alpha >= :data:`MASK_THRESHOLD` and
        is the mask itself when every colour channel is 0 (a mask drawn in alpha only).

    Examples
    --------
    >>> from PIL import Image
    >>> green = np.zeros((2, 2, 3), np.uint8); green[0, 0] = (0, 255, 0)
    >>> mask_plane(Image.fromarray(green)).tolist()
    [[255, 0], [0, 0]]
    """
    arr = np.asarray(image)
    if arr.ndim != 3:
        return arr
    has_alpha = image.mode in _ALPHA_MODES
    value = (arr[..., :-1] if has_alpha else arr).max(axis=-1)
    if has_alpha:
        alpha = arr[..., -1]
        if alpha.min() != alpha.max():
            value = alpha if value.max() == 0 else np.where(alpha >= MASK_THRESHOLD, value, 0)
    return value
