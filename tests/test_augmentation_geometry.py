"""What nnUNetTrainerUS's augmentation and test-time mirroring do to image geometry, measured.

B-mode images have the probe at the top, so the only valid mirror is left-right (lateral) and
rotations stay small. A marker sample goes through the real training transforms the trainer
builds (spatial, intensity, mirror, label clean-up and deep-supervision targets, in nnU-Net's
order), and the predictor's test-time mirroring is recorded at the network's input. nnU-Net's
own 2D augmentation (both-axis mirroring, +-180 degree rotation) is the control: the same
measurements must see it break both rules, otherwise they could not catch a regression.
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

# marker label -> (row, col) offset from the sample centre; rows = depth, cols = lateral. 1 and 3
# share a column (1 shallower), 1 and 2 share a row (1 on the left); no marker's mirror image lands
# on another marker. All stay in the patch at the strongest zoom (scaling 0.7) and any rotation.
MARKERS = {1: (-14, -12), 2: (-14, 2), 3: (6, -12), 4: (14, 8)}
RADIUS = 3
MAX_ROTATION_DEG = 15.0  # the documented promise, not augmentation.US_MAX_ROTATION_DEG
N_SAMPLES = 300


def _trainer(planned_dataset, tmp_path, monkeypatch, ultrasound=True):
    from bus_nnunet.trainers import nnUNetTrainerUS
    for k, v in planned_dataset.results_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    pre = Path(planned_dataset.env["nnUNet_preprocessed"]) / "Dataset990_SyntheticUS"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    trainer = nnUNetTrainerUS(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))
    trainer.ultrasound_augmentation = ultrasound  # False: nnU-Net's own augmentation (the control)
    return trainer


def _training_transforms(trainer):
    """The transforms and input patch size exactly as nnUNetTrainer.get_dataloaders builds them."""
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    transforms = trainer.get_training_transforms(
        trainer.configuration_manager.patch_size, rotation, trainer._get_deep_supervision_scales(), mirror_axes,
        dummy_2d, use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm,
        is_cascaded=trainer.is_cascaded, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    return transforms, tuple(int(s) for s in initial_patch_size)


def _marker_sample(shape):
    """(image, segmentation, marker centroids): disc k has label k in the segmentation and value 1 in
    the image (0 elsewhere), as nnU-Net's data loader hands them over (float image, int16 labels)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    seg = np.zeros((1, *shape), np.int16)
    centre = (shape[0] / 2, shape[1] / 2)  # SpatialTransform's centre without random cropping
    for k, (dr, dc) in MARKERS.items():
        seg[0][(rows - centre[0] - dr) ** 2 + (cols - centre[1] - dc) ** 2 <= RADIUS ** 2] = k
    return (seg > 0).astype(np.float32), seg, _centroids(seg[0])


def _centroids(seg):
    rows, cols = np.mgrid[:seg.shape[0], :seg.shape[1]]
    return np.array([(rows[seg == k].mean(), cols[seg == k].mean()) for k in MARKERS])


def _measure(transforms, shape, n=N_SAMPLES):
    """Per seeded sample: lateral flip (bool), rotation angle (degrees), scale, and checks of the
    estimate (affine residual, deviation from a similarity, image/label agreement)."""
    image, seg, src = _marker_sample(shape)
    flip_lateral = np.diag([1.0, -1.0])
    out = []
    for seed in range(n):
        np.random.seed(seed)  # SpatialTransform samples with numpy, MirrorTransform with torch
        torch.manual_seed(seed)
        sample = transforms(image=torch.from_numpy(image.copy()), segmentation=torch.from_numpy(seg.copy()))
        labels = sample["segmentation"][0][0].numpy()  # full-resolution deep-supervision target
        img = sample["image"][0].numpy()
        assert set(np.unique(labels)) == {0, *MARKERS}, f"seed {seed}: a marker left the patch"
        dst = _centroids(labels)
        # dst = M @ src + t, least squares over the 4 markers (the spatial transform is affine)
        design = np.c_[src, np.ones(len(src))]
        sol = np.linalg.lstsq(design, dst, rcond=None)[0]
        m = sol[:2].T
        residual = np.abs(design @ sol - dst).max()
        flipped = np.linalg.det(m) < 0
        rot = m @ flip_lateral if flipped else m  # M = s R(theta) [F_lateral]; F_lateral @ F_lateral = I
        scale = math.sqrt(abs(np.linalg.det(m)))
        angle = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        non_similarity = np.abs(rot / scale - np.array([[c, -s], [s, c]])).max()
        # image and labels moved together: each marker is brighter in the image than the background
        contrast = min(img[labels == k].mean() - img[labels == 0].mean() for k in MARKERS)
        out.append({"seed": seed, "flipped": flipped, "angle": angle, "scale": scale, "residual": residual,
                    "non_similarity": non_similarity, "contrast": contrast, "dst": dst})
    return out


def test_training_augmentation_mirrors_only_laterally_and_rotates_at_most_15_degrees(
        planned_dataset, tmp_path, monkeypatch):
    transforms, shape = _training_transforms(_trainer(planned_dataset, tmp_path, monkeypatch))
    kinds = [type(getattr(t, "transform", t)).__name__ for t in transforms.transforms]
    assert {"SpatialTransform", "MirrorTransform", "SpeckleNoiseTransform"} <= set(kinds)  # the full pipeline
    samples = _measure(transforms, shape)
    for r in samples:
        # the estimate is valid: an exact similarity transform (no elastic deformation in nnU-Net 2D)
        assert r["residual"] < 0.5 and r["non_similarity"] < 0.1, r
        assert r["contrast"] > 0.1, r
        # depth stays depth: marker 1 stays above marker 3 (the probe side stays on top)
        assert r["dst"][0, 0] < r["dst"][2, 0] - 10, r
        # a flip of the fitted map is a lateral flip: marker 1 is then right of marker 2
        assert r["flipped"] == (r["dst"][0, 1] > r["dst"][1, 1]), r
        assert abs(r["angle"]) <= MAX_ROTATION_DEG + 1.0, r  # 1 degree: centroid error
    flips = sum(r["flipped"] for r in samples)
    assert 0.35 * N_SAMPLES < flips < 0.65 * N_SAMPLES  # MirrorTransform flips with p = 0.5
    angles = np.abs([r["angle"] for r in samples])
    assert (angles > 1.0).sum() > 0.1 * N_SAMPLES and angles.max() > 12.0  # rotation is used (p = 0.2)


def test_control_nnunet_default_augmentation_is_seen_flipping_depth_and_rotating_far(
        planned_dataset, tmp_path, monkeypatch):
    transforms, shape = _training_transforms(_trainer(planned_dataset, tmp_path, monkeypatch, ultrasound=False))
    samples = _measure(transforms, shape, n=100)
    assert all(r["residual"] < 0.5 and r["non_similarity"] < 0.1 for r in samples)
    assert any(r["dst"][0, 0] > r["dst"][2, 0] for r in samples)       # upside down
    assert max(abs(r["angle"]) for r in samples) > 90.0


class _RecordingNetwork(nn.Module):
    """The trained network, keeping a copy of every input the predictor gives it."""

    def __init__(self, network):
        super().__init__()
        self.network, self.inputs = network, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.network(x)


def _classify(x, tile):
    names = {"identity": tile, "lateral": torch.flip(tile, (-1,)), "depth": torch.flip(tile, (-2,)),
             "both": torch.flip(tile, (-2, -1))}
    return next((name for name, ref in names.items() if torch.equal(x, ref)), "other")


def test_predictor_test_time_mirroring_flips_only_laterally(planned_dataset, tmp_path, monkeypatch):
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer = _trainer(planned_dataset, tmp_path, monkeypatch)
    trainer.initialize()
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # done at training start
    # a checkpoint and folder as nnUNetv2_train leaves them, loaded the way nnUNetv2_predict loads them
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    save_json(trainer.plans_manager.plans, str(Path(trainer.output_folder_base) / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(Path(trainer.output_folder_base) / "dataset.json"), sort_keys=False)
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(trainer.output_folder_base, use_folds=(0,))
    assert predictor.allowed_mirroring_axes is not None and tuple(predictor.allowed_mirroring_axes) == (1,)

    torch.manual_seed(0)
    image = torch.randn(1, 1, *trainer.configuration_manager.patch_size)  # (channel, slice, depth, lateral)
    tile = image[:, 0][None]  # the one sliding-window tile the network sees, (batch, channel, depth, lateral)
    seen = {}
    for axes in ((1,), (0, 1)):  # ours, then nnU-Net's 2D default as the control
        predictor.allowed_mirroring_axes = axes
        predictor.network = recorder = _RecordingNetwork(getattr(predictor.network, "network", predictor.network))
        logits = predictor.predict_sliding_window_return_logits(image)
        assert logits.shape == (2, 1, *trainer.configuration_manager.patch_size)
        seen[axes] = sorted(_classify(x, tile) for x in recorder.inputs)
    assert seen[(1,)] == ["identity", "lateral"]
    assert seen[(0, 1)] == ["both", "depth", "identity", "lateral"]
