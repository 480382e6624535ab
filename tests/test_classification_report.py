"""Issue 24, statistics: DeLong's AUC variance and paired test against hand-computed examples,
the DeLong CI against a stratified bootstrap, Youden's threshold chosen on the training folds,
the ECE by hand, and cv-report's / the study summary's classification section on a hand-made
nnU-Net results folder whose trainers write ``fold_k/validation/classification.csv``."""
import doctest
import json
from pathlib import Path

import numpy as np
import pytest

from bus_nnunet.evaluation import classification as C
from bus_nnunet.evaluation import classification_report as CR


def test_doctests_of_the_classification_modules():
    """The numpydoc Examples run (pytest is not run with --doctest-modules)."""
    from bus_nnunet.evaluation import stats
    for module in (C, CR, stats):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"{module.__name__}: {result.failed} doctest(s) failed"
    assert doctest.testmod(C).attempted >= 8  # the examples exist


# Hand example, classifier A: positives x = (0.9, 0.6, 0.4), negatives y = (0.6, 0.3, 0.2).
# psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise.
#   V10(x) = mean_y psi:  0.9 -> (1 + 1 + 1)/3 = 1;  0.6 -> (1/2 + 1 + 1)/3 = 5/6;  0.4 -> (0 + 1 + 1)/3 = 2/3
#   V01(y) = mean_x psi:  0.6 -> (1 + 1/2 + 0)/3 = 1/2;  0.3 -> 1;  0.2 -> 1
#   AUC = mean V10 = mean V01 = 5/6
#   S10 = var(1, 5/6, 2/3; ddof 1) = ((1/6)^2 + 0 + (1/6)^2) / 2 = 1/36
#   S01 = var(1/2, 1, 1; ddof 1) = ((1/3)^2 + (1/6)^2 + (1/6)^2) / 2 = 1/12
#   Var(AUC) = S10/m + S01/n = (1/36)/3 + (1/12)/3 = 1/27,  SE = 0.19245
Y = [1, 1, 1, 0, 0, 0]
A = [0.9, 0.6, 0.4, 0.6, 0.3, 0.2]
# Classifier B on the same cases: positives (0.5, 0.8, 0.7), negatives (0.4, 0.9, 0.1).
#   V10_B = (2/3, 2/3, 2/3) (each positive beats 0.4 and 0.1, not 0.9), AUC_B = 2/3, S10_B = 0
#   V01_B = (1, 0, 1), S01_B = ((1/3)^2 + (2/3)^2 + (1/3)^2) / 2 = 1/3
#   cov10(A, B) = 0 (V10_B constant);  cov01(A, B) = ((-1/3)(1/3) + (1/6)(-2/3) + (1/6)(1/3)) / 2 = -1/12
#   Var(AUC_A - AUC_B) = (S10_A + S10_B - 2 cov10)/m + (S01_A + S01_B - 2 cov01)/n
#                      = (1/36)/3 + (1/12 + 1/3 + 1/6)/3 = 1/108 + 7/36 = 11/54
#   z = (5/6 - 2/3) / sqrt(11/54) = 0.369274,  p = 2 (1 - Phi(z)) = 0.71193
B = [0.5, 0.8, 0.7, 0.4, 0.9, 0.1]


def test_delong_variance_matches_the_hand_computed_example():
    v10, v01 = C._structural_components(np.array(Y), np.array([A, B]))
    np.testing.assert_allclose(v10, [[1, 5 / 6, 2 / 3], [2 / 3, 2 / 3, 2 / 3]])
    np.testing.assert_allclose(v01, [[1 / 2, 1, 1], [1, 0, 1]])
    r = C.delong_auc(Y, A)
    assert r["auc"] == pytest.approx(5 / 6) and r["variance"] == pytest.approx(1 / 27)
    assert r["se"] == pytest.approx(0.19245009)
    assert r["ci_low"] == pytest.approx(5 / 6 - 1.959964 * 0.19245009, abs=1e-6) and r["ci_high"] == 1.0  # clipped
    assert (r["n_positive"], r["n_negative"]) == (3, 3)
    assert C.delong_auc(Y, B)["variance"] == pytest.approx((0 / 3) + (1 / 3) / 3)


def test_paired_delong_test_matches_the_hand_computed_example():
    r = C.delong_roc_test(Y, A, B)
    assert (r["auc_a"], r["auc_b"]) == (pytest.approx(5 / 6), pytest.approx(2 / 3))
    assert r["variance"] == pytest.approx(11 / 54)
    assert r["z"] == pytest.approx(0.369274, abs=1e-6) and r["p_value"] == pytest.approx(0.711929, abs=1e-5)
    swapped = C.delong_roc_test(Y, B, A)  # symmetric
    assert swapped["difference"] == pytest.approx(-r["difference"])
    assert swapped["p_value"] == pytest.approx(r["p_value"])
    # a classifier against itself: no variability, nothing to test
    assert C.delong_roc_test(Y, A, A)["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least 2 positive and 2 negative"):
        C.delong_auc([1, 0, 0], [0.9, 0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 and 1"):
        C.delong_auc([1, 2, 0, 0], [0.9, 0.8, 0.1, 0.2])


def test_delong_ci_agrees_with_a_stratified_bootstrap():
    """300 generated cases (120 malignant): DeLong's 95 % CI and the percentile CI of 4000
    stratified bootstrap resamples (positives and negatives resampled separately, as pROC's
    ci.auc(method="bootstrap")) agree within 0.01 at each end; the SEs within 10 %."""
    from scipy.stats import rankdata
    rng = np.random.default_rng(7)
    pos, neg = rng.normal(1.2, 1.0, 120), rng.normal(0.0, 1.0, 180)
    y = np.r_[np.ones(120), np.zeros(180)].astype(int)
    r = C.delong_auc(y, np.r_[pos, neg])
    boot_pos = pos[rng.integers(0, 120, (4000, 120))]
    boot_neg = neg[rng.integers(0, 180, (4000, 180))]
    ranks = rankdata(np.concatenate([boot_pos, boot_neg], axis=1), axis=1)  # Mann-Whitney AUC per resample
    aucs = (ranks[:, :120].sum(axis=1) - 120 * 121 / 2) / (120 * 180)
    low, high = np.quantile(aucs, [0.025, 0.975])
    assert 0.75 < r["auc"] < 0.85
    assert r["ci_low"] == pytest.approx(low, abs=0.01) and r["ci_high"] == pytest.approx(high, abs=0.01)
    assert r["se"] == pytest.approx(aucs.std(ddof=1), rel=0.10)


def test_youden_threshold_comes_from_the_training_folds():
    """Fold 0 separates at 0.4, fold 1 at 0.7. Chosen on the scored cases, each fold would be
    classified perfectly (sensitivity = specificity = 1); chosen on the training folds, fold 0 is
    classified at fold 1's 0.7 (misses its 0.4 malignant) and fold 1 at fold 0's 0.4 (calls its
    two benign 0.5 and 0.6 malignant): sensitivity 3/4, specificity 2/4."""
    y = [0, 0, 1, 1, 0, 0, 1, 1]
    score = [0.1, 0.3, 0.4, 0.8, 0.5, 0.6, 0.7, 0.9]
    folds = [0, 0, 0, 0, 1, 1, 1, 1]
    assert C.youden_threshold(y[:4], score[:4]) == 0.4 and C.youden_threshold(y[4:], score[4:]) == 0.7  # in-sample
    assert C.out_of_fold_youden_thresholds(y, score, folds) == {0: 0.7, 1: 0.4}
    probabilities = np.array([[1 - s, s] for s in score])
    cr = CR.ClassifierResults("T", ["benign", "malignant"], [f"c{i}" for i in range(8)], folds,
                              ["malignant" if v else "benign" for v in y], probabilities, [0, 1])
    youden = CR.summarize(cr)["at_youden"]
    assert youden["thresholds"] == {0: 0.7, 1: 0.4}
    assert (youden["sensitivity"], youden["specificity"]) == (0.75, 0.5)
    assert (youden["tp"], youden["fn"], youden["tn"], youden["fp"]) == (3, 1, 2, 2)


def test_expected_calibration_error_by_hand():
    """Two bins [0, 0.5], (0.5, 1]: bin 1 holds p = 0.1, 0.2, 0.3, 0.4 (mean 0.25) with 2 of 4
    malignant (0.5): gap 0.25; bin 2 holds 0.7, 0.9 (mean 0.8) with 1 of 2: gap 0.3.
    ECE = 4/6 * 0.25 + 2/6 * 0.3 = 0.266667. A probability on an edge (0.5) falls in the lower bin."""
    from sklearn.calibration import calibration_curve
    y, p = [0, 1, 1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4, 0.7, 0.9]
    assert C.expected_calibration_error(y, p, n_bins=2) == pytest.approx(4 / 6 * 0.25 + 2 / 6 * 0.3)
    assert C.calibration_bins([1], [0.5], n_bins=2)["count"].tolist() == [1, 0]
    assert C.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0  # perfectly calibrated
    assert C.expected_calibration_error([1, 1], [0.0, 0.0]) == 1.0
    # the bins are scikit-learn's calibration_curve bins
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p).astype(int)
    b = C.calibration_bins(y, p, n_bins=10)
    true, pred = calibration_curve(y, p, n_bins=10)
    full = b["count"] > 0
    np.testing.assert_allclose(b["fraction_positive"][full], true)
    np.testing.assert_allclose(b["mean_predicted"][full], pred)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        C.expected_calibration_error([0, 1], [0.2, 1.2])


def test_ensemble_averages_the_members_probabilities():
    a = CR.ClassifierResults("A", ["benign", "malignant"], ["c1", "c2", "c3"], [0, 0, 1],
                             ["benign", "malignant", "benign"], np.array([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]), [0, 1])
    b = CR.ClassifierResults("B", ["benign", "malignant"], ["c2", "c1"], [0, 0],
                             ["malignant", "benign"], np.array([[0.2, 0.8], [0.6, 0.4]]), [0])
    ens, why = CR.ensemble("ensemble(all)", ["A", "B"], {"A": a, "B": b}, folds=[0])
    assert why is None and ens.case_ids == ["c1", "c2"]
    np.testing.assert_allclose(ens.score, [0.3, 0.7])
    assert CR.ensemble("e", ["A", "C"], {"A": a, "B": b}, folds=[0]) == (None, "e: no classification (C writes no "
                                                                              "classification.csv)")


# ---------------------------------------------------------------------------- cv-report and study
CLASSES = ["benign", "malignant", "normal"]
N_FOLDS, PER_FOLD = 3, 8


def _square(top, left, size, shape=(16, 16)):
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


def _write_results(env, dataset, trainers):
    """A hand-made results folder: 24 cases in 3 folds (benign / malignant / normal in turn),
    segmentations equal to the reference, and per classifying trainer a classification.csv per
    fold with generated probabilities (signal ``strength``; None: the trainer does not classify).
    Returns the truth and each trainer's probabilities by case."""
    from PIL import Image
    from bus_nnunet.inference.classification import write_classification_csv
    gt = Path(env["nnUNet_preprocessed"]) / dataset / "gt_segmentations"
    gt.mkdir(parents=True)
    raw = Path(env["nnUNet_raw"]) / dataset
    raw.mkdir(parents=True)
    rng = np.random.default_rng(24)
    cases = [f"c_{i:02d}" for i in range(N_FOLDS * PER_FOLD)]
    truth = {c: CLASSES[i % 3] for i, c in enumerate(cases)}
    fold_of = {c: i // PER_FOLD for i, c in enumerate(cases)}
    (raw / "manifest.csv").write_text("case_id,class\n" + "".join(f"{c},{truth[c]}\n" for c in cases))
    probabilities = {}
    for c in cases:
        ref = _square(3, 3, 5) if truth[c] != "normal" else np.zeros((16, 16), np.uint8)
        Image.fromarray(ref).save(gt / f"{c}.png")
    for trainer, strength in trainers.items():
        model = Path(env["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__2d"
        probabilities[trainer] = {}
        for fold in range(N_FOLDS):
            val = model / f"fold_{fold}" / "validation"
            val.mkdir(parents=True)
            fold_cases = [c for c in cases if fold_of[c] == fold]
            for c in fold_cases:
                Image.fromarray(np.array(Image.open(gt / f"{c}.png"))).save(val / f"{c}.png")
            if strength is None:
                continue
            logits = rng.normal(0, 1, (len(fold_cases), 3)) + strength * np.array(
                [[CLASSES.index(truth[c]) == k for k in range(3)] for c in fold_cases])
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            p = np.round(p, 6)
            probabilities[trainer].update(dict(zip(fold_cases, p)))
            write_classification_csv(val / "classification.csv", fold_cases, p, CLASSES,
                                     {c: truth[c] for c in fold_cases})
    return cases, truth, fold_of, probabilities


def _valid_png(path):
    from PIL import Image
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"), float)
    assert im.format == "PNG" and min(im.size) > 200 and pixels.std() > 5, f"{path} is blank or not a PNG"


def test_cv_report_and_study_summary_classification_section(nnunet_env, tmp_path, capsys):
    from bus_nnunet.cli import main
    from bus_nnunet.evaluation import stats as S
    ds = "Dataset995_Classes"
    trainers = {"A": 2.5, "B": 1.0, "C": 0.3, "D": None}  # D segments only
    cases, truth, fold_of, probs = _write_results(nnunet_env, ds, trainers)
    out = tmp_path / "report"
    args = ["cv-report", "995", "-tr", *trainers, "-f", "0", "1", "2", "--bootstrap", "100", "--no-progress"]
    assert main(args + ["-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AUC [95% CI]" in printed
    report = json.loads((out / "metrics.json").read_text())
    assert "classification" not in report["trainers"]["D"]
    assert report["classification"]["classifiers"] == ["A", "B", "C"]

    y = np.array([truth[c] == "malignant" for c in cases], int)  # malignant vs benign + normal
    folds = np.array([fold_of[c] for c in cases])
    for trainer in "ABC":
        entry = report["trainers"][trainer]["classification"]
        score = np.array([probs[trainer][c][1] for c in cases])
        assert (entry["n_cases"], entry["n_positive"], entry["n_negative"]) == (24, 8, 16)
        assert entry["class_counts"] == {"benign": 8, "malignant": 8, "normal": 8}
        delong = C.delong_auc(y, score)
        for key in ("auc", "ci_low", "ci_high", "variance"):
            assert entry["auc"][key] == pytest.approx(delong[key])
        assert entry["auc"]["method"] == "DeLong"
        half = C.binary_classification_metrics(y, score, threshold=0.5)
        assert entry["at_0.5"]["sensitivity"] == pytest.approx(half["sensitivity"])
        assert entry["at_0.5"]["specificity"] == pytest.approx(half["specificity"])
        for fold in range(N_FOLDS):  # each fold's threshold is chosen on the other two folds only
            other = folds != fold
            chosen = C.youden_threshold(y[other], score[other])
            assert entry["at_youden"]["thresholds"][str(fold)] == pytest.approx(chosen)
        thresholds = np.array([entry["at_youden"]["thresholds"][str(f)] for f in folds])
        youden = C.binary_classification_metrics(y, score, threshold=thresholds)
        assert entry["at_youden"]["sensitivity"] == pytest.approx(youden["sensitivity"])
        assert entry["at_youden"]["specificity"] == pytest.approx(youden["specificity"])
        argmax = np.array([CLASSES[int(np.argmax(probs[trainer][c]))] == truth[c] for c in cases])
        assert entry["accuracy"] == pytest.approx(argmax.mean())
        assert entry["ece"]["value"] == pytest.approx(C.expected_calibration_error(y, score))
        assert entry["ece"]["n_bins"] == 10 and sum(b["n"] for b in entry["ece"]["bins"]) == 24
    aucs = {t: report["trainers"][t]["classification"]["auc"]["auc"] for t in "ABC"}
    assert aucs["A"] > 0.9 > aucs["C"]  # the generated signal strengths come through

    comparisons = report["classification"]["comparisons"]
    assert [(c["classifier_a"], c["classifier_b"]) for c in comparisons] == [("A", "B"), ("A", "C"), ("B", "C")]
    raw_p = []
    for c in comparisons:
        a, b = (np.array([probs[t][k][1] for k in cases]) for t in (c["classifier_a"], c["classifier_b"]))
        test = C.delong_roc_test(y, a, b)
        assert c["p_value"] == pytest.approx(test["p_value"]) and c["difference"] == pytest.approx(test["difference"])
        raw_p.append(test["p_value"])
    np.testing.assert_allclose([c["p_holm"] for c in comparisons], S.holm_correction(raw_p))

    for name in ("roc.png", "reliability.png"):
        _valid_png(out / "figures" / name)
    assert report["classification"]["figures"] == {"ROC, malignant vs rest": "figures/roc.png",
                                                   "reliability diagram": "figures/reliability.png"}
    md = (out / "report.md").read_text()
    assert "## Classification (malignant vs rest)" in md and "![reliability diagram](figures/reliability.png)" in md
    row_a = next(line for line in md.splitlines() if line.startswith("| A | 24 (8) |"))
    assert f"{aucs['A']:.3f} [" in row_a
    assert "| A vs B | 24 |" in md

    # the study summary shows the same section, from this cv-report
    study_file = tmp_path / "study.toml"
    study_file.write_text(
        f'output = "study_out"\ntrainers = ["A", "B", "C", "D"]\nfolds = [0, 1, 2]\n[[datasets]]\nid = 995\n'
        f'[paths]\n' + "".join(f'{k} = "{v}"\n' for k, v in nnunet_env.items() if k.startswith("nnUNet_") and
                               k != "nnUNet_def_n_proc"))
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.config import load_study
    from bus_nnunet.study.summary import write_report
    study = load_study(study_file)
    layout = J.Layout(study)
    import shutil
    shutil.copytree(out, layout.cv_report(995, "nnUNetPlans"))
    page = write_report(study, layout, {}).read_text()
    summary = (layout.output / "summary.md").read_text()
    assert "Classification, malignant vs rest (nnUNetPlans" in summary
    assert f"| A | 24 (8) | {aucs['A']:.3f} [" in summary and "Paired AUC comparisons (nnUNetPlans" in summary
    assert "<th>AUC [95% CI]</th>" in page and "<td>A vs B</td>" in page
    for stem in ("roc", "reliability"):
        assert f'alt="{stem}" src="data:image/png;base64,' in page


def test_cv_report_refuses_a_stale_or_contradicting_classification_csv(nnunet_env, tmp_path, capsys):
    from bus_nnunet.cli import main
    ds = "Dataset996_Stale"
    _write_results(nnunet_env, ds, {"A": 2.0})
    val0 = Path(nnunet_env["nnUNet_results"]) / ds / "A__nnUNetPlans__2d" / "fold_0" / "validation"
    csv_file = val0 / "classification.csv"
    good = csv_file.read_text()
    args = ["cv-report", "996", "-tr", "A", "-f", "0", "1", "2", "--bootstrap", "50", "--no-progress"]
    # a row of a case of fold 1 in fold 0's file: written under another split
    csv_file.write_text(good + "c_08,benign,0.5,0.3,0.2,benign\n")
    assert main(args + ["-o", str(tmp_path / "r1")]) == 1
    err = capsys.readouterr().err
    assert str(csv_file) in err and "not validation cases of fold 0" in err and "c_08" in err
    assert not (tmp_path / "r1").exists()
    # the csv's class contradicts the manifest's
    lines = good.splitlines()
    lines[1] = lines[1].replace(",benign,", ",malignant,", 1)
    csv_file.write_text("\n".join(lines) + "\n")
    assert main(args + ["-o", str(tmp_path / "r2")]) == 1
    err = capsys.readouterr().err
    assert "c_00" in err and "the manifest says 'benign'" in err
    # a file without p_malignant
    csv_file.write_text("case_id,true_class,p_a,p_b\nc_00,benign,0.5,0.5\n")
    assert main(args + ["-o", str(tmp_path / "r3")]) == 1
    assert "needs the columns case_id and p_malignant" in capsys.readouterr().err


def test_cv_report_ensemble_rows_classify_with_the_mean_of_their_members(nnunet_env, tmp_path, monkeypatch):
    """--ensembles: an ensemble of classifying trainers classifies with the mean of their class
    probabilities; one with a member that does not classify gets no classification, and the
    report says why. (The ensembles' segmentation, which needs nnU-Net's validation
    probabilities, is tested in test_cv_ensembles; here it is the first member's.)"""
    from bus_nnunet.cli import main
    from bus_nnunet.evaluation import cross_validation as R
    from bus_nnunet.evaluation import ensembles as E

    def members_segmentation(ensemble, results, folder, **_):
        first = results[ensemble.members[0]]
        return R.TrainerResults(ensemble.name, first.folder, rows=list(first.rows), folds_found=list(first.folds_found))

    monkeypatch.setattr(E, "score_ensemble", members_segmentation)
    cases, truth, _, probs = _write_results(nnunet_env, "Dataset997_Ens", {"A": 2.5, "B": 1.0, "D": None})
    out = tmp_path / "r"
    assert main(["cv-report", "997", "-tr", "A", "B", "D", "-f", "0", "1", "2", "--bootstrap", "50",
                 "--no-progress", "--ensembles", "all", "best2", "-o", str(out)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    best2 = next(name for name, e in report["ensembles"].items() if e["selection"] == "best2")
    everyone = next(name for name, e in report["ensembles"].items() if e["selection"] == "all")
    assert report["ensembles"][best2]["members"] == ["A", "B"]  # equal Dice: the -tr order
    y = np.array([truth[c] == "malignant" for c in cases], int)
    mean = np.array([(probs["A"][c][1] + probs["B"][c][1]) / 2 for c in cases])
    entry = report["ensembles"][best2]["classification"]
    assert entry["auc"]["auc"] == pytest.approx(C.delong_auc(y, mean)["auc"])
    assert entry["ece"]["value"] == pytest.approx(C.expected_calibration_error(y, mean))
    assert "classification" not in report["ensembles"][everyone]
    assert report["classification"]["classifiers"] == ["A", "B", best2]
    assert f"{everyone}: no classification (D writes no classification.csv)" in report["classification"]["notes"]
    assert len(report["classification"]["comparisons"]) == 3
    assert f"| {best2} | 24 (8) |" in (out / "report.md").read_text()
