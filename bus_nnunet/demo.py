"""The end-to-end demo: synthetic BUSI-layout data -> converter -> nnU-Net planning ->
training with one of our trainers -> prediction -> evaluation -> report and overlay picture.

Every step runs the real command a user would run (``bus-nnunet convert``,
``nnUNetv2_plan_and_preprocess``, ``nnUNetv2_train``, ``nnUNetv2_predict``,
``bus-nnunet evaluate``), in subprocesses, with nnU-Net's folders inside the demo folder.
A run whose held-out Dice does not beat the trivial predictions (:func:`learning_shown`) fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bus_nnunet.errors import UserError
from bus_nnunet.harness import nnunet_env, plan_command
from bus_nnunet.tool_runner import tool
from bus_nnunet.io_utils import atomic_write_text, check_output_free, write_output_marker

DATASET_ID = 599
DATASET_NAME = "Dataset599_DemoBUSI"

#: full demo: 5-9 minutes on 2 CPU cores (8.5 min measured while a test suite shared the cores); quick: ~2
#: minutes, 180 iterations at 64 px: held-out Dice 0.93-0.95, and nnUNetTrainerUS_Cls's held-out AUC
#: 0.99-1.0 (fewer steps leave its average-pooled class head unlearned: ``recipes.Classification``)
PROFILES = {
    "full": {"counts": {"benign": 36, "malignant": 24, "normal": 8}, "size": (128, 128), "n_test": 12,
             "epochs": 12, "iterations": 20, "val_iterations": 4},
    "quick": {"counts": {"benign": 8, "malignant": 6, "normal": 2}, "size": (64, 64), "n_test": 4,
              "epochs": 12, "iterations": 15, "val_iterations": 1},
}
#: the held-out Dice must beat both trivial predictions (all-foreground, empty) by this much
LEARNING_MARGIN = 0.2


def learning_shown(dice: float, all_foreground_dice: float, empty_dice: float,
                   margin: float = LEARNING_MARGIN) -> bool:
    """Whether the held-out Dice beats both baselines by ``margin`` (False for a NaN Dice)."""
    return bool(dice > max(all_foreground_dice, empty_dice) + margin)


class DemoRun:
    def __init__(self, out: Path, trainer: str, profile: str, device: str):
        self.out, self.trainer, self.profile, self.device = out, trainer, PROFILES[profile], device
        self.env = {**os.environ, **nnunet_env(out, prefix="nnUNet_"),
                    "nnUNet_def_n_proc": os.environ.get("nnUNet_def_n_proc", "2"),
                    "PYTHONUNBUFFERED": "1"}
        self.log = out / "logs"
        self.timings = {}

    def step(self, name: str, cmd, extra_env=None):
        """Run one command, streaming a short progress line and keeping its full log."""
        print(f"[demo] {name}: {' '.join(map(str, cmd))}", flush=True)
        self.log.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(self.log / f"{name}.log", "w") as logf:
            proc = subprocess.Popen([tool(cmd[0]), *map(str, cmd[1:])], env={**self.env, **(extra_env or {})},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:
                logf.write(line)
                if any(k in line for k in ("Epoch ", "train_loss", "Pseudo dice", "epoch time", "Predicting",
                                           "Mean Validation Dice", "converted", "cases")):
                    print("        " + line.rstrip()[:150], flush=True)
            proc.wait()
        self.timings[name] = round(time.time() - t0, 1)
        if proc.returncode != 0:
            tail = (self.log / f"{name}.log").read_text()[-3000:]
            raise UserError(f"demo step '{name}' failed (exit {proc.returncode}); full log: "
                            f"{self.log / (name + '.log')}\n{tail}")

    def run(self):
        from bus_nnunet import synthetic
        p = self.profile
        source = self.out / "source"
        print(f"[demo] writing {sum(p['counts'].values())} synthetic ultrasound images in BUSI's layout", flush=True)
        synthetic.write_busi_layout(source, p["counts"], size=p["size"], seed=0)
        self.write_test_set(self.out / "test", p["n_test"], p["size"])

        self.step("convert", ["bus-nnunet", "convert", "busi", source, "--id", DATASET_ID,
                              "--name", "DemoBUSI", "--raw-root", self.env["nnUNet_raw"]])
        self.step("plan_and_preprocess", plan_command(DATASET_ID))
        schedule = {"BUS_NNUNET_NUM_EPOCHS": str(p["epochs"]), "BUS_NNUNET_NUM_ITERATIONS": str(p["iterations"]),
                    "BUS_NNUNET_NUM_VAL_ITERATIONS": str(p["val_iterations"])}
        self.step("train", ["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", self.trainer,
                            "-device", self.device], schedule)
        pred = self.out / "predictions_test"
        self.step("predict", ["nnUNetv2_predict", "-i", self.out / "test" / "images", "-o", pred,
                              "-d", DATASET_ID, "-c", "2d", "-tr", self.trainer, "-f", "0", "-device", self.device,
                              "-npp", "1", "-nps", "1"])
        self.step("evaluate", ["bus-nnunet", "evaluate", "--pred", pred, "--gt", self.out / "test" / "labels",
                               "--manifest", self.out / "test" / "manifest.csv", "-o", self.out / "evaluation",
                               "--no-progress"])
        return self.report(pred)

    @staticmethod
    def write_test_set(folder: Path, n: int, size):
        """Held-out synthetic cases (different seed) in nnU-Net's imagesTs/labelsTs naming."""
        from bus_nnunet import synthetic
        rng = np.random.default_rng(12345)
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir(parents=True)
        rows = ["case_id,class,split"]
        for i in range(n):
            kind = ("benign", "malignant")[i % 2]
            img, masks = synthetic.make_case(rng, size, kind)
            seg = np.any(masks, axis=0).astype(np.uint8) if masks else np.zeros(size, np.uint8)
            case = f"demo_test_{i:03d}"
            Image.fromarray(img).save(folder / "images" / f"{case}_0000.png")
            Image.fromarray(seg).save(folder / "labels" / f"{case}.png")
            rows.append(f"{case},{kind},test")
        (folder / "manifest.csv").write_text("\n".join(rows) + "\n")

    def report(self, pred: Path) -> dict:
        from bus_nnunet.evaluation.metrics import dice_score
        from bus_nnunet.evaluation.folder_report import read_folder_report
        labels = sorted((self.out / "test" / "labels").glob("*.png"))
        refs = [np.array(Image.open(p)) > 0 for p in labels]
        preds = [np.array(Image.open(pred / p.name)) > 0 for p in labels]
        images = [np.array(Image.open(self.out / "test" / "images" / p.name.replace(".png", "_0000.png")))
                  for p in labels]
        dice = float(np.mean([dice_score(r, q) for r, q in zip(refs, preds)]))
        all_fg = float(np.mean([dice_score(r, np.ones_like(r)) for r in refs]))
        empty = float(np.mean([dice_score(r, np.zeros_like(r)) for r in refs]))
        overlay = self.out / "overlays.png"
        save_overlay_montage(images, refs, preds, overlay)
        evaluation = read_folder_report(self.out / "evaluation")
        result = {"trainer": self.trainer, "test_cases": len(labels), "mean_dice": dice,
                  "baseline_all_foreground_dice": all_fg, "baseline_empty_dice": empty,
                  "learned": learning_shown(dice, all_fg, empty), "timings_s": self.timings,
                  "schedule": {k: self.profile[k] for k in ("epochs", "iterations")}}
        lines = [
            "# bus-nnunet demo report", "",
            f"Synthetic breast-ultrasound data in BUSI's layout, converted with `bus-nnunet convert busi`, "
            f"planned by nnU-Net, trained with `{self.trainer}` for {self.profile['epochs']} epochs x "
            f"{self.profile['iterations']} iterations on {self.device}, predicted on {len(labels)} held-out cases.", "",
            "| prediction | mean Dice (held-out) |", "|---|---|",
            f"| {self.trainer} | {dice:.3f} |",
            f"| all-foreground baseline | {all_fg:.3f} |",
            f"| empty baseline | {empty:.3f} |", "",
            f"Learning shown: **{'yes' if result['learned'] else 'NO'}** (Dice must beat both baselines by "
            f"{LEARNING_MARGIN}).", "",
            "Full metrics (IoU, precision, recall, HD95, per class): `evaluation/summary.md`.", "",
            "Step timings (s): " + ", ".join(f"{k} {v}" for k, v in self.timings.items()), "",
            "![overlays](overlays.png)  green: reference, red: prediction", "",
        ]
        summary_md = self.out / "evaluation" / "summary.md"
        if summary_md.is_file():
            lines += ["## Evaluation summary", "", summary_md.read_text()]
        atomic_write_text(self.out / "report.md", "\n".join(lines))
        (self.out / "result.json").write_text(json.dumps({**result, "evaluation": evaluation.summary},
                                                         indent=2, default=str))
        return result


def save_overlay_montage(images, refs, preds, path, max_cases: int = 8):
    """Grayscale images with reference (green) and predicted (red) contours, side by side."""
    from scipy import ndimage
    tiles = []
    for img, ref, pred in list(zip(images, refs, preds))[:max_cases]:
        rgb = np.stack([img] * 3, -1).astype(np.uint8) if img.ndim == 2 else img[..., :3].copy()
        for mask, colour in ((ref, (0, 255, 0)), (pred, (255, 0, 0))):
            edge = mask & ~ndimage.binary_erosion(mask)
            rgb[edge] = colour
        tiles.append(rgb)
    montage = np.concatenate(tiles, axis=1)
    scale = max(1, 512 // montage.shape[0])
    Image.fromarray(montage).resize((montage.shape[1] * scale, montage.shape[0] * scale), Image.NEAREST).save(path)


def run_demo(out, trainer: str = "nnUNetTrainerUS", quick: bool = False, overwrite: bool = False,
             device: str = None, require_learning: bool = True) -> dict:
    """Run the demo; with ``require_learning`` a run whose held-out Dice does not beat both baselines
    raises :class:`UserError` (exit 1 from the CLI) after writing its report."""
    out = Path(out).resolve()
    check_output_free(out, overwrite, "demo folder", folder=True)  # no user inputs: the demo makes its own data
    from bus_nnunet.registration import ensure_registered, lookup_trainer
    ensure_registered()
    found = lookup_trainer(trainer)  # before anything is written: a typo must not cost a conversion
    if found["error"]:
        from bus_nnunet.errors import did_you_mean
        from bus_nnunet.trainers import TRAINERS
        raise UserError(f"unknown trainer {trainer!r}: nnU-Net's trainer search does not find it ({found['error']}); "
                        f"{did_you_mean(trainer, ['nnUNetTrainer', *TRAINERS])}"
                        "`bus-nnunet trainers` lists bus-nnunet's trainers")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_output_marker(out, "demo")  # so that `bus-nnunet demo --overwrite` (make demo) may replace it next time
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    result = DemoRun(out, trainer, "quick" if quick else "full", device).run()
    print(f"[demo] done in {time.time() - t0:.0f} s: held-out Dice {result['mean_dice']:.3f} "
          f"(all-foreground {result['baseline_all_foreground_dice']:.3f}, empty "
          f"{result['baseline_empty_dice']:.3f}); report: {out / 'report.md'}, picture: {out / 'overlays.png'}")
    if require_learning and not result["learned"]:
        q = PROFILES["quick"]
        raise UserError(
            f"nothing was learned: held-out Dice {result['mean_dice']:.3f} does not beat the all-foreground "
            f"({result['baseline_all_foreground_dice']:.3f}) and empty ({result['baseline_empty_dice']:.3f}) "
            f"baselines by {LEARNING_MARGIN}, so the trained network segments no better than a trivial "
            f"prediction. The pipeline ran; check the training log {out / 'logs' / 'train.log'} and the report "
            f"{out / 'report.md'}" + (f" (--quick trains only {q['epochs'] * q['iterations']} iterations; a slower "
                                      f"trainer may need the full demo)." if quick else "."))
    return result
