"""Segmentation metrics, statistics and ``bus-nnunet evaluate`` against values worked out by hand."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from bus_nnunet.cli import main
from bus_nnunet.evaluation import metrics as M
from bus_nnunet.evaluation.folder_report import read_folder_report
from bus_nnunet.evaluation import stats as S


def square(top, left, size=4, shape=(20, 20)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


# ---------------------------------------------------------------------------------------------------
# metrics
def test_overlap_metrics_by_hand():
    ref = square(2, 2)          # 16 px, cols 2..5
    pred = square(2, 4)         # 16 px, cols 4..7 -> overlap cols 4,5: 8 px
    c = M.confusion_counts(ref, pred)
    assert c == {"tp": 8, "fp": 8, "fn": 8, "tn": 400 - 24}
    assert M.dice_score(ref, pred) == pytest.approx(16 / 32)
    assert M.iou_score(ref, pred) == pytest.approx(8 / 24)
    assert M.precision_score(ref, pred) == pytest.approx(0.5)
    assert M.recall_score(ref, pred) == pytest.approx(0.5)
    assert M.specificity_score(ref, pred) == pytest.approx(376 / 384)
    # label selection: label 2 elsewhere does not count as lesion 1
    ref2 = ref.copy()
    ref2[15:18, 15:18] = 2
    assert M.dice_score(ref2, pred, label=1) == pytest.approx(0.5)
    assert M.dice_score(ref2, pred) < 0.5


def test_hd95_assd_offset_squares_by_hand():
    # 4x4 squares offset by 3 columns (cols 2..5 and 5..8). Border pixels (12 per square) of A
    # to the border of B: rows 2 and 5 give 3,2,1,0; rows 3 and 4 give 3 (col 2) and 0 (col 5).
    # Sorted: 0,0,0,0,1,1,2,2,3,3,3,3 -> 95th percentile 3, mean 18/12 = 1.5 (symmetric case).
    ref, pred = square(2, 2), square(2, 5)
    assert M.hd95(ref, pred) == pytest.approx(3.0)
    assert M.assd(ref, pred) == pytest.approx(1.5)
    # identical masks: 0; spacing scales distances
    assert M.hd95(ref, ref) == 0.0
    assert M.hd95(ref, pred, spacing=(1.0, 0.5)) == pytest.approx(1.5)
    # disjoint squares offset by 10 columns: every border distance lies in 7..10, HD95 = 10
    far = square(2, 12)
    assert M.hd95(ref, far) == pytest.approx(10.0)


def test_hd95_ignores_a_far_outlier_that_sets_the_hausdorff_distance():
    # ref: square rows 2..5, cols 2..5; pred: the square one column right (cols 3..6) plus one
    # outlier pixel at (2, 17). Border = mask minus its 4-connected erosion (medpy); the lone
    # pixel is all border. pred -> ref: top/bottom rows give 0,0,0,1 each, rows 3-4 give 1 (col 3)
    # and 1 (col 6), the outlier 12 (to (2, 5)): {0 x6, 1 x6, 12}. ref -> pred: {0 x6, 1 x6}.
    # medpy pools both directed sets: 25 values, 0 x12, 1 x12, 12 x1 (sorted indices 0..24).
    # 95th percentile (linear): index 0.95 * 24 = 22.8, between sorted[22] = sorted[23] = 1 -> 1,
    # while the Hausdorff distance (max) is 12 and pred -> ref alone would give 1 + 0.4 * 11 = 5.4.
    # ASSD (medpy >= 0.5: mean of the pooled set) = (6 + 12 + 6) / 25 = 0.96 (0.4's mean of the
    # two directed means would be (18/13 + 0.5) / 2 = 0.942).
    ref, pred = square(2, 2), square(2, 3)
    pred[2, 17] = 1
    assert M.hd95(ref, pred) == pytest.approx(1.0) and M.hd95(pred, ref) == pytest.approx(1.0)
    assert M.assd(ref, pred) == pytest.approx(0.96) and M.assd(pred, ref) == pytest.approx(0.96)
    m = M.segmentation_metrics(ref, pred)
    assert m["hd95"] == pytest.approx(1.0) and m["assd"] == pytest.approx(0.96)
    # spacing (rows, cols) = (1, 0.5): every distance above is along columns -> halved
    assert M.hd95(ref, pred, spacing=(1.0, 0.5)) == pytest.approx(0.5)


def speck_case():
    """A 20x20 lesion (rows 10..29, cols 10..29) predicted perfectly plus a 2x3 speck (rows 19..20,
    cols 59..61) to its right."""
    ref = np.zeros((40, 80), np.uint8)
    ref[10:30, 10:30] = 1
    pred = ref.copy()
    pred[19:21, 59:62] = 1
    return ref, pred


def test_hd95_conventions_on_a_far_speck_by_hand():
    # Issue 23. Borders (mask minus its 4-connected erosion): the lesion's is its outer ring,
    # 20*20 - 18*18 = 76 px, the same in both masks, so each of them is 0 from the other mask. Every
    # speck pixel lacks a 4-neighbour (2 rows), so all 6 are border; rows 19-20 lie within the
    # lesion's rows 10..29, so the nearest lesion border pixel is (row, 29): 30, 31, 32, twice each.
    #   prediction -> reference: 76 x 0 and 30, 30, 31, 31, 32, 32 (82 values); numpy's linear 95th
    #     percentile sits at 0.95 * 81 = 76.95, between sorted[76] = 30 and sorted[77] = 30 -> 30
    #   reference -> prediction: 76 x 0 -> 0 (no lesion border pixel is nearest to the speck)
    #   pooled: 158 values, 152 of them 0; 0.95 * 157 = 149.15, sorted[149] = sorted[150] = 0 -> 0
    #   max: max(30, 0) = 30
    # ASSD (mean of the pooled set) = 2 * (30 + 31 + 32) / 158 = 186 / 158 under both.
    ref, pred = speck_case()
    to_ref, to_pred = M.surface_distances(ref, pred)
    assert sorted(to_ref.tolist()) == [0.0] * 76 + [30.0, 30.0, 31.0, 31.0, 32.0, 32.0]
    assert to_pred.tolist() == [0.0] * 76
    assert M.hd95(ref, pred) == 0.0 and M.hd95(ref, pred, convention="pooled") == 0.0
    assert M.hd95(ref, pred, convention="max") == pytest.approx(30.0)
    assert M.hd95(pred, ref, convention="max") == pytest.approx(30.0)  # symmetric
    assert M.hd95(ref, pred, spacing=(1.0, 0.5), convention="max") == pytest.approx(15.0)  # along columns
    for convention in ("pooled", "max"):
        m = M.segmentation_metrics(ref, pred, hd95=convention)
        assert m["assd"] == pytest.approx(186 / 158) and m["dice"] == pytest.approx(800 / 806)
    assert M.segmentation_metrics(ref, pred, hd95="max")["hd95"] == pytest.approx(30.0)
    # the empty-mask rule is the same under both conventions
    empty = np.zeros_like(ref)
    assert M.hd95(empty, empty, convention="max") == 0.0 and math.isnan(M.hd95(ref, empty, convention="max"))
    with pytest.raises(ValueError, match="hd95 convention"):
        M.hd95(ref, pred, convention="mean")


def test_surface_distances_match_medpy():
    """The border and distance rule is medpy's: pooled HD95 and ASSD equal medpy's on random masks."""
    from medpy.metric import binary as medpy_binary
    rng = np.random.default_rng(0)
    for _ in range(20):
        ref, pred = rng.random((2, 24, 30)) < rng.uniform(0.05, 0.6)
        spacing = tuple(rng.uniform(0.3, 2.0, 2))
        assert M.hd95(ref, pred, spacing=spacing) == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing))
        assert M.assd(ref, pred, spacing=spacing) == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=spacing))


def test_empty_mask_rule():
    empty = np.zeros((20, 20), np.uint8)
    lesion = square(2, 2)
    both = M.segmentation_metrics(empty, empty)
    assert both["dice"] == 1 and both["iou"] == 1 and both["precision"] == 1 and both["recall"] == 1
    assert both["hd95"] == 0 and both["assd"] == 0 and both["specificity"] == 1
    fp = M.segmentation_metrics(empty, lesion)  # false positive on a normal image
    assert fp["dice"] == 0 and fp["iou"] == 0 and fp["precision"] == 0
    assert math.isnan(fp["recall"]) and math.isnan(fp["hd95"]) and math.isnan(fp["assd"])
    assert fp["specificity"] == pytest.approx(384 / 400)
    fn = M.segmentation_metrics(lesion, empty)  # missed lesion
    assert fn["dice"] == 0 and fn["recall"] == 0 and math.isnan(fn["precision"]) and math.isnan(fn["hd95"])
    assert fn["n_ref"] == 16 and fn["n_pred"] == 0


def test_metrics_validate_masks_first_and_take_options_by_keyword(monkeypatch):
    """Issue 27 §4: a probability map is refused with the fix (it used to become an all-foreground mask),
    options are keyword-only, and segmentation_metrics validates the pair once."""
    ref = square(2, 2).astype(np.float32)  # a 0/1 float mask is a mask
    assert M.dice_score(ref, ref) == 1.0
    prob = ref * 0.9 + 0.05
    for metric in (M.dice_score, M.confusion_counts, M.hd95, M.segmentation_metrics):
        with pytest.raises(ValueError, match=r"prediction is a float array with values other than 0 and 1 "
                                             r"\(e.g. 0.05\).*threshold it first \(e.g. prediction >= 0.5\)"):
            metric(ref, prob)
    assert M.dice_score(ref, prob >= 0.5) == 1.0
    with pytest.raises(ValueError, match="reference is a float array"):
        M.dice_score(np.full((2, 2), np.nan), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"references\[1\] is a float array"):
        M.image_false_positive_rate([ref, prob], [ref, ref])
    with pytest.raises(TypeError, match="reference must be a numeric or boolean array"):
        M.dice_score(np.array([["a"]]), np.array([[1]]))
    with pytest.raises(TypeError, match="positional argument"):
        M.dice_score(ref, ref, 1)
    with pytest.raises(TypeError, match="positional argument"):
        M.hd95(ref, ref, None, (1.0, 1.0))
    calls = []
    real = M._binary
    monkeypatch.setattr(M, "_binary", lambda *a, **k: calls.append(a) or real(*a, **k))
    M.segmentation_metrics(ref, square(2, 3))
    assert len(calls) == 2  # reference and prediction, once each


def test_pooled_overlap_differs_from_mean():
    big_ref, big_pred = square(0, 0, 10), square(0, 0, 10)        # perfect, 100 px
    small_ref, small_pred = square(0, 0, 2), square(10, 10, 2)    # 0, 4 px each
    counts = [M.confusion_counts(big_ref, big_pred), M.confusion_counts(small_ref, small_pred)]
    pooled = M.pooled_overlap(counts)
    assert pooled["dice"] == pytest.approx(200 / (200 + 4 + 4))
    assert pooled["iou"] == pytest.approx(100 / 108)
    assert np.mean([M.dice_score(big_ref, big_pred), M.dice_score(small_ref, small_pred)]) == 0.5
    assert math.isnan(M.pooled_overlap([])["dice"])


def test_image_false_positive_rate():
    empty = np.zeros((8, 8), np.uint8)
    speck = empty.copy()
    speck[0, 0] = 1
    lesion = square(1, 1, 3, (8, 8))
    refs = [empty, empty, empty, lesion]
    preds = [empty, speck, lesion, empty]
    r = M.image_false_positive_rate(refs, preds)
    assert r == {"n_normal": 3, "n_false_positive": 2, "fp_rate": pytest.approx(2 / 3),
                 "specificity": pytest.approx(1 / 3)}
    assert M.image_false_positive_rate(refs, preds, min_area=2)["n_false_positive"] == 1
    assert math.isnan(M.image_false_positive_rate([lesion], [lesion])["fp_rate"])


def test_pixel_roc_curve():
    ref = np.array([[0, 0, 1, 1]])
    prob = np.array([[0.1, 0.4, 0.35, 0.8]])
    r = M.pixel_roc_curve([ref], [prob])
    assert r["auc"] == pytest.approx(0.75)  # sklearn's classic example
    perfect = M.pixel_roc_curve([ref, ref], [ref * 0.9, ref * 0.8 + 0.1])
    assert perfect["auc"] == 1.0 and perfect["tpr"][-1] == 1.0
    assert math.isnan(M.pixel_roc_curve([np.zeros((2, 2))], [np.ones((2, 2))])["auc"])
    sub = M.pixel_roc_curve([ref] * 50, [prob] * 50, max_pixels=100)
    assert sub["n_pixels"] == 100


# ---------------------------------------------------------------------------------------------------
# statistics
def test_holm_correction_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005,0.01,0.03,0.04 -> 0.02, 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert S.holm_correction(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm_correction([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = S.holm_correction([0.02, float("nan")])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_paired_comparison_matches_scipy():
    from scipy.stats import wilcoxon
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, 30)
    b = a - rng.uniform(0.0, 0.1, 30)
    b[[3, 7]] = b[[3, 7]] + 0.2
    res = S.paired_comparison(a, b, n_resamples=2000)
    ref = wilcoxon(a, b)
    assert res["p_value"] == pytest.approx(ref.pvalue) and res["wilcoxon_statistic"] == pytest.approx(ref.statistic)
    assert res["mean_difference"] == pytest.approx(np.mean(a - b))
    assert res["ci_low"] < res["mean_difference"] < res["ci_high"]
    # NaN pairs dropped; identical scores give an undefined test
    a2 = np.r_[a, np.nan]
    assert S.paired_comparison(a2, np.r_[b, 0.5])["n_pairs"] == 30
    assert math.isnan(S.paired_comparison(a, a)["p_value"])


def test_wilcoxon_zeros_and_ties_by_hand():
    # every difference zero: the test is undefined, and says so
    res = S.wilcoxon_signed_rank(np.zeros(12))
    assert math.isnan(res["p_value"]) and res["n_nonzero"] == 0 and "zero" in res["p_method"]
    # zeros are discarded; |d| = 0.25, 0.5, 0.5, 0.5, 1.0 get ranks 1, 3, 3, 3, 5 (ties share 2-4);
    # W+ = 3 + 3 + 3 + 5 = 14 of 15. Of the 2^5 sign patterns only {all} (15) and {all but the 1}
    # (14) reach W+ >= 14, so p = 2 * 2/32 = 0.125 (the normal approximation would say 0.074)
    d = [0.0, 0.0, 0.5, 0.5, 0.5, 1.0, -0.25]
    res = S.wilcoxon_signed_rank(d)
    assert res["p_value"] == pytest.approx(0.125) and res["p_method"] == "exact"
    assert (res["n_nonzero"], res["n_positive"], res["n_negative"], res["statistic"]) == (5, 4, 1, 1.0)
    assert S.wilcoxon_signed_rank(d + [0.0] * 40)["p_value"] == pytest.approx(0.125)  # more ties at 0: same test
    # 20 images all better by the same 0.25 (one tied rank): only 1 of 2^20 sign patterns is as
    # extreme on each side, p = 2 / 2^20 (scipy's default falls back to the normal approximation, 7.7e-6)
    assert S.wilcoxon_signed_rank(np.full(20, 0.25))["p_value"] == pytest.approx(2 / 2 ** 20)
    # a paired comparison reports how many pairs decide the test and which way
    cmp = S.paired_comparison([1, 1, 0, 0.5, 0.2], [0, 1, 0, 0.25, 0.4], n_resamples=200)
    assert (cmp["n_pairs"], cmp["n_nonzero"], cmp["n_a_better"], cmp["n_b_better"]) == (5, 3, 2, 1)


def test_wilcoxon_exact_matches_scipy_where_scipy_is_exact():
    from scipy.stats import PermutationMethod, wilcoxon
    rng = np.random.default_rng(3)
    for _ in range(3):
        d = rng.integers(-3, 5, 12).astype(float)  # ties and zeros: scipy enumerates all sign flips
        assert S.wilcoxon_signed_rank(d)["p_value"] == pytest.approx(
            wilcoxon(d, method=PermutationMethod()).pvalue)
    d = rng.normal(0.2, 1.0, 40)  # no ties: scipy's exact distribution
    assert S.wilcoxon_signed_rank(d)["p_value"] == pytest.approx(wilcoxon(d, method="exact").pvalue)
    d = np.round(rng.normal(0.02, 0.1, S.WILCOXON_EXACT_MAX + 50), 2)  # large n: normal approximation
    res = S.wilcoxon_signed_rank(d)
    assert res["p_method"].startswith("normal")
    assert res["p_value"] == pytest.approx(wilcoxon(d[d != 0], method="asymptotic").pvalue)


def test_bootstrap_ci_brackets_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = S.bootstrap_ci(rng.normal(0.8, 0.1, 20), n_resamples=2000)
    large = S.bootstrap_ci(rng.normal(0.8, 0.1, 2000), n_resamples=2000)
    assert small["low"] < small["mean"] < small["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 4
    assert large["low"] < 0.8 < large["high"]


# ---------------------------------------------------------------------------------------------------
# bus-nnunet evaluate
def _write_png(path, arr):
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def test_evaluate_cli(tmp_path, capsys):
    pred, gt, probs = tmp_path / "pred", tmp_path / "gt", tmp_path / "probs"
    for d in (pred, gt, probs):
        d.mkdir()
    cases = {  # case -> (reference, prediction, class)
        "c1": (square(2, 2), square(2, 4), "benign"),       # dice 0.5
        "c2": (square(5, 5), square(5, 5), "malignant"),    # dice 1
        "c3": (np.zeros((20, 20)), np.zeros((20, 20)), "normal"),  # both empty -> 1
        "c4": (np.zeros((20, 20)), square(0, 0, 2), "normal"),     # FP on normal -> 0
    }
    for cid, (ref, prd, _) in cases.items():
        _write_png(gt / f"{cid}.png", ref)
        _write_png(pred / f"{cid}.png", prd)
        p = np.stack([1 - prd * 0.9, prd * 0.9])[:, None].astype(np.float16)  # (C, 1, H, W)
        np.savez_compressed(probs / f"{cid}.npz", probabilities=p)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,split,class\n" + "".join(f"{c},train,{v[2]}\n" for c, v in cases.items()))
    cls_csv = tmp_path / "classification.csv"
    cls_csv.write_text("case_id,true_class,p_benign,p_malignant,predicted_class\n"
                       "c1,benign,0.8,0.2,benign\nc2,malignant,0.3,0.7,malignant\nc4,normal,0.6,0.4,benign\n")
    out = tmp_path / "out"
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "--probabilities", str(probs), "--manifest",
            str(manifest), "--classification", str(cls_csv), "-o", str(out), "--no-progress"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["all"]["per_image"]["dice"]["mean"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)
    assert m["all"]["pooled"]["dice"] == pytest.approx(2 * 24 / (2 * 24 + 8 + 8 + 4))
    assert m["all"]["normal_images"] == {"n_normal": 2, "n_false_positive": 1, "fp_rate": 0.5, "specificity": 0.5}
    assert m["all"]["per_image"]["hd95"]["n_nan"] == 1
    assert m["by_class"]["benign"]["per_image"]["dice"]["mean"] == pytest.approx(0.5)
    assert m["by_class"]["malignant"]["n_cases"] == 1
    assert m["references_without_prediction"] == []
    assert 0.5 < m["pixel_roc"]["auc"] <= 1.0
    # cv-report's question: malignant vs rest, the normal case negative (p_malignant 0.4 < 0.7: AUC 1);
    # a benign/malignant model is never right about a normal case (accuracy 2 / 3)
    cls = m["classification"]["malignant_vs_rest"]
    assert (cls["n"], cls["auc"], cls["specificity"], cls["accuracy"]) == (3, 1.0, 1.0, pytest.approx(2 / 3))
    assert "Malignant vs rest" in (out / "summary.md").read_text()
    with open(out / "per_case.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert float(rows["c1"]["dice"]) == pytest.approx(0.5) and rows["c4"]["class"] == "normal"
    assert "pooled" in (out / "summary.md").read_text()
    assert read_folder_report(out).to_json() == m  # the reader gives back what the writer wrote
    # existing output is refused without --overwrite, replaced with it
    assert main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    # cv-report's reader: a case listed twice is refused with the file and line, nothing written
    with open(cls_csv, "a") as f:
        f.write("c1,benign,0.7,0.3,benign\n")
    capsys.readouterr()
    assert main(args + ["--overwrite"]) == 1
    assert f"{cls_csv} line 5: case 'c1' is listed twice" in capsys.readouterr().err
    assert read_folder_report(out).to_json() == m


def test_evaluate_refuses_missing_predictions_unless_allowed(tmp_path, capsys):
    """A prediction run that stopped halfway must not read as a score: 1 of 3 predicted is an error
    naming the 2 missing; --allow-missing scores them as empty predictions and says so."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for cid in ("a", "b", "c"):
        _write_png(gt / f"{cid}.png", square(2, 2))
    _write_png(pred / "a.png", square(2, 2))
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "2 of 3 reference case(s) have no prediction" in err and "b, c" in err and "--allow-missing" in err
    assert not (tmp_path / "out").exists()
    assert main(args + ["--allow-missing"]) == 0
    assert "2 of them had no prediction and were scored as empty predictions" in capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["references_without_prediction"] == ["b", "c"]
    assert m["all"]["per_image"]["dice"]["mean"] == pytest.approx(1 / 3)  # 1, 0, 0
    # a manifest of another dataset would silently drop the per-class rows: an error instead
    other = tmp_path / "other_manifest.csv"
    other.write_text("case_id,split,class\nx1,train,benign\na,train,benign\n")
    assert main(args + ["--allow-missing", "--overwrite", "--manifest", str(other)]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 scored case(s) are not in manifest" in err and "b, c" in err


def test_evaluate_cli_shape_mismatch_is_user_error(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    _write_png(tmp_path / "p" / "a.png", np.zeros((10, 10)))
    _write_png(tmp_path / "g" / "a.png", np.zeros((12, 10)))
    assert main(["evaluate", "--pred", str(tmp_path / "p"), "--gt", str(tmp_path / "g"), "-o",
                 str(tmp_path / "o"), "--no-progress"]) == 1
    assert "shape" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_evaluate_refuses_two_files_for_one_case(tmp_path, capsys):
    """Issue 22: a prediction folder with both c1.png (Dice 1) and an empty c1.nii.gz must not score
    whichever sorts first (the .nii.gz, Dice 0): an error naming both files."""
    import nibabel
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for cid in ("c1", "c2"):
        _write_png(gt / f"{cid}.png", square(2, 2))
        _write_png(pred / f"{cid}.png", square(2, 2))
    nibabel.save(nibabel.Nifti1Image(np.zeros((20, 20), np.uint8), np.eye(4)), str(pred / "c1.nii.gz"))
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c1.nii.gz" in err and "c1.png" in err and "c2" not in err
    assert not (tmp_path / "out").exists()
    # the same clash among the references
    (pred / "c1.nii.gz").unlink()
    _write_png(gt / "c2.bmp", square(2, 2))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c2.bmp" in err and "c2.png" in err and str(gt) in err


def _colour(mask, rgb):
    """A 0/1 mask drawn in colour ``rgb`` on black, as an RGB image array."""
    return (np.asarray(mask, np.uint8)[..., None] * np.asarray(rgb, np.uint8)).astype(np.uint8)


def test_evaluate_scores_green_masks_as_the_grey_ones(tmp_path):
    """Issue 22: masks drawn in green (lesion = (0, 255, 0)) read as empty when only channel 0 was
    kept, so every case scored Dice 0. Green predictions or green references score what grey ones do."""
    refs = {"c1": square(2, 2), "c2": square(5, 5)}
    preds = {"c1": square(2, 4), "c2": square(5, 5)}   # Dice 0.5 and 1
    folders = {"grey_gt": refs, "grey_pred": preds,
               "green_gt": {c: _colour(m, (0, 255, 0)) for c, m in refs.items()},
               "green_pred": {c: _colour(m, (0, 255, 0)) for c, m in preds.items()}}
    for name, masks in folders.items():
        (tmp_path / name).mkdir()
        for cid, m in masks.items():
            _write_png(tmp_path / name / f"{cid}.png", m)
    scores = {}
    for pred, gt in (("grey_pred", "grey_gt"), ("green_pred", "grey_gt"), ("grey_pred", "green_gt")):
        out = tmp_path / f"{pred}_vs_{gt}"
        assert main(["evaluate", "--pred", str(tmp_path / pred), "--gt", str(tmp_path / gt), "-o", str(out),
                     "--no-progress"]) == 0
        scores[pred, gt] = json.loads((out / "metrics.json").read_text())["all"]["per_image"]
    assert scores["grey_pred", "grey_gt"]["dice"]["mean"] == pytest.approx(0.75)
    assert scores["green_pred", "grey_gt"] == scores["grey_pred", "grey_gt"] == scores["grey_pred", "green_gt"]


def test_colour_masks_are_read_by_the_converters_rule(tmp_path):
    """One rule for colour and alpha (bus_nnunet.masks.mask_plane) in evaluate's reader and the
    converters' read_mask: channels are max-combined, so a red lesion beside a green one is one
    foreground of both; a varying alpha keeps what is opaque; an alpha-only mask is its alpha."""
    from bus_nnunet.image_io import read_mask
    from bus_nnunet.evaluation.folder import read_segmentation
    red, green = square(2, 2), square(10, 10)
    mixed = _colour(red, (255, 0, 0)) + _colour(green, (0, 255, 0))
    rgba = np.dstack([_colour(red | green, (0, 255, 0)), np.where(red, 255, 0).astype(np.uint8)])
    alpha_only = np.dstack([np.zeros((20, 20, 3), np.uint8), (green * 255).astype(np.uint8)])
    for name, arr, expected in (("mixed.png", mixed, red | green), ("rgba.png", rgba, red),
                                ("alpha_only.png", alpha_only, green)):
        Image.fromarray(arr).save(tmp_path / name)
        assert np.array_equal(read_segmentation(tmp_path / name) > 0, expected > 0), name
        assert np.array_equal(read_mask(tmp_path / name).mask, expected > 0), name


def test_evaluate_hd95_convention_is_chosen_and_reported(tmp_path, capsys):
    """Issue 23: --hd95 max scores the far speck of speck_case 30 px (pooled: 0), and every output
    says which convention produced the numbers."""
    ref, pred = speck_case()
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    _write_png(tmp_path / "gt" / "s.png", ref)
    _write_png(tmp_path / "pred" / "s.png", pred)
    for convention, expected in (("pooled", 0.0), ("max", 30.0)):
        out = tmp_path / convention
        args = ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "-o", str(out),
                "--no-progress"] + ([] if convention == "pooled" else ["--hd95", "max"])  # pooled: the default
        assert main(args) == 0
        assert f"--hd95 {convention}" in capsys.readouterr().out
        m = json.loads((out / "metrics.json").read_text())
        assert m["hd95_convention"] == convention == m["all"]["hd95_convention"]
        assert m["hd95_rule"] == M.HD95_CONVENTIONS[convention]
        assert m["all"]["per_image"]["hd95"]["mean"] == pytest.approx(expected)
        assert f"HD95 convention `--hd95 {convention}`" in (out / "summary.md").read_text()
        with open(out / "per_case.csv") as f:
            assert float(next(csv.DictReader(f))["hd95"]) == pytest.approx(expected)
    assert "MONAI" in (tmp_path / "max" / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------------
# profiling
def test_count_macs_counts_each_call_once_per_module():
    import torch.nn as nn
    from bus_nnunet import profiling as P

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.block = nn.Sequential(self.conv)   # the same conv reachable twice (as in nnU-Net)
            self.head = nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x):
            return self.head(self.head(self.block(x)))  # head called twice

    # conv: 8*8 outputs * 4 channels * 9 taps * 1 input = 2304; head: 64*4*4 = 1024 per call
    for counter in (P.count_macs, P.count_macs_thop_rules):
        assert counter(Net(), (1, 1, 8, 8)) == 2304 + 2 * 1024


def test_count_macs_by_hand_where_thop_rules_differ():
    """count_macs (operator level) equals the hand count for ops that thop's module rules get
    wrong or miss; count_macs_thop_rules keeps thop's convention (papers' "GFLOPs")."""
    import torch
    import torch.nn as nn
    from torchvision.ops import deform_conv2d
    from bus_nnunet import profiling as P

    class Attention(nn.Module):  # a Linear, then (q @ q^T) and (attn @ x) written as functional matmuls
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(32, 32, bias=False)

        def forward(self, x):
            q = self.q(x)
            return (q @ q.transpose(1, 2)).softmax(-1) @ x

    class Functional(nn.Module):  # F.conv2d and torchvision's deformable conv (zero offsets, mask 1)
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))

        def forward(self, x):
            y = nn.functional.conv2d(x, self.weight, padding=1)
            b, _, h, w = x.shape
            return y + deform_conv2d(x, x.new_zeros(b, 18, h, w), self.weight, padding=1, mask=x.new_ones(b, 9, h, w))

    conv = 16 * 16 * 8 * 3 * 9  # 3->8 channels, 3x3, 16x16 outputs
    cases = [  # (network, input, hand-counted MACs, thop's rules)
        (nn.ConvTranspose2d(8, 4, 2, stride=2), (1, 8, 8, 8),
         8 * 8 * 8 * 4 * 4,          # each input pixel and channel feeds 4 outputs x 4 taps
         16 * 16 * 4 * 8 * 4),       # thop: per OUTPUT pixel, stride^2 = 4x too many
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), (1, 3, 16, 16),
         conv,                       # normalisation and ReLU are no multiply-accumulates
         conv + 4 * 8 * 16 * 16),    # thop: 2 per element, doubled for the affine parameters
        (Attention(), (1, 64, 32), 64 * 32 * 32 + 64 * 32 * 64 + 64 * 64 * 32,
         64 * 32 * 32),              # thop: only the Linear
        (Functional(), (1, 3, 16, 16), 2 * conv, 0),  # thop: no module, nothing counted
    ]
    for net, shape, hand, thop_rules in cases:
        net.train()
        assert P.count_macs(net, shape) == hand
        assert P.count_macs(net, torch.randn(*shape)) == hand  # an example tensor works too
        assert net.training  # the training flag is restored
        assert P.count_macs_thop_rules(net, shape) == thop_rules


def test_count_macs_thop_rules_reproduces_ssnet_published_figure():
    """SS-Net's published 4.93 G are thop MACs of the released code at 1x3x256x256;
    thop's rules on our module differ only by functional upsampling/softmax calls (0.02 %)."""
    from bus_nnunet import profiling as P
    from bus_nnunet.network_architectures.ssnet import ssnet
    from test_ssnet import COMPLEXITY_256
    net = ssnet(in_channels=3, num_classes=1, input_size=(256, 256))
    macs = P.count_macs_thop_rules(net, (1, 3, 256, 256))
    assert macs == COMPLEXITY_256["thop_macs_this_module"] == 4_931_318_848
    assert abs(macs / COMPLEXITY_256["thop_macs"] - 1) < 3e-4
    # and the paper's 16.21 M "params": thop leaves out the raw SSM/scalar parameters
    assert P.count_params_thop_rules(net) == COMPLEXITY_256["thop_params"] == 16_210_955
    assert sum(p.numel() for p in net.parameters()) == COMPLEXITY_256["trainable_params"]


def test_profile_nnunet_default_unet(tmp_path, capsys):
    from bus_nnunet import profiling as P
    out = tmp_path / "profile.json"
    assert main(["profile", "nnUNetTrainerUS", "--size", "32", "32", "--repeats", "2", "--json", str(out)]) == 0
    assert "GFLOPs" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"][0]
    # nnU-Net 2D defaults at 32x32: 4 stages (32 -> 4), features 32, 64, 128, 256, 2 convs per stage
    # (3x3 conv + bias, InstanceNorm affine), 2x2 transposed convs, 1x1 seg heads on every decoder stage
    f, n, cin = [32, 64, 128, 256], 0, 1
    for c in f:
        n += 9 * cin * c + c + 2 * c + 9 * c * c + c + 2 * c
        cin = c
    for lo, hi in zip(f[:-1], f[1:]):
        n += 4 * hi * lo + lo + 18 * lo * lo + lo + 2 * lo + 9 * lo * lo + lo + 2 * lo + 2 * lo + 2
    assert r["params_total"] == r["params_trainable"] == n == 1_928_262
    # MACs: encoder 3x3 convs, per decoder stage a 2x2 stride-2 transposed conv (one per input pixel
    # and tap: s^2 * hi * lo at output size s) and two 3x3 convs (2*lo -> lo, lo -> lo), final 1x1 head
    sizes = [32 // 2 ** i for i in range(4)]
    encoder = sum(s ** 2 * 9 * c * (cin_ + c) for s, c, cin_ in zip(sizes, f, [1] + f[:-1]))
    transposed = sum(s ** 2 * hi * lo for s, lo, hi in zip(sizes, f[:-1], f[1:]))
    decoder = transposed + sum(s ** 2 * 27 * lo ** 2 for s, lo in zip(sizes, f[:-1]))
    assert r["macs"] == encoder + decoder + 32 * 32 * 32 * 2 == 143_491_072 and r["flops"] == 2 * r["macs"]
    # thop's rules: transposed convs 4x (per output pixel), 4 per InstanceNorm element, LeakyReLU 0
    norm_elements = 2 * sum(s ** 2 * c for s, c in zip(sizes, f)) + 2 * sum(s ** 2 * c for s, c in zip(sizes, f[:-1]))
    assert r["macs_thop_rules"] == r["macs"] + 3 * transposed + 4 * norm_elements
    assert r["forward_peak_bytes"] > 0 and r["train_step_peak_bytes"] > r["forward_peak_bytes"]
    assert r["latency_ms"] > 0 and "PlainConvUNet" in r["network"] and "RSS" in r["memory_method"]
    # the shared builder gives the same network for profiling and for benchmarks
    net, _ = P.build_network("nnUNetTrainerUS", 1, 2, (32, 32))
    assert P.count_parameters(net)[0] == n


# ---------------------------------------------------------------------------------------------------
# uncertainty
def test_uncertainty_maps_by_hand():
    from bus_nnunet.evaluation.uncertainty import uncertainty_maps
    # two members, 2 classes, three pixels: agree-certain, agree-uncertain, disagree-confident
    a = np.array([[[1.0, 0.5, 0.9]], [[0.0, 0.5, 0.1]]])   # (C=2, H=1, W=3)
    b = np.array([[[1.0, 0.5, 0.1]], [[0.0, 0.5, 0.9]]])
    m = uncertainty_maps([a, b])
    assert m["entropy"][0] == pytest.approx([0.0, 1.0, 1.0], abs=1e-6)   # mean of pixel 3 is (0.5, 0.5)
    h09 = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    assert m["mutual_information"][0] == pytest.approx([0.0, 0.0, 1 - h09], abs=1e-6)
    # ensemble arg-max of a tie is class 0: member b disagrees at pixel 3
    assert m["disagreement"][0] == pytest.approx([0.0, 0.0, 0.5])
    single = uncertainty_maps([a])
    assert np.all(single["mutual_information"] == 0) and np.all(single["disagreement"] == 0)


def test_uncertainty_cli(tmp_path):
    dirs = []
    for k, p_fg in enumerate((0.2, 0.8)):
        d = tmp_path / f"fold_{k}"
        d.mkdir()
        fg = np.full((1, 4, 5), p_fg, np.float32)
        np.savez_compressed(d / "c1.npz", probabilities=np.stack([1 - fg, fg]))  # (C, 1, H, W)
        dirs.append(str(d))
    np.savez_compressed(tmp_path / "fold_0" / "only_here.npz", probabilities=np.ones((2, 1, 4, 5)) / 2)
    out = tmp_path / "unc"
    assert main(["uncertainty", "-i", *dirs, "-o", str(out)]) == 0
    stack = np.load(out / "c1_uncertainty.npy")
    assert stack.shape == (3, 4, 5)
    assert stack[0] == pytest.approx(np.ones((4, 5)))        # mean 0.5/0.5: maximal entropy
    assert stack[2] == pytest.approx(np.full((4, 5), 0.5))   # one of two members disagrees
    assert np.array(Image.open(out / "c1_entropy.png")).max() == 255
    assert not (out / "only_here_uncertainty.npy").exists()
