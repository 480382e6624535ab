"""The README's main command: `bus-nnunet demo` runs the whole pipeline and fails unless the trained
network beats the trivial predictions (quick profile here; `make demo` runs the full one)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus_nnunet import demo
from bus_nnunet.cli import main


def test_learning_shown_needs_both_baselines_beaten_by_the_margin():
    assert demo.LEARNING_MARGIN == 0.2
    assert demo.learning_shown(0.75, 0.07, 0.0)
    assert not demo.learning_shown(0.25, 0.07, 0.0)      # beats all-foreground, by less than 0.2
    assert not demo.learning_shown(0.45, 0.30, 0.0)      # 0.45 < 0.30 + 0.2
    assert not demo.learning_shown(0.60, 0.07, 0.45)     # the empty baseline counts too (normal cases)
    assert demo.learning_shown(0.70, 0.07, 0.45)
    assert not demo.learning_shown(math.nan, 0.07, 0.0)


def test_demo_quick_learns_end_to_end_and_refuses_to_overwrite(tmp_path):
    """Trained with nnUNetTrainerUS's classifying variant (issue 24), which segments as nnUNetTrainerUS
    does: the held-out Dice must beat both baselines, and ``bus-nnunet classify`` with the same
    model must separate 24 new benign / malignant cases, AUC >= 0.9 (0.99-1.0 measured after the
    quick profile's 180 steps, ``recipes.Classification``)."""
    out = tmp_path / "demo"
    cmd = [str(Path(sys.executable).parent / "bus-nnunet"), "demo", "--quick", "-o", str(out), "--device", "cpu",
           "--trainer", "nnUNetTrainerUS_Cls"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "nnUNet_def_n_proc": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    assert result["trainer"] == "nnUNetTrainerUS_Cls"
    assert result["test_cases"] == 4 and result["schedule"] == {"epochs": 12, "iterations": 15}
    assert result["learned"] is True, result
    assert result["mean_dice"] > result["baseline_all_foreground_dice"] + 0.2
    assert (out / "overlays.png").is_file() and (out / "report.md").read_text().startswith("# bus-nnunet demo")
    assert "Learning shown: **yes**" in (out / "report.md").read_text()
    assert (out / "evaluation" / "per_case.csv").is_file()
    assert result["evaluation"]["n_cases"] == result["test_cases"]  # evaluate's summary, read by its reader
    assert _held_out_auc(out, tmp_path / "held_out") >= 0.9
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 1 and "--overwrite" in again.stderr


def _held_out_auc(demo_out: Path, folder: Path, n: int = 24) -> float:
    """``bus-nnunet classify`` with the demo's model on ``n`` new cases of the demo's generator (another
    seed: benign smooth ovals with enhancement, malignant spiculated masses with shadowing), read as
    ordinary image files: one row of probabilities per case; returns the AUC of ``p_malignant``."""
    import csv
    import numpy as np
    from PIL import Image
    from bus_nnunet import synthetic
    folder.mkdir()
    rng = np.random.default_rng(2024)
    truth = {}
    for i in range(n):
        kind = ("benign", "malignant")[i % 2]
        image, _ = synthetic.make_case(rng, demo.PROFILES["quick"]["size"], kind)
        Image.fromarray(image).save(folder / f"case_{i:03d}.png")
        truth[f"case_{i:03d}"] = kind
    model = next((demo_out / "nnUNet_results").glob("Dataset*/nnUNetTrainerUS_Cls__*"))
    table = folder.parent / "held_out_classes.csv"
    proc = subprocess.run([str(Path(sys.executable).parent / "bus-nnunet"), "classify", "-i", str(folder), "-m",
                           str(model), "-o", str(table), "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(table)))
    assert sorted(r["case_id"] for r in rows) == sorted(truth)
    for r in rows:
        assert float(r["p_benign"]) + float(r["p_malignant"]) == pytest.approx(1, abs=1e-5)
    from sklearn.metrics import roc_auc_score
    return roc_auc_score([truth[r["case_id"]] == "malignant" for r in rows], [float(r["p_malignant"]) for r in rows])


def test_demo_that_learns_nothing_exits_nonzero_and_says_why(tmp_path, monkeypatch, capsys):
    # one training iteration: the network stays untrained, the rest of the pipeline is the real one
    monkeypatch.setitem(demo.PROFILES, "quick", {**demo.PROFILES["quick"], "epochs": 1, "iterations": 1,
                                                 "n_test": 2})
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    monkeypatch.setenv("nnUNet_extTrainer", os.environ.get("nnUNet_extTrainer", ""))  # restored afterwards
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["learned"] is False and result["schedule"] == {"epochs": 1, "iterations": 1}
    assert "nothing was learned" in err and f"held-out Dice {result['mean_dice']:.3f}" in err
    assert f"all-foreground ({result['baseline_all_foreground_dice']:.3f})" in err and "empty (0.000)" in err
    assert "Learning shown: **NO**" in (out / "report.md").read_text()  # the report is still written


def test_demo_with_an_unknown_trainer_fails_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--trainer", "SSNetTrainr", "--quick"]) == 1
    err = capsys.readouterr().err
    assert "unknown trainer 'SSNetTrainr'" in err and "did you mean SSNetTrainer" in err
    assert not out.exists()
