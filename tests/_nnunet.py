"""Helpers that drive the real nnU-Net command-line tools on tiny synthetic data (CPU smoke runs)."""
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bus_nnunet import harness, tool_runner
# nnUNet_n_proc_DA=0: in-process augmentation (no worker start-up); only for training, since
# nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA) and fails on 0.
SMOKE_SCHEDULE = {"BUS_NNUNET_NUM_EPOCHS": "1", "BUS_NNUNET_NUM_ITERATIONS": "2",
                  "BUS_NNUNET_NUM_VAL_ITERATIONS": "1", "nnUNet_n_proc_DA": "0"}
DATASET_ID = 990


def make_env(root: Path) -> dict:
    return {**harness.nnunet_env(root), "nnUNet_def_n_proc": "2", "OMP_NUM_THREADS": "2"}


def run(cmd, env: dict, timeout=900, check=True) -> subprocess.CompletedProcess:
    """Run an nnU-Net / bus-nnunet command of this venv with ``env`` on top of os.environ; with
    ``check``, fail with its output."""
    return tool_runner.run_tool(cmd, env, timeout=timeout, check=check)


@dataclass
class PlannedDataset:
    root: Path
    env: dict
    dataset_id: int
    raw: Path

    def results_env(self, tmp_path: Path) -> dict:
        """The dataset's env with a private nnUNet_results folder (tests may run in parallel)."""
        results = tmp_path / "results"
        results.mkdir(parents=True, exist_ok=True)
        return {**self.env, "nnUNet_results": str(results)}

    def build_trainer(self, cls, tmp_path: Path, monkeypatch, edit_plans=None):
        """A ``cls`` trainer for this dataset's 2d plans, fold 0, on CPU, built as nnU-Net's API builds
        it (env from :meth:`results_env`); ``edit_plans(plans)`` may change the plans first."""
        import json
        import torch
        for k, v in self.results_env(tmp_path).items():
            monkeypatch.setenv(k, v)
        pre = Path(self.env["nnUNet_preprocessed"]) / self.raw.name
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        plans["continue_training"] = False
        if edit_plans is not None:
            edit_plans(plans)
        return cls(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))


def plan_synthetic_dataset(root: Path, n_cases=12, size=(64, 64), n_test=2) -> PlannedDataset:
    env = make_env(root)
    raw = harness.plan_synthetic_dataset(env, DATASET_ID, "SyntheticUS", n_cases=n_cases, size=size, n_test=n_test)
    return PlannedDataset(root, env, DATASET_ID, raw)


def train_cli(ds: PlannedDataset, env: dict, trainer: str, fold=0, extra=(), schedule=None):
    """``nnUNetv2_train <id> 2d <fold> -tr <trainer> -device cpu`` with a smoke schedule."""
    return run(["nnUNetv2_train", ds.dataset_id, "2d", fold, "-tr", trainer, "-device", "cpu", *extra],
               {**env, **(schedule or SMOKE_SCHEDULE)})


def predict_cli(ds: PlannedDataset, env: dict, trainer: str, out: Path, folds=(0,), extra=()):
    return run(["nnUNetv2_predict", "-i", ds.raw / "imagesTs", "-o", out, "-d", ds.dataset_id, "-c", "2d",
                "-tr", trainer, "-f", *folds, "-device", "cpu", "-npp", "0", "-nps", "0", *extra], env)


def predict_and_check_masks(ds: PlannedDataset, env: dict, trainer: str, out: Path, extra=()) -> list:
    """``nnUNetv2_predict`` on the planned dataset's two 64x64 test images; asserts both come back
    as 0/1 masks of the input size and returns the prediction files."""
    import numpy as np
    from PIL import Image
    predict_cli(ds, env, trainer, out, extra=extra)
    preds = sorted(out.glob("*.png"))
    assert len(preds) == 2
    for pred in preds:
        seg = np.array(Image.open(pred))
        assert seg.shape == (64, 64) and set(np.unique(seg)) <= {0, 1}
    return preds


def model_folder(env: dict, trainer: str, dataset_id=DATASET_ID) -> Path:
    return Path(env["nnUNet_results"]) / f"Dataset{dataset_id:03d}_SyntheticUS" / f"{trainer}__nnUNetPlans__2d"
