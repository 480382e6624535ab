"""Issue 23: ensemble rows in ``bus-nnunet cv-report``.

Two real (tiny) trainers on fold 0 with ``--npz``: nnUNetTrainerUS of the shared ``trained_us``
fixture (copied) and a schedule variant trained here (one training, to keep the test short; the
choice of the best k among more trainers is checked on known scores below).  The ensemble of the report must be
nnU-Net's own: ``nnUNetv2_ensemble`` on the same validation probabilities writes the same
segmentations, which score the same."""
import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import _nnunet

US = "nnUNetTrainerUS"
PAIR = (US, "nnUNetTrainerUS_1epoch")


@pytest.fixture(scope="module")
def pair(trained_us, tmp_path_factory):
    """``(dataset, env)`` with both trainers' fold 0 (validation with probabilities) in a private
    results folder."""
    ds, us_env = trained_us
    env = ds.results_env(tmp_path_factory.mktemp("pair"))
    shutil.copytree(_nnunet.model_folder(us_env, US), _nnunet.model_folder(env, US),
                    ignore=shutil.ignore_patterns("*.pth"))  # no checkpoint is read here
    _nnunet.train_cli(ds, env, PAIR[1], fold=0, extra=["--npz"])
    return ds, env


def _validation(env, trainer, fold=0) -> Path:
    return _nnunet.model_folder(env, trainer) / f"fold_{fold}" / "validation"


def test_ensemble_rows_equal_nnunet_ensemble(pair, tmp_path):
    from PIL import Image
    ds, env = pair
    out = tmp_path / "report"
    proc = _nnunet.run(["bus-nnunet", "cv-report", ds.dataset_id, "-tr", *PAIR, "-f", "0", "--ensembles", "best2",
                        "all", "-o", out, "--bootstrap", "200", "--no-progress"], env)
    report = json.loads((out / "metrics.json").read_text())
    mean_dice = {t: report["trainers"][t]["all_cases"]["per_image"]["dice"]["mean"] for t in PAIR}
    name = f"ensemble(best2: {'+'.join(PAIR)})"
    # 'all' has the same members as best2 of two trainers: scored once, under the first name asked
    assert list(report["ensembles"]) == [name]
    entry = report["ensembles"][name]
    assert entry["members"] == list(PAIR) and entry["selection"] == "best2"
    assert entry["member_mean_dice"] == mean_dice and entry["folds_found"] == [0]
    # the schema of a trainer's entry, so readers of metrics.json treat both alike
    assert set(report["trainers"][US]) < set(entry)
    assert entry["folder"] == str(out / "ensembles" / "ensemble_best2")

    # nnU-Net's own ensemble of the same validation probabilities (its CLI reads dataset.json and
    # plans.json from the first input folder, where nnUNetv2_predict leaves them)
    inputs = []
    for trainer in PAIR:
        folder = tmp_path / "inputs" / trainer
        shutil.copytree(_validation(env, trainer), folder, ignore=shutil.ignore_patterns("*.png", "*.json"))
        inputs.append(folder)
    for json_name in ("dataset.json", "plans.json"):
        shutil.copy(_nnunet.model_folder(env, US) / json_name, inputs[0] / json_name)
    theirs_dir = tmp_path / "nnunet_ensemble"
    _nnunet.run(["nnUNetv2_ensemble", "-i", *inputs, "-o", theirs_dir, "-np", "1"], env)
    theirs = {p.name[:-len(".png")]: np.array(Image.open(p)) for p in theirs_dir.glob("*.png")}
    ours = {p.name[:-len(".png")]: np.array(Image.open(p))
            for p in (out / "ensembles" / "ensemble_best2" / "fold_0" / "validation").glob("*.png")}
    splits = json.loads((ds.root / "preprocessed" / "Dataset990_SyntheticUS" / "splits_final.json").read_text())
    assert sorted(theirs) == sorted(ours) == sorted(splits[0]["val"])
    for case in theirs:
        np.testing.assert_array_equal(ours[case], theirs[case], err_msg=case)

    # ... and the report's per-case scores are those of nnU-Net's segmentations
    from bus_nnunet.evaluation import folder as F
    gt_dir = ds.root / "preprocessed" / "Dataset990_SyntheticUS" / "gt_segmentations"
    scored = {r["case_id"]: r for r in F.evaluate_cases(theirs_dir, gt_dir, progress=False, expected=sorted(theirs))}
    with open(out / "per_case.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["trainer"] == name]
    assert sorted(r["case_id"] for r in rows) == sorted(theirs)
    for r in rows:
        for metric in ("dice", "iou", "hd95"):
            ours_value = float(r[metric]) if r[metric] else float("nan")
            assert ours_value == pytest.approx(scored[r["case_id"]][metric], rel=1e-5, abs=1e-5, nan_ok=True)
    assert entry["all_cases"]["per_image"]["dice"]["mean"] == pytest.approx(
        np.nanmean([s["dice"] for s in scored.values()]))

    # the ensemble row takes part in the paired tests (Holm over the three pairs of each metric) ...
    dice_pairs = [(c["trainer_a"], c["trainer_b"]) for c in report["comparisons"] if c["metric"] == "dice"]
    assert dice_pairs == [PAIR, (US, name), (PAIR[1], name)]
    # ... the tables, the figures and the printed table
    md = (out / "report.md").read_text()
    assert f"| {name} | 1/1 |" in md and f"| {name} | 0 |" in md  # results, per fold
    assert "highest mean per-image Dice over all validation cases" in md
    assert "Ensemble all has the same members as " + name in md
    assert (out / "figures" / "montage_ensemble_best2.png").stat().st_size > 1000
    assert name in proc.stdout


def test_ensemble_names_the_member_without_probabilities(pair, tmp_path):
    """A member without the .npz of a validation case: an error naming the trainer, the fold and
    the command that writes it, and no report."""
    ds, trained_env = pair
    env = ds.results_env(tmp_path)
    for trainer in PAIR:
        shutil.copytree(_nnunet.model_folder(trained_env, trainer), _nnunet.model_folder(env, trainer),
                        ignore=shutil.ignore_patterns("*.pth"))
    victim = sorted(_validation(env, PAIR[1]).glob("*.npz"))[0]
    victim.unlink()
    out = tmp_path / "report"
    proc = _nnunet.run(["bus-nnunet", "cv-report", ds.dataset_id, "-tr", *PAIR, "-f", "0", "--ensembles", "all",
                        "-o", out, "--no-progress"], env, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"{PAIR[1]} fold 0 has no saved probabilities" in proc.stderr and victim.stem in proc.stderr
    assert f"nnUNetv2_train Dataset990_SyntheticUS 2d 0 -tr {PAIR[1]} -p nnUNetPlans --val --npz" in proc.stderr
    assert not out.exists()


def _results(**dice_by_trainer):
    return {t: SimpleNamespace(trainer=t, rows=[{"dice": d} for d in dice]) for t, dice in dice_by_trainer.items()}


def test_choose_ensembles_ranks_by_mean_dice_and_scores_a_member_set_once():
    from bus_nnunet.evaluation.ensembles import choose_ensembles
    results = _results(A=[0.5, 0.7], B=[0.9, float("nan")], C=[0.8, 0.8])
    ensembles, notes = choose_ensembles(results, ["best2", "all", "best3"])
    assert [(e.name, e.members, e.slug) for e in ensembles] == [
        ("ensemble(best2: B+C)", ("B", "C"), "ensemble_best2"), ("ensemble(all)", ("A", "B", "C"), "ensemble_all")]
    assert notes == ["ensemble best3 has the same members as ensemble(all); scored once"]
    # ties keep the -tr order
    assert choose_ensembles(_results(A=[0.5], B=[0.9], C=[0.9]), ["best2"])[0][0].members == ("B", "C")
    assert choose_ensembles(results, []) == ([], [])


@pytest.mark.parametrize("selections, message", [
    (["best1"], "k must be at least 2"), (["top3"], "unknown ensemble 'top3'"), (["all", "all"], "asked for twice"),
    (["best4"], "only 3 trainer(s)")])
def test_choose_ensembles_refuses_bad_selections(selections, message):
    from bus_nnunet.errors import UserError
    from bus_nnunet.evaluation.ensembles import choose_ensembles
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_ensembles(_results(A=[0.5], B=[0.9], C=[0.8]), selections)
    with pytest.raises(UserError, match="at least 2 trainers"):
        choose_ensembles(_results(A=[0.5]), ["all"])
    with pytest.raises(UserError, match="B has none"):
        choose_ensembles(_results(A=[0.5], B=[]), ["all"])
