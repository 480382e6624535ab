"""Classifying variants (issue 24): each network's ``<Trainer>_Cls`` trains through nnU-Net's
``nnUNetv2_train`` (a ResEnc plan among them), validates into ``fold_k/validation/classification.csv``,
predicts through ``nnUNetv2_predict`` and classifies through ``bus-nnunet classify`` (several
models too); a dataset without classes stops before training with one line.

The learning check (AUC >= 0.9 on held-out synthetic cases, Dice above both baselines) is the
demo's quick training in ``tests/test_demo.py``, which uses ``nnUNetTrainerUS_Cls``; the gradients
of every classifying variant are in ``tests/test_gradients.py``; ACSNet's CLI run in
``tests/test_acsnet.py``.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import _nnunet
from bus_nnunet.trainers import CLASSIFYING, CLASSIFYING_VARIANTS, TRAINERS

#: one classifying variant per distinct network (nnU-Net's plain U-Net: the demo's learning test)
CLI_TRAINERS = {
    "nnUNetTrainerUS_Cls": "nnUNetResEncUNetMPlans",
    "SCRNetTrainer_ClsBalanced": "nnUNetPlans",
    "AttUNetSkips_CBAM_BCE_Trainer_Cls": "nnUNetPlans",
    "AnatoSegNetTrainerDiceCE_ClsUW": "nnUNetPlans",
    "SSNetTrainerIntended_Cls": "nnUNetPlans",
}
RESENC = "nnUNetResEncUNetMPlans"

#: nnU-Net's own entry points, run one after another in one process (the console scripts
#: ``nnUNetv2_train`` / ``nnUNetv2_predict`` / ``nnUNetv2_plan_experiment`` are these functions): one
#: interpreter start for all
DRIVER = """
import json, os, sys
from nnunetv2.run.run_training import run_training_entry
from nnunetv2.inference.predict_from_raw_data import predict_entry_point
from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_experiment_entry
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    # in-process augmentation for training; the planner sets torch's threads to this and needs >= 1
    os.environ["nnUNet_n_proc_DA"] = "1" if argv[0] == "nnUNetv2_plan_experiment" else "0"
    {"nnUNetv2_train": run_training_entry, "nnUNetv2_predict": predict_entry_point,
     "nnUNetv2_plan_experiment": plan_experiment_entry}[argv[0]]()
"""


def test_classifying_variants_are_the_base_trainer_plus_the_task():
    """Every variant keeps its base trainer's recipe and network; only the classification task differs."""
    from bus_nnunet.registration import lookup_trainer
    for name, cls in CLASSIFYING.items():
        base_name, suffix = name.rsplit("_", 1)
        base = TRAINERS.get(base_name) or next(c for c in cls.__mro__ if c.__name__ == base_name)
        assert issubclass(cls, base) and suffix in CLASSIFYING_VARIANTS
        if hasattr(base, "recipe"):
            assert cls.recipe.with_(classification=None) == base.recipe
        assert cls.recipe.classification == CLASSIFYING_VARIANTS[suffix]
        assert getattr(cls, "network_kwargs", None) == getattr(base, "network_kwargs", None)
    assert "ACSNetTrainer_Cls" not in CLASSIFYING  # it classifies already
    assert CLASSIFYING["nnUNetTrainer_Cls"].ultrasound_augmentation is False  # nnU-Net's own augmentation
    assert CLASSIFYING["nnUNetTrainerUS_ClsUW"].nonnegative_loss  # the uncertainty weighting needs losses >= 0
    found = lookup_trainer("nnUNetTrainerUS_Cls_1epoch")  # nnU-Net's own trainer search
    assert not found["error"], found


@pytest.mark.parametrize("features", ["deep", "deep:input"])
def test_feature_hook_under_torch_compile_matches_eager(features):
    """nnU-Net compiles the network on CUDA: the hook that hands the deepest features to the head is
    traced by TorchDynamo (backend "eager": the same graph capture, no code generation, so it runs on
    the CPU) and gives the eager outputs and head gradients; the plain forward keeps no feature map."""
    from torch import nn
    from bus_nnunet.trainers.classification import ClassifyingNetwork

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.deep, self.dec = nn.Conv2d(1, 8, 3, 2, 1), nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(16, 2, 1)

        def forward(self, x):
            return nn.functional.interpolate(self.dec(self.deep(self.enc(x).relu())), scale_factor=4)

    torch.manual_seed(0)
    net = ClassifyingNetwork(Tiny(), 3, features, 1, (16, 16))
    x = torch.randn(2, 1, 32, 32)
    results = []
    for model in (net, torch.compile(net, backend="eager")):
        seg, logits = model(x, return_classification=True)
        (seg.square().mean() + logits.logsumexp(1).mean()).backward()
        results.append((seg.detach(), logits.detach(), net.classifier.fc.weight.grad.clone()))
        net.zero_grad()
        assert torch.equal(model(x), seg.detach()) and net._tap.value is None
    for eager, compiled in zip(*results):
        assert torch.allclose(eager, compiled, atol=1e-6)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def trained_variants(planned_dataset, tmp_path_factory):
    """nnU-Net's ResEnc M preset planned for the dataset (it reuses nnUNetPlans' preprocessed 2d data),
    then every CLI_TRAINERS variant trained (1 epoch x 1 iteration, 1 validation iteration, final
    validation) and its predictions of the two test images, all in one process."""
    ds = planned_dataset
    tmp = tmp_path_factory.mktemp("classifying_cli")
    env = {**ds.results_env(tmp), **_nnunet.SMOKE_SCHEDULE, "BUS_NNUNET_NUM_ITERATIONS": "1",
           "nnUNet_def_n_proc": "1", "BUS_NNUNET_PRETRAINED": "none"}
    runs = [["nnUNetv2_plan_experiment", "-d", str(ds.dataset_id), "-pl", "nnUNetPlannerResEncM"]]
    for trainer, plans in CLI_TRAINERS.items():
        runs.append(["nnUNetv2_train", str(ds.dataset_id), "2d", "0", "-tr", trainer, "-p", plans, "-device", "cpu"])
        runs.append(["nnUNetv2_predict", "-i", str(ds.raw / "imagesTs"), "-o", str(tmp / "pred" / trainer), "-d",
                     str(ds.dataset_id), "-c", "2d", "-tr", trainer, "-p", plans, "-f", "0", "-device", "cpu",
                     "-npp", "0", "-nps", "0", "--disable_tta"])
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(runs)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    folders = {t: Path(env["nnUNet_results"]) / ds.raw.name / f"{t}__{p}__2d" for t, p in CLI_TRAINERS.items()}
    return ds, tmp, folders, proc.stdout


@pytest.mark.parametrize("trainer", sorted(CLI_TRAINERS))
def test_variant_trains_validates_and_predicts_through_nnunet(trained_variants, trainer):
    ds, tmp, folders, log = trained_variants
    folder = folders[trainer]
    plans = json.loads((folder / "plans.json").read_text())
    assert plans["configurations"]["2d"]["classification_classes"] == ["benign", "malignant"]
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                         weights_only=False)["network_weights"]
    assert weights["classifier.fc.weight"].shape[0] == 2  # the head is saved with the network
    assert ("loss_weighting.sigma" in weights) == trainer.endswith("_ClsUW")

    manifest = {r["case_id"]: r["class"] for r in csv.DictReader(open(ds.raw / "manifest.csv"))}
    splits = json.loads((Path(ds.env["nnUNet_preprocessed"]) / ds.raw.name / "splits_final.json").read_text())
    rows = list(csv.DictReader(open(folder / "fold_0" / "validation" / "classification.csv")))
    assert sorted(r["case_id"] for r in rows) == sorted(splits[0]["val"])
    for r in rows:
        assert r["true_class"] == manifest[r["case_id"]]
        p = np.array([float(r["p_benign"]), float(r["p_malignant"])])
        assert p.sum() == pytest.approx(1, abs=1e-5) and r["predicted_class"] == ("benign", "malignant")[p.argmax()]
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()  # nnU-Net's segmentation validation
    summary = json.loads((folder / "fold_0" / "validation" / "classification_summary.json").read_text())
    assert summary["malignant_vs_rest"]["n"] == len(rows)

    preds = sorted((tmp / "pred" / trainer).glob("*.png"))
    assert len(preds) == 2  # nnUNetv2_predict: segmentation only, as for any trainer
    for pred in preds:
        seg = np.array(Image.open(pred))
        assert seg.shape == (64, 64) and set(np.unique(seg)) <= {0, 1}


def test_resenc_variant_and_class_weights_are_what_was_asked(trained_variants):
    ds, tmp, folders, log = trained_variants
    plans = json.loads((folders["nnUNetTrainerUS_Cls"] / "plans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["network_class_name"].endswith("ResidualEncoderUNet")
    assert plans["plans_name"] == RESENC
    log_text = (next((folders["SCRNetTrainer_ClsBalanced"] / "fold_0").glob("training_log_*.txt"))).read_text()
    assert "class weights (training fold 0, counts" in log_text


def test_classify_any_variant_alone_and_several_models(trained_variants):
    """``bus-nnunet classify``'s function with a classifying variant, and with two variants of different
    networks (-m A -m B, weighted): the ensemble is the weighted mean of each model's probabilities
    (the command line itself: tests/test_acsnet.py and the demo test)."""
    from bus_nnunet.inference.classification import classify_images
    ds, tmp, folders, log = trained_variants
    images = ds.raw / "imagesTs"
    a, b = folders["nnUNetTrainerUS_Cls"], folders["SCRNetTrainer_ClsBalanced"]
    names_a, pa, classes, _, _ = classify_images([images], a, progress=False)  # what the command calls
    assert sorted(names_a) == sorted(p.name[:-len("_0000.png")] for p in images.glob("*.png"))
    assert pa.sum(1) == pytest.approx(1, abs=1e-5)
    names_b, pb, _, _, _ = classify_images([images], b, progress=False)
    names, pab, classes_ab, _, _ = classify_images([images], [a, b], weights=[1, 3], progress=False)
    assert names == names_a == names_b and classes_ab == classes == ["benign", "malignant"]
    assert pab == pytest.approx((pa + 3 * pb) / 4, abs=1e-6)


def test_dataset_without_classes_stops_before_training_with_one_line(planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.trainers.base import TrainerSetupError
    ds = planned_dataset
    manifest = tmp_path / "manifest.csv"
    rows = list(csv.DictReader(open(ds.raw / "manifest.csv")))
    manifest.write_text("case_id,class,split\n" + "".join(f"{r['case_id']},,{r['split']}\n" for r in rows))
    for k, v in {**ds.results_env(tmp_path), "BUS_NNUNET_MANIFEST": str(manifest)}.items():
        monkeypatch.setenv(k, v)
    pre = Path(ds.env["nnUNet_preprocessed"]) / ds.raw.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net's run_training adds this key
    with pytest.raises(TrainerSetupError) as raised:
        CLASSIFYING["nnUNetTrainerUS_Cls"](plans, "2d", 0, json.loads((pre / "dataset.json").read_text()),
                                           torch.device("cpu"))
    message = raised.value.code  # what nnUNetv2_train prints, alone, before exiting with status 1
    train_ids = sorted(r["case_id"] for r in rows if r["split"] == "train")
    assert message.startswith(f"nnUNetTrainerUS_Cls: manifest {manifest} gives no class for any of the "
                              f"{len(train_ids)} training cases: {', '.join(train_ids[:5])} and "
                              f"{len(train_ids) - 5} more;")
    assert "\n" not in message and "'class' column" in message
