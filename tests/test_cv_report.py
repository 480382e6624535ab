"""``bus-nnunet cv-report`` on a real (tiny) nnU-Net results folder (nnUNetTrainerUS trained for
folds 0 and 1, folds 2-4 missing) and, for the paired statistics, on a hand-made results folder
whose per-image Dice values are known."""
import csv
import json

from pathlib import Path

import numpy as np
import pytest

import _nnunet


@pytest.fixture
def trained(trained_us):
    return trained_us


def test_cv_report_on_trained_folds(trained, tmp_path):
    ds, env = trained
    out = tmp_path / "report"
    proc = _nnunet.run(["bus-nnunet", "cv-report", ds.dataset_id, "-tr", "nnUNetTrainerUS",
                        "-o", out, "--bootstrap", "500", "--no-progress"], env)
    assert "fold(s) [2, 3, 4] missing" in proc.stdout
    report = json.loads((out / "metrics.json").read_text())
    us = report["trainers"]["nnUNetTrainerUS"]
    assert us["folds_found"] == [0, 1] and us["folds_missing"] == [2, 3, 4]

    # the cases scored are exactly nnU-Net's validation cases of those folds (splits_final.json)
    splits = json.loads((ds.root / "preprocessed" / "Dataset990_SyntheticUS" / "splits_final.json").read_text())
    with open(out / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case_id"] for r in rows) == sorted(splits[0]["val"] + splits[1]["val"])
    # fold summaries agree with the per-case rows; the over-folds mean is the mean of fold means
    fold_means = []
    for fold in (0, 1):
        dice = [float(r["dice"]) for r in rows if r["fold"] == str(fold)]
        assert us["per_fold"][str(fold)]["per_image"]["dice"]["mean"] == pytest.approx(np.mean(dice), abs=1e-5)
        fold_means.append(np.mean(dice))
    assert us["over_folds"]["dice"]["mean"] == pytest.approx(np.mean(fold_means), abs=1e-5)
    assert us["all_cases"]["n_cases"] == len(rows)
    # our Dice of nnU-Net's own validation agrees with nnU-Net's summary.json where both are defined
    summary0 = json.loads((_nnunet.model_folder(env, "nnUNetTrainerUS") / "fold_0" / "validation" /
                           "summary.json").read_text())
    for case in summary0["metric_per_case"]:
        cid = case["prediction_file"].rsplit("/", 1)[-1][:-len(".png")]
        theirs = case["metrics"]["1"]["Dice"]
        ours = next(float(r["dice"]) for r in rows if r["case_id"] == cid)
        if theirs == theirs:  # NaN (both empty) is 1 under our rule
            assert ours == pytest.approx(theirs, abs=1e-5)
        else:
            assert ours == 1.0

    md = (out / "report.md").read_text()
    assert "missing" in md and "Dice (folds)" in md
    assert r"\begin{tabular}" in (out / "table.tex").read_text()
    for fig in ("dice_per_image.png", "roc_pixels.png", "montage_nnUNetTrainerUS.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    assert set(report["pixel_auc"]) == {"nnUNetTrainerUS"}  # fold 0 was trained with --npz
    assert [c["which"] for c in report["montage_cases"]["nnUNetTrainerUS"]] == ["best", "median", "worst"]


def _square(top, left, size, shape=(16, 16)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def test_cv_report_paired_statistics_on_known_results(nnunet_env, tmp_path):
    """Two trainers on six images of a hand-made results folder: trainer A is perfect, trainer B
    shifts each 4x4 lesion by one column (Dice 0.75), so every paired difference is +0.25."""
    from PIL import Image
    from bus_nnunet.cli import main
    ds = "Dataset991_Known"
    gt = Path(nnunet_env["nnUNet_preprocessed"]) / ds / "gt_segmentations"
    gt.mkdir(parents=True)
    (Path(nnunet_env["nnUNet_raw"]) / ds).mkdir(parents=True)
    for i in range(6):
        fold = i % 2
        ref = _square(2 + i, 3, 4)
        Image.fromarray(ref).save(gt / f"k_{i}.png")
        for trainer, pred in (("A", ref), ("B", _square(2 + i, 4, 4))):
            val = Path(nnunet_env["nnUNet_results"]) / ds / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" / "validation"
            val.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pred).save(val / f"k_{i}.png")
    out = tmp_path / "report"
    assert main(["cv-report", "991", "-tr", "A", "B", "-f", "0", "1", "-o", str(out), "--bootstrap", "200",
                 "--no-progress"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    assert read_cross_validation_report(out).to_json() == report  # the reader gives back what the writer wrote
    assert report["trainers"]["B"]["over_folds"]["dice"]["mean"] == pytest.approx(0.75)
    assert report["trainers"]["B"]["dice_ci95"]["low"] == pytest.approx(0.75)
    dice = next(c for c in report["comparisons"] if c["metric"] == "dice")
    assert dice["n_pairs"] == 6 and dice["mean_difference"] == pytest.approx(0.25)
    # six tied differences, all positive: 1 of the 2^6 sign patterns on each side is as extreme
    expected_p = 2 / 2 ** 6
    assert dice["p_value"] == pytest.approx(expected_p) and dice["p_method"] == "exact"
    assert (dice["n_nonzero"], dice["n_a_better"], dice["n_b_better"]) == (6, 6, 0)
    # three metrics compared, one pair each: Holm on a single p-value leaves it unchanged
    assert dice["p_holm"] == pytest.approx(expected_p)
    hd = next(c for c in report["comparisons"] if c["metric"] == "hd95")
    assert hd["mean_difference"] == pytest.approx(-1.0)  # perfect vs one-pixel shift
    report_md = (out / "report.md").read_text()
    dice_row = next(line for line in report_md.splitlines() if line.startswith("| dice | A vs B"))
    assert "| 6 / 0 |" in dice_row and "| 0.0312 |" in dice_row  # win split, p = 2/64 printed


def test_p_values_are_never_printed_as_zero():
    from bus_nnunet.evaluation.cross_validation import format_p
    assert format_p(2.8e-11) == "<0.0001" and format_p(0.03125) == "0.0312" and format_p(float("nan")) == "-"


def test_cv_report_missing_trainer_is_user_error(trained, tmp_path):
    ds, env = trained
    proc = _nnunet.run(["bus-nnunet", "cv-report", ds.dataset_id, "-tr", "NoSuchTrainer", "-o", tmp_path / "r"],
                       env, check=False)
    assert proc.returncode == 1 and "unknown trainer 'NoSuchTrainer'" in proc.stderr
    assert "trained here with nnUNetPlans / 2d: nnUNetTrainerUS" in proc.stderr
    # a typo beside a real trainer is an error with the close match, not an empty row
    proc = _nnunet.run(["bus-nnunet", "cv-report", ds.dataset_id, "-tr", "nnUNetTrainerUS", "nnUNetTrainerSU",
                        "-o", tmp_path / "r"], env, check=False)
    assert proc.returncode == 1 and "did you mean nnUNetTrainerUS?" in proc.stderr and not (tmp_path / "r").exists()


def test_gradcam_on_trained_model(trained, tmp_path):
    ds, env = trained
    folder = _nnunet.model_folder(env, "nnUNetTrainerUS")
    image = sorted((ds.raw / "imagesTs").glob("*_0000.png"))[0]
    case = image.name[: -len("_0000.png")]
    out = tmp_path / "cam"
    proc = _nnunet.run(["bus-nnunet", "gradcam", folder, "-i", image, "-o", out, "-f", "1"], env)
    # default target: the last full-resolution decoder convolution of nnU-Net's PlainConvUNet
    assert "'decoder.stages.3.convs.1.conv'" in proc.stdout
    cam = np.load(out / f"{case}_cam.npy")
    assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1 and np.isfinite(cam).all()
    from PIL import Image
    overlay = np.array(Image.open(out / f"{case}_gradcam.png"))
    assert overlay.shape == (64, 64, 3)
    assert set(np.unique(np.array(Image.open(out / f"{case}_mask.png")))) <= {0, 255}
    bad = _nnunet.run(["bus-nnunet", "gradcam", folder, "-i", image, "-o", tmp_path / "x", "--layer", "nope"],
                      env, check=False)
    assert bad.returncode == 1 and "layer 'nope'" in bad.stderr
    listed = _nnunet.run(["bus-nnunet", "gradcam", folder, "--list-layers", "-f", "1"], env).stdout
    assert "decoder.stages.3.convs.1.conv" in listed and listed.count("<- default") == 1
    assert next(line for line in listed.splitlines() if "<- default" in line).startswith("decoder.stages.3.convs.1.conv")


def test_gradcam_default_layer_works_for_ssnet():
    """SS-Net ends in a patch expansion (Linear, BHWC), so it runs no wide convolution at full
    resolution: the default is its last convolution at the finest resolution reached (1/4)."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    from bus_nnunet.evaluation.gradcam import default_target_layer
    from bus_nnunet.network_architectures import create_model
    torch.manual_seed(0)
    net = create_model("ssnet", in_channels=1, num_classes=2, input_size=128).eval()
    layer = default_target_layer(net, (1, 1, 128, 128), 2)
    target = dict(net.named_modules())[layer]
    assert isinstance(target, torch.nn.Conv2d) and target.out_channels > 2
    x = torch.randn(1, 1, 128, 128)
    with GradCAM(model=net, target_layers=[target]) as cam:
        heat = cam(input_tensor=x, targets=[SemanticSegmentationTarget(1, np.ones((128, 128), np.float32))])[0]
    assert heat.shape == (128, 128) and np.isfinite(heat).all() and heat.max() > 0


def test_cv_report_refuses_a_fold_with_missing_validation_cases(nnunet_env, tmp_path, capsys):
    """A fold whose validation stopped halfway (1 of its 3 cases in splits_final.json written) is an
    error naming the fold and the cases; --allow-missing scores them as empty predictions."""
    from PIL import Image
    from bus_nnunet.cli import main
    ds = "Dataset992_Partial"
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / ds
    (pre / "gt_segmentations").mkdir(parents=True)
    (Path(nnunet_env["nnUNet_raw"]) / ds).mkdir(parents=True)
    val = Path(nnunet_env["nnUNet_results"]) / ds / "A__nnUNetPlans__2d" / "fold_0" / "validation"
    val.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_square(2, 3, 4)).save(pre / "gt_segmentations" / f"p_{i}.png")
    Image.fromarray(_square(2, 3, 4)).save(val / "p_0.png")
    (pre / "splits_final.json").write_text(json.dumps([{"train": [], "val": ["p_0", "p_1", "p_2"]}]))
    args = ["cv-report", "992", "-tr", "A", "-f", "0", "-o", str(tmp_path / "r"), "--bootstrap", "50", "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "A fold 0" in err and "2 of 3 reference case(s) have no prediction" in err and "p_1, p_2" in err
    assert not (tmp_path / "r").exists()
    assert main(args + ["--allow-missing"]) == 0
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert report["trainers"]["A"]["all_cases"]["per_image"]["dice"]["mean"] == pytest.approx(1 / 3)


def test_cv_report_refuses_two_files_for_one_case(nnunet_env, tmp_path, capsys):
    """Issue 22: a validation folder with both k_0.png and k_0.nii.gz is an error naming both, not
    a score of whichever sorts first."""
    import nibabel
    from PIL import Image
    from bus_nnunet.cli import main
    ds = "Dataset993_Clash"
    gt = Path(nnunet_env["nnUNet_preprocessed"]) / ds / "gt_segmentations"
    gt.mkdir(parents=True)
    (Path(nnunet_env["nnUNet_raw"]) / ds).mkdir(parents=True)
    val = Path(nnunet_env["nnUNet_results"]) / ds / "A__nnUNetPlans__2d" / "fold_0" / "validation"
    val.mkdir(parents=True)
    Image.fromarray(_square(2, 3, 4)).save(gt / "k_0.png")
    Image.fromarray(_square(2, 3, 4)).save(val / "k_0.png")
    nibabel.save(nibabel.Nifti1Image(np.zeros((16, 16), np.uint8), np.eye(4)), str(val / "k_0.nii.gz"))
    assert main(["cv-report", "993", "-tr", "A", "-f", "0", "-o", str(tmp_path / "r"), "--bootstrap", "50",
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "k_0.nii.gz and k_0.png" in err and "fold_0" in err and not (tmp_path / "r").exists()


def test_cv_report_hd95_convention(nnunet_env, tmp_path):
    """Issue 23: cv-report --hd95 max scores a perfect lesion plus a far speck by the speck's
    distance (see test_evaluation.speck_case: 30 px; pooled: 0) and says so in every report; the
    montage reads an RGB raw image as the converters do (grey)."""
    from PIL import Image
    from bus_nnunet.cli import main
    ds = "Dataset994_Speck"
    gt = Path(nnunet_env["nnUNet_preprocessed"]) / ds / "gt_segmentations"
    gt.mkdir(parents=True)
    raw = Path(nnunet_env["nnUNet_raw"]) / ds / "imagesTr"
    raw.mkdir(parents=True)
    val = Path(nnunet_env["nnUNet_results"]) / ds / "A__nnUNetPlans__2d" / "fold_0" / "validation"
    val.mkdir(parents=True)
    ref = np.zeros((40, 80), np.uint8)
    ref[10:30, 10:30] = 1
    pred = ref.copy()
    pred[19:21, 59:62] = 1
    Image.fromarray(ref).save(gt / "s_0.png")
    Image.fromarray(pred).save(val / "s_0.png")
    Image.fromarray(np.full((40, 80, 3), (40, 90, 200), np.uint8)).save(raw / "s_0_0000.png")
    for convention, expected in (("pooled", 0.0), ("max", 30.0)):
        out = tmp_path / convention
        assert main(["cv-report", "994", "-tr", "A", "-f", "0", "-o", str(out), "--bootstrap", "50", "--no-progress",
                     "--hd95", convention]) == 0
        report = json.loads((out / "metrics.json").read_text())
        assert report["hd95_convention"] == convention == report["trainers"]["A"]["all_cases"]["hd95_convention"]
        assert report["trainers"]["A"]["all_cases"]["per_image"]["hd95"]["mean"] == pytest.approx(expected)
        assert f"HD95 convention `--hd95 {convention}`" in (out / "report.md").read_text()
        assert f"--hd95 {convention}" in (out / "table.tex").read_text()
