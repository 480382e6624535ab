"""Ultrasound-aware data augmentation for nnU-Net (batchgeneratorsv2 transforms).

B-mode images have the probe at the top: depth runs down the rows, the beam attenuates with
depth and acoustic shadows point downwards.  nnU-Net's 2D defaults (both-axis mirroring, +-180
degree rotation) create images that cannot occur, so our trainers

* mirror only along the lateral axis (image columns), in training and in test-time mirroring,
* rotate by at most +-15 degrees,
* add three physics-motivated intensity transforms defined here: multiplicative speckle, an
  overall gain change and a time-gain-compensation style depth ramp.

Transforms act on one sample ``(C, X, Y)`` after nnU-Net's normalisation (z-score, so values
can be negative).  Multiplicative effects are therefore applied relative to the sample's
minimum, the darkest (anechoic) level, which keeps black black.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import ImageOnlyTransform

# B-mode geometry in nnU-Net's 2D sample layout (C, X, Y): X = depth (rows), Y = lateral (columns).
DEPTH_AXIS = 0    # spatial axis index as nnU-Net counts them (for mirror_axes)
LATERAL_AXIS = 1
US_MIRROR_AXES = (LATERAL_AXIS,)
US_MAX_ROTATION_DEG = 15.0


def _around_floor(img: torch.Tensor, fn):
    """Apply a multiplicative change ``fn(img - floor) + floor`` per channel, floor = channel min."""
    floor = img.flatten(1).amin(dim=1).view(-1, *([1] * (img.ndim - 1)))
    return fn(img - floor) + floor


class SpeckleNoiseTransform(ImageOnlyTransform):
    """Multiplicative speckle: ``I' = I * n`` with ``n ~ Gamma(L, 1/L)`` (mean 1, variance 1/L).

    Fully developed speckle in an envelope image is multiplicative with unit mean; ``looks`` L
    controls its strength (smaller L = stronger).  Applied around the channel minimum.
    """

    def __init__(self, looks_range: Tuple[float, float] = (4.0, 20.0)):
        super().__init__()
        self.looks_range = looks_range

    def get_parameters(self, **data_dict) -> dict:
        lo, hi = self.looks_range
        return {"looks": float(torch.empty(1).uniform_(lo, hi))}

    def _apply_to_image(self, img: torch.Tensor, looks: float) -> torch.Tensor:
        gamma = torch.distributions.Gamma(torch.tensor(looks), torch.tensor(looks))
        noise = gamma.sample(img.shape).to(img.dtype)
        return _around_floor(img, lambda x: x * noise)


class GainTransform(ImageOnlyTransform):
    """Overall receiver gain change: a global multiplicative factor around the channel minimum."""

    def __init__(self, gain_range: Tuple[float, float] = (0.7, 1.3)):
        super().__init__()
        self.gain_range = gain_range

    def get_parameters(self, **data_dict) -> dict:
        lo, hi = self.gain_range
        return {"gain": float(torch.empty(1).uniform_(lo, hi))}

    def _apply_to_image(self, img: torch.Tensor, gain: float) -> torch.Tensor:
        return _around_floor(img, lambda x: x * gain)


class DepthAttenuationTransform(ImageOnlyTransform):
    """Depth-dependent attenuation / imperfect time-gain compensation.

    Multiplies row ``r`` (depth ``d = r / (rows - 1)`` in [0, 1]) by ``exp(-alpha * d)``; a
    negative alpha models over-compensation (the image brightens with depth).  Rows are the
    depth axis because the probe is at the top of a B-mode image.
    """

    def __init__(self, alpha_range: Tuple[float, float] = (-0.5, 1.0)):
        super().__init__()
        self.alpha_range = alpha_range

    def get_parameters(self, **data_dict) -> dict:
        lo, hi = self.alpha_range
        return {"alpha": float(torch.empty(1).uniform_(lo, hi))}

    def _apply_to_image(self, img: torch.Tensor, alpha: float) -> torch.Tensor:
        rows = img.shape[1 + DEPTH_AXIS]
        depth = torch.linspace(0.0, 1.0, rows, dtype=img.dtype)
        shape = [1] * img.ndim
        shape[1 + DEPTH_AXIS] = rows
        ramp = torch.exp(-alpha * depth).view(shape)
        return _around_floor(img, lambda x: x * ramp)


def ultrasound_intensity_transforms():
    """The ultrasound intensity transforms with their application probabilities (RandomTransform-wrapped)."""
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    return [
        RandomTransform(SpeckleNoiseTransform(), apply_probability=0.2),
        RandomTransform(GainTransform(), apply_probability=0.2),
        RandomTransform(DepthAttenuationTransform(), apply_probability=0.2),
    ]


def us_rotation_range():
    """(min, max) rotation in radians for nnU-Net's SpatialTransform."""
    r = US_MAX_ROTATION_DEG / 180.0 * math.pi
    return (-r, r)
