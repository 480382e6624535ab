"""Procedural breast-ultrasound-like images, for the demo and for tests.

Each image is built like a B-mode scan: probe at the top, a bright skin line, subcutaneous fat,
textured glandular tissue and a deep muscle layer with wavy boundaries, multiplicative speckle
with a grain, and depth attenuation.  Lesions are hypoechoic:

* benign: a smooth, wider-than-tall oval with posterior acoustic enhancement,
* malignant: an irregular, spiculated, taller-than-wide mass with posterior shadowing,
* normal: no lesion (empty mask).

:func:`write_busi_layout` writes a dataset exactly in BUSI's distributed layout
(``Dataset_BUSI_with_GT/<class>/<class> (N).png`` + ``_mask.png``, extra ``_mask_1`` files for
multi-lesion cases), so the demo goes through the real BUSI converter.
:func:`write_nnunet_raw` writes an nnU-Net raw dataset directly (for tests).

An :class:`Acquisition` renders the same anatomy as another scanner / hospital would (gain,
speckle strength, depth attenuation, display gamma): a domain shift for external-validation
tests.  The default acquisition leaves every output as it was.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES = ("benign", "malignant", "normal")


@dataclass(frozen=True)
class Acquisition:
    """How one scanner renders the anatomy (1.0 everywhere: the images this module always made).

    ``gain`` scales the echo before the 8-bit display mapping (above 1 saturates the bright
    tissue), ``speckle`` scales the speckle's deviation from 1 (0: none, 2: twice as grainy),
    ``attenuation`` scales the depth attenuation coefficient (deep tissue darker), ``gamma`` is
    the display transfer ``255 * (v / 255) ** gamma`` (below 1 lifts the dark lesions)."""
    gain: float = 1.0
    speckle: float = 1.0
    attenuation: float = 1.0
    gamma: float = 1.0


DEFAULT_ACQUISITION = Acquisition()


def _smooth_noise(rng, shape, sigma):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


def _tissue(rng, h, w):
    """Echogenicity map (0..1) of the layered tissue, before speckle."""
    rows = np.arange(h)[:, None] / h
    cols = np.arange(w)[None, :] / w
    wave = lambda amp, freq, phase: amp * np.sin(2 * np.pi * (freq * cols + phase))  # noqa: E731
    skin = 0.04 + wave(0.005, 1, rng.random())
    fat = 0.04 + rng.uniform(0.12, 0.25) + wave(0.02, rng.uniform(0.5, 2), rng.random())
    gland = fat + rng.uniform(0.35, 0.5) + wave(0.03, rng.uniform(0.5, 2), rng.random())
    echo = np.where(rows < skin, 0.95, np.where(rows < fat, 0.3, np.where(rows < gland, 0.6, 0.45)))
    texture = _smooth_noise(rng, (h, w), max(1.0, h / 40))
    echo = echo + 0.12 * texture / (texture.std() + 1e-6) * (rows >= fat)
    return np.clip(echo, 0.05, 1.0), fat


def _lesion_mask(rng, h, w, kind, top):
    """Boolean lesion mask and its centre/size, in the glandular layer below ``top``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cy = rng.uniform(max(top.max() * h + 0.12 * h, 0.35 * h), 0.65 * h)
    cx = rng.uniform(0.3 * w, 0.7 * w)
    base = rng.uniform(0.09, 0.16) * min(h, w)
    theta = np.arctan2(yy - cy, xx - cx)
    if kind == "benign":  # smooth oval, wider than tall
        ax, ay = base * rng.uniform(1.2, 1.6), base * rng.uniform(0.7, 0.95)
        radius = 1.0 + 0.05 * np.sin(2 * theta + rng.uniform(0, 6.3))
    else:  # irregular, taller than wide, spiculated
        ax, ay = base * rng.uniform(0.8, 1.0), base * rng.uniform(1.0, 1.3)
        radius = 1.0
        for k in (3, 5, 7):
            radius = radius + rng.uniform(0.05, 0.12) * np.sin(k * theta + rng.uniform(0, 6.3))
        spikes = rng.integers(5, 10)
        radius = radius + 0.25 * np.maximum(0, np.cos(spikes * theta + rng.uniform(0, 6.3))) ** 8
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return r <= radius, (cy, cx, ax, ay)


def make_case(rng: np.random.Generator, size: Tuple[int, int] = (128, 128), kind: str = "benign",
              n_lesions: int = 1, acquisition: Optional[Acquisition] = None):
    """One synthetic B-mode image (uint8, H×W) and its lesion masks (list of bool H×W), rendered
    by ``acquisition`` (default: :data:`DEFAULT_ACQUISITION`; the random draws are the same for
    every acquisition, so one seed gives the same anatomy and masks on every scanner)."""
    acq = acquisition or DEFAULT_ACQUISITION
    if kind not in CLASSES:
        raise ValueError(f"kind must be one of {CLASSES}, got {kind!r}")
    h, w = size
    echo, fat = _tissue(rng, h, w)
    masks = []
    if kind != "normal":
        for _ in range(n_lesions):
            mask, (cy, cx, ax, ay) = _lesion_mask(rng, h, w, kind, fat)
            echo = np.where(mask, rng.uniform(0.06, 0.15), echo)
            # posterior effect: enhancement behind benign cysts, shadowing behind malignant masses
            below = np.zeros((h, w), bool)
            below[int(min(h - 1, cy + ay)):, int(max(0, cx - ax)):int(min(w, cx + ax))] = True
            echo = np.where(below & ~mask, echo * (1.35 if kind == "benign" else 0.45), echo)
            masks.append(mask)
    speckle = rng.rayleigh(1.0, (h, w))
    speckle = ndimage.gaussian_filter(speckle, 0.7) / 1.25
    if acq.speckle != 1.0:  # only when asked: the default images stay bit-identical
        speckle = np.maximum(1.0 + acq.speckle * (speckle - 1.0), 0.0)
    depth = np.exp(-rng.uniform(0.3, 0.9) * acq.attenuation * np.arange(h) / h)[:, None]
    img = echo * speckle * depth
    img = np.clip(img / np.percentile(img, 99.5) * 230 * acq.gain, 0, 255)
    if acq.gamma != 1.0:
        img = 255.0 * (img / 255.0) ** acq.gamma
    return img.astype(np.uint8), masks


def write_busi_layout(root, counts: Dict[str, int] = None, size=(128, 128), seed: int = 0,
                      multi_lesion_every: int = 7, acquisition: Optional[Acquisition] = None) -> Path:
    """Write a dataset in BUSI's distributed layout under ``root/Dataset_BUSI_with_GT``.

    Images are saved as RGB PNG (as BUSI ships them), masks as 0/255 grayscale PNG; every
    ``multi_lesion_every``-th lesion case gets a second lesion in a ``_mask_1`` file.
    """
    counts = counts or {"benign": 20, "malignant": 14, "normal": 6}
    rng = np.random.default_rng(seed)
    base = Path(root) / "Dataset_BUSI_with_GT"
    for kind, n in counts.items():
        folder = base / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            n_lesions = 2 if kind != "normal" and multi_lesion_every and i % multi_lesion_every == 0 else 1
            img, masks = make_case(rng, size, kind, n_lesions, acquisition)
            stem = f"{kind} ({i})"
            Image.fromarray(img).convert("RGB").save(folder / f"{stem}.png")
            if not masks:
                masks = [np.zeros(size, bool)]
            for j, m in enumerate(masks):
                suffix = "_mask" if j == 0 else f"_mask_{j}"
                Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"{stem}{suffix}.png")
    return base


def write_nnunet_raw(raw_root, dataset_id: int = 990, name: str = "SyntheticUS", n_cases: int = 16,
                     size=(64, 64), seed: int = 0, kinds: Sequence[str] = ("benign", "malignant"),
                     n_test: int = 0, acquisition: Optional[Acquisition] = None) -> Path:
    """Write ``raw_root/DatasetXXX_name`` in nnU-Net raw format (grayscale PNG, 0/1 labels),
    with a ``manifest.csv`` (case_id, class) like the converters write, rendered by
    ``acquisition`` (:class:`Acquisition`). Returns the folder."""
    rng = np.random.default_rng(seed)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if n_test else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = ["case_id,class,split"]
    for i in range(n_cases + n_test):
        kind = kinds[i % len(kinds)]
        img, masks = make_case(rng, size, kind, acquisition=acquisition)
        seg = np.zeros(size, np.uint8)
        for m in masks:
            seg[m] = 1
        case = f"{name.lower()}_{i:04d}"
        split = "Tr" if i < n_cases else "Ts"
        Image.fromarray(img).save(folder / f"images{split}" / f"{case}_0000.png")
        Image.fromarray(seg).save(folder / f"labels{split}" / f"{case}.png")
        rows.append(f"{case},{kind},{'train' if split == 'Tr' else 'test'}")
    dataset_json = {
        "channel_names": {"0": "US"},
        "labels": {"background": 0, "lesion": 1},
        "numTraining": n_cases,
        "file_ending": ".png",
        "name": name,
        "description": "procedurally generated ultrasound-like images (bus_nnunet.synthetic)",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder
