"""benchmarks/gpu_check.py in its CPU mode at tiny sizes: the code paths a GPU run takes (nnU-Net's
train_step under autocast, the fp32-vs-autocast inference comparison, throughput with mirroring, the
kernel checks), its results schema, and that a check fails when it should (a NaN in the training data).

A representative set of trainers keeps this well under a minute on one core: nnU-Net's plan-built
U-Net (nnU-Net's own train_step), SS-Net (the selective scan), ACSNet (its own train_step with the
classification loss, deformable convolution), SCRNet (attention under autocast) and nnUNetTrainerUS_Cls
(issue 24: the class loss in the AMP step, the head under TorchDynamo's graph capture, backend
"eager"); the other networks take the same per-trainer code path, and ``python benchmarks/gpu_check.py --device cpu
--tiny`` runs them all.
"""
import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRAINERS = ["nnUNetTrainer", "SSNetTrainer", "ACSNetTrainer", "SCRNetTrainer", "nnUNetTrainerUS", "nnUNetTrainerUS_Cls"]
POISONED = "nnUNetTrainerUS"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCHMARKS))
    import torch
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("gpu_check")
    out = folder / "gpu_check.json"
    try:
        status = gpu_check.main(["--device", "cpu", "--tiny", "--threads", "1", "--trainers", *TRAINERS,
                                 "--inject-nan", POISONED, "--compile", "--compile-backend", "eager", "--work", str(folder / "work"), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    payload = json.loads(out.read_text())
    rows = {(r["subject"], r["check"]): r for r in payload["rows"]}
    return status, payload, rows, out.with_suffix(".md").read_text()


def test_results_carry_the_environment_and_say_no_gpu_run(cpu_run):
    _, payload, _, markdown = cpu_run
    env = payload["environment"]
    for key in ("torch", "nnunetv2", "mamba_ssm", "device", "date_utc", "torch_threads"):
        assert key in env, key
    assert payload["gpu_run"] is False and env["gpu_run"] is False
    assert "Not run on a GPU" in markdown
    assert payload["trainers"] == TRAINERS
    assert sum(payload["counts"].values()) == len(payload["rows"])


def test_every_trainer_trains_under_bf16_autocast(cpu_run):
    _, _, rows, _ = cpu_run
    for name in TRAINERS:
        assert rows[(name, "build")]["status"] == "PASS", rows[(name, "build")]
        if name == POISONED:
            continue
        train = rows[(name, "train")]
        assert train["status"] == "PASS", train
        assert train["precision"] == "bfloat16 autocast"
        assert math.isfinite(train["loss_first"]) and math.isfinite(train["loss_last"])
        assert train["nonfinite_grad_steps"] == 0 and train["step_ms"] > 0
    assert rows[("SSNetTrainer", "train")]["grad_clip"] == 1.0  # the recipe's clipping, not nnU-Net's 12
    assert rows[("nnUNetTrainer", "train")]["grad_clip"] == 12


def test_a_nan_in_the_data_fails_the_train_check_and_the_run(cpu_run):
    status, _, rows, markdown = cpu_run
    poisoned = rows[(POISONED, "train")]
    assert poisoned["status"] == "FAIL"
    assert poisoned["nonfinite_loss_steps"] == poisoned["steps"]
    assert status == 1
    assert f"{POISONED} train" in markdown


def test_inference_throughput_and_kernel_rows_carry_numbers(cpu_run):
    _, _, rows, _ = cpu_run
    for name in TRAINERS:
        throughput = rows[(name, "throughput")]
        assert throughput["status"] == "PASS"
        assert throughput["images_per_s_b1"] > throughput["images_per_s_b1_mirror"] > 0
        if name == POISONED:  # its weights took a NaN step
            continue
        inference = rows[(name, "inference")]
        assert inference["status"] in ("PASS", "FAIL") and inference["autocast"] == "bfloat16"
        assert 0 <= inference["mean_abs_softmax_diff"] <= 1 and 0 <= inference["argmax_dice"] <= 1
        assert inference["nonfinite"] == 0
    assert rows[("SSNetTrainer", "compile")]["status"] == "SKIP"  # SS-Net disallows torch.compile
    for name in ("nnUNetTrainer", "nnUNetTrainerUS_Cls"):  # TorchDynamo's graph capture (backend eager) on the CPU
        compiled = rows[(name, "compile")]
        assert compiled["status"] == "PASS" and compiled["backend"] == "eager", compiled
    # issue 24: the classifying variant's head, traced, gives the eager class logits
    assert rows[("nnUNetTrainerUS_Cls", "compile")]["class_logits_max_abs_difference"] <= 1e-3
    assert rows[("ACSNet", "deform_conv2d")]["status"] == "PASS"
    scan = rows[("SS-Net", "scan")]
    assert scan["status"] == "PASS" and max(scan["max_rel_error"].values()) <= 1e-5
    assert rows[("SS-Net", "mamba-ssm")]["status"] == "SKIP"


def test_foreground_dice():
    import torch
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from gpu_check import foreground_dice
    finally:
        sys.path.remove(str(BENCHMARKS))
    a = torch.tensor([[0, 1, 1, 0]])
    assert foreground_dice(a, a, 2) == 1.0
    assert foreground_dice(a, torch.tensor([[0, 1, 0, 0]]), 2) == pytest.approx(2 / 3)
    assert foreground_dice(torch.zeros(1, 4), torch.zeros(1, 4), 2) == 1.0
