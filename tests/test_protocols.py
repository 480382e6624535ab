"""Evaluation protocols: the empty-mask rule (``--empty-truth one|zero``) through the real
``evaluate`` and ``cv-report`` commands with hand-computed values, and the conversion recipe of the
attention U-Net paper (Anari et al., Sci Rep 2025: all 780 BUSI images, 80/10/10 split)."""
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import dataset_replicas as replicas  # noqa: E402

from bus_nnunet.cli import main  # noqa: E402
from bus_nnunet.evaluation import folder as F  # noqa: E402
from bus_nnunet.evaluation import metrics as M  # noqa: E402


def _square(top, left, size=4, shape=(20, 20)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


EMPTY = np.zeros((20, 20), np.uint8)
# a 4x4 lesion predicted one column off: overlap 12 of 16 pixels each side
LESION, SHIFTED = _square(2, 2), _square(2, 3)
D, J = 2 * 12 / 32, 12 / 20  # Dice 0.75, IoU 0.6


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _evaluate(tmp_path, *extra):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for name, ref, prd in (("normal", EMPTY, EMPTY), ("lesion", LESION, SHIFTED)):
        _save(gt / f"{name}.png", ref)
        _save(pred / f"{name}.png", prd)
    out = tmp_path / ("out" + "_".join(extra))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(out), "--no-progress", *extra]) == 0
    with open(out / "per_case.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    return json.loads((out / "metrics.json").read_text()), rows, (out / "summary.md").read_text()


def test_evaluate_empty_truth_rules(tmp_path):
    default, rows, md = _evaluate(tmp_path)
    per = default["all"]["per_image"]
    assert per["dice"]["mean"] == pytest.approx((1 + D) / 2) and per["iou"]["mean"] == pytest.approx((1 + J) / 2)
    assert default["empty_truth"] == "one" == default["all"]["empty_truth"]
    assert float(rows["normal"]["dice"]) == 1.0 and "`--empty-truth one`" in md

    paper, rows, md = _evaluate(tmp_path, "--empty-truth", "zero")
    per = paper["all"]["per_image"]
    assert per["dice"]["mean"] == pytest.approx(D / 2) and per["iou"]["mean"] == pytest.approx(J / 2)
    assert per["precision"]["mean"] == pytest.approx(0.75 / 2) and per["recall"]["mean"] == pytest.approx(0.75 / 2)
    assert float(rows["normal"]["dice"]) == 0.0 and float(rows["lesion"]["dice"]) == pytest.approx(D)
    assert paper["empty_truth"] == "zero" and "0/0 -> 0" in paper["empty_rule"]
    assert "`--empty-truth zero`" in md
    # pixel sums and distances do not depend on the rule
    assert paper["all"]["pooled"]["dice"] == pytest.approx(D) == default["all"]["pooled"]["dice"]
    assert per["hd95"] == default["all"]["per_image"]["hd95"]


def test_zero_rule_reproduces_the_papers_degenerate_rows():
    """Anari et al. Table 1 rows 17/18/20: an all-foreground prediction on every test image gives
    recall = (number of lesion images) / (all images), because an empty truth scores 0, not NaN."""
    full = np.ones((20, 20), np.uint8)
    refs = [LESION, _square(5, 5, 5), _square(10, 8, 6), EMPTY, EMPTY]
    rows = {rule: [M.segmentation_metrics(r, full, empty_truth=rule) for r in refs] for rule in ("one", "zero")}
    zero = F.aggregate(rows["zero"], "zero")["per_image"]
    assert zero["recall"]["mean"] == pytest.approx(3 / 5) and zero["recall"]["n_nan"] == 0
    sizes = [16, 25, 36]
    expected_iou = sum(s / 400 for s in sizes) / 5  # IoU = precision = lesion / image on lesion images
    assert zero["iou"]["mean"] == pytest.approx(expected_iou) == zero["precision"]["mean"]
    one = F.aggregate(rows["one"], "one")["per_image"]
    assert one["recall"]["mean"] == 1.0 and one["recall"]["n_nan"] == 2  # undefined, left out
    # all-background prediction (the paper's row 19): 0 everywhere under the paper's rule
    bg = F.aggregate([M.segmentation_metrics(r, EMPTY, empty_truth="zero") for r in refs], "zero")
    assert bg["per_image"]["dice"]["mean"] == 0.0 and bg["per_image"]["recall"]["mean"] == 0.0
    with pytest.raises(ValueError, match="empty_truth"):
        M.dice_score(LESION, LESION, empty_truth="none")


def test_cv_report_empty_truth_rules(nnunet_env, tmp_path):
    """Fold 0: empty/empty + Dice 0.75; fold 1: perfect lesion + false positive on an empty truth."""
    ds = "Dataset992_Protocols"
    gt = Path(nnunet_env["nnUNet_preprocessed"]) / ds / "gt_segmentations"
    (Path(nnunet_env["nnUNet_raw"]) / ds).mkdir(parents=True)
    cases = {"a": (0, EMPTY, EMPTY), "b": (0, LESION, SHIFTED), "c": (1, LESION, LESION), "d": (1, EMPTY, LESION)}
    for cid, (fold, ref, prd) in cases.items():
        _save(gt / f"{cid}.png", ref)
        _save(Path(nnunet_env["nnUNet_results"]) / ds / "T__nnUNetPlans__2d" / f"fold_{fold}" / "validation" /
              f"{cid}.png", prd)
    expected = {"one": ((1 + D) / 2, 1 / 2), "zero": (D / 2, 1 / 2)}  # fold means of per-image Dice
    for rule, (fold0, fold1) in expected.items():
        out = tmp_path / rule
        assert main(["cv-report", "992", "-tr", "T", "-f", "0", "1", "-o", str(out), "--bootstrap", "100",
                     "--no-progress", "--empty-truth", rule]) == 0
        report = json.loads((out / "metrics.json").read_text())
        t = report["trainers"]["T"]
        assert report["empty_truth"] == rule == t["empty_truth"] == t["all_cases"]["empty_truth"]
        assert t["per_fold"]["0"]["per_image"]["dice"]["mean"] == pytest.approx(fold0)
        assert t["per_fold"]["1"]["per_image"]["dice"]["mean"] == pytest.approx(fold1)
        assert t["all_cases"]["per_image"]["dice"]["mean"] == pytest.approx((fold0 + fold1) / 2)
        assert f"`--empty-truth {rule}`" in (out / "report.md").read_text()
        assert f"--empty-truth {rule}" in (out / "table.tex").read_text()


def test_paper_split_recipe_gives_80_10_10(tmp_path):
    """``--keep-normal --test-fraction 0.1 --folds 9``: normals included, 10% test, and fold 0 of
    the remaining 90% is an 80/10 train/val split (the paper's 624/78/78 on BUSI's 780 images)."""
    source, facts = replicas.write_busi(tmp_path / "src", n_benign=20, n_malignant=12, n_normal=8)
    assert main(["convert", "busi", str(source), "-o", str(tmp_path / "raw"), "--no-progress", "--keep-normal",
                 "--test-fraction", "0.1", "--folds", "9"]) == 0
    folder = next((tmp_path / "raw").glob("Dataset*"))
    n_test = len(list((folder / "labelsTs").glob("*.png")))
    fold0 = json.loads((folder / "splits_final.json").read_text())[0]
    assert (len(fold0["train"]), len(fold0["val"]), n_test) == (32, 4, 4)
    with open(folder / "manifest.csv", newline="") as f:
        assert sum(r["class"] == "normal" for r in csv.DictReader(f)) == facts["n_normal"]
