"""``bus-nnunet predict`` / ``classify`` with several models (issue 23): each model ensembles its
folds with nnU-Net's predictor, then the models' probabilities are averaged (weighted if asked),
exactly as ``nnUNetv2_predict --save_probabilities`` of each model followed by
``nnUNetv2_ensemble``; models that cannot be averaged are refused, naming each."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _nnunet
from bus_nnunet.inference import images as U
from bus_nnunet.errors import UserError

PATCH_32_PLANS = "nnUNetPlansP32"


def _train_stock_trainer_on_a_32px_patch(ds, env) -> Path:
    """nnU-Net's own nnUNetTrainer on a copy of the plans with a 32x32 patch (the dataset's
    preprocessed data, other network input size and all-axes mirroring): a second model unlike
    nnUNetTrainerUS's 64x64 one."""
    preprocessed = ds.root / "preprocessed" / ds.raw.name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    plans["plans_name"] = PATCH_32_PLANS
    plans["configurations"]["2d"]["patch_size"] = [32, 32]
    (preprocessed / f"{PATCH_32_PLANS}.json").write_text(json.dumps(plans, indent=2))
    _nnunet.run([sys.executable, "-m", "bus_nnunet.study.budget_train", ds.dataset_id, "2d", 0,
                 "-tr", "nnUNetTrainer", "-p", PATCH_32_PLANS, "-device", "cpu"], {**env, **_nnunet.SMOKE_SCHEDULE})
    return Path(env["nnUNet_results"]) / ds.raw.name / f"nnUNetTrainer__{PATCH_32_PLANS}__2d"


def _nnunet_predict(ds, env, converted: Path, out: Path, trainer: str, plans: str, folds):
    _nnunet.run(["nnUNetv2_predict", "-i", converted, "-o", out, "-d", ds.dataset_id, "-c", "2d", "-tr", trainer,
                 "-p", plans, "-f", *folds, "-device", "cpu", "-npp", "0", "-nps", "0", "--save_probabilities"], env)


def _probabilities(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["probabilities"]


def test_two_trainers_with_different_patch_sizes_equal_nnunet_predict_then_ensemble(trained_us, tmp_path):
    ds, env = trained_us
    model_a = _nnunet.model_folder(env, "nnUNetTrainerUS")  # 64x64 patch, folds 0 and 1
    model_b = _train_stock_trainer_on_a_32px_patch(ds, env)  # 32x32 patch, fold 0
    tests = sorted((ds.raw / "imagesTs").glob("*_0000.png"))
    grey = np.asarray(Image.open(tests[0]))
    images = tmp_path / "mixed"
    images.mkdir()
    Image.fromarray(grey).save(images / "grey.png")
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(images / "rgb.png")
    Image.fromarray(grey).save(images / "photo.jpg", quality=90)
    Image.open(tests[1]).save(images / "second.png")
    converted = tmp_path / "converted"  # the images as the converters write them for nnU-Net
    converted.mkdir()
    for f in images.iterdir():
        Image.fromarray(U.read_for_model(f, False)[0, 0].astype(np.uint8)).save(converted / f"{f.stem}_0000.png")

    out = tmp_path / "ensemble"
    proc = _nnunet.run(["bus-nnunet", "predict", "-i", images, "-m", model_a, "-m", model_b, "-o", out,
                        "--save-probabilities", "--uncertainty", "--no-progress"], env)
    assert "an ensemble of 2 models" in proc.stdout and "fold(s) 0, 1, weight 0.5" in proc.stdout
    _nnunet_predict(ds, env, converted, tmp_path / "ref_a", "nnUNetTrainerUS", "nnUNetPlans", (0, 1))
    _nnunet_predict(ds, env, converted, tmp_path / "ref_b", "nnUNetTrainer", PATCH_32_PLANS, (0,))
    _nnunet.run(["nnUNetv2_ensemble", "-i", tmp_path / "ref_a", tmp_path / "ref_b", "-o", tmp_path / "ref",
                 "--save_npz", "-np", "1"], env)

    rows = {Path(r["input"]).stem: r for r in csv.DictReader(open(out / "summary.csv"))}
    for name in ("grey", "rgb", "photo", "second"):
        ours = _probabilities(out / "probabilities" / f"{name}.npz")
        expected = _probabilities(tmp_path / "ref" / f"{name}.npz")
        assert ours.shape == expected.shape == (2, 1, *grey.shape) and ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6, err_msg=name)
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "ref" / f"{name}.png")), err_msg=name)
        members = [np.asarray(Image.open(tmp_path / ref / f"{name}.png")) > 0 for ref in ("ref_a", "ref_b")]
        row = rows[name]
        assert int(row[f"foreground_pixels_{model_a.name}"]) == members[0].sum()
        assert int(row[f"foreground_pixels_{model_b.name}"]) == members[1].sum()
        both = members[0].sum() + members[1].sum()
        dice = 2 * (members[0] & members[1]).sum() / both if both else 1.0
        assert float(row["mean_pairwise_dice"]) == pytest.approx(dice, abs=1e-4)
        entropy = np.asarray(Image.open(out / "uncertainty" / f"{name}_entropy.png")) / 255
        p = np.clip(expected[:, 0].astype(np.float64), 1e-12, 1)
        np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(0) / np.log(2), atol=1 / 255 + 1e-6)
        disagreement = np.asarray(Image.open(out / "uncertainty" / f"{name}_disagreement.png"))
        np.testing.assert_array_equal(disagreement, np.round(255 * np.mean([m != (mask > 0) for m in members], 0)))
    assert rows["grey"]["mask"] == "masks/grey.png" and rows["grey"]["probabilities"] == "probabilities/grey.npz"
    # ... which bus-nnunet's readers of nnU-Net probabilities read
    from bus_nnunet.evaluation.folder import read_foreground_probability
    assert read_foreground_probability(out / "probabilities" / "grey.npz").shape == grey.shape

    # --weights: the weighted mean, normalised by the sum of the weights
    from bus_nnunet.inference.segmentation import predict_images
    predict_images([images / "second.png"], [model_a, model_b], tmp_path / "weighted", weights=[3, 1],
                   device="cpu", progress=False, save_probabilities=True)
    a, b = (_probabilities(tmp_path / ref / "second.npz") for ref in ("ref_a", "ref_b"))
    np.testing.assert_allclose(_probabilities(tmp_path / "weighted" / "probabilities" / "second.npz"),
                               (3 * a + b) / 4, rtol=0, atol=1e-6)


def _fake_model(folder: Path, labels=None, channels=None) -> Path:
    (folder / "fold_0").mkdir(parents=True)
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")  # refused before it is loaded
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": channels or {"0": "US"}, "labels": labels or {"background": 0, "lesion": 1},
        "numTraining": 1, "file_ending": ".png"}))
    return folder


@pytest.mark.parametrize("command", ["predict", "classify"])
def test_models_with_other_labels_or_channels_or_weights_are_refused(tmp_path, capsys, command):
    """Refused before any weight is loaded, naming every model and what it has; nothing written."""
    from bus_nnunet.cli import main
    image = tmp_path / "a.png"
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(image)
    lesion = _fake_model(tmp_path / "lesion")
    two_labels = _fake_model(tmp_path / "two_labels", labels={"background": 0, "benign": 1, "malignant": 2})
    rgb = _fake_model(tmp_path / "rgb", channels={"0": "R", "1": "G", "2": "B"})
    out = tmp_path / ("out" if command == "predict" else "out.csv")
    for models, extra, expected in (
            ([lesion, two_labels], [], f"the models differ in their labels, so their probabilities cannot be "
                                       f"averaged: {lesion}: {{'background': 0, 'lesion': 1}}; {two_labels}: "
                                       f"{{'background': 0, 'benign': 1, 'malignant': 2}}"),
            ([lesion, rgb], [], f"the models differ in their input channels, so their probabilities cannot be "
                                f"averaged: {lesion}: {{'0': 'US'}}; {rgb}: {{'0': 'R', '1': 'G', '2': 'B'}}"),
            ([lesion, lesion], ["--weights", "1"], "--weights gives 1 weight(s) for 2 model(s)"),
            ([lesion, lesion], ["--weights", "1", "0"], "--weights must be positive numbers")):
        argv = [command, "-i", image, *[a for m in models for a in ("-m", m)], "-o", out, *extra]
        assert main([str(a) for a in argv]) == 1
        assert expected in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(UserError, match="no model given"):
        from bus_nnunet.inference.segmentation import load_ensemble
        load_ensemble([])
