"""Convergence study: does every trainer learn real ultrasound at one fixed budget?

A preset of ``accuracy_study.py``: nnUNetTrainerUS and one default trainer per published network
(SS-Net, ACSNet, AnatoSegNet, SCRNet, attention U-Net with CBAM) on BrEaST's 252 lesion cases
(``../shared/data/BrEaST``, downscaled so the longer side is <= 128 px), fold 0, the same number
of iterations at the same batch size for every trainer, through nnU-Net's own training
(``nnUNetv2_train`` with the ``BUS_NNUNET_NUM_*`` budget; each trainer's lr schedule is its
paper's, stretched over the budget).  Then, per trainer:

* per epoch, from nnU-Net's own logger (the ``logging`` dict of ``checkpoint_final.pth``, the same
  numbers as ``progress.png``): train loss, validation loss, pseudo-Dice, lr;
* the final out-of-fold validation Dice (nnU-Net's validation predictions, per image) next to the
  all-foreground and the empty-mask baselines;
* for ACSNet, the validation classification AUC (``validation/classification_summary.json``);
* a verdict: learned (Dice >= 0.3 and >= 2x the all-foreground baseline, loss fell), NaN, or
  collapsed (every prediction empty or all foreground).

Writes ``benchmarks/results/convergence.{json,md,png}`` (learning curves of all trainers).
Resumable: a finished training run is reused (same budget only), so re-running after an
interruption trains only what is missing.  Default budget: 10 epochs x 20 iterations at batch 4
(200 optimiser steps), 4 validation iterations per epoch.

    python benchmarks/convergence_study.py                      # the CPU study (~1-1.5 h on 2 cores)
    python benchmarks/convergence_study.py --trainers AttUNet_CBAM_BCE_Trainer --epochs 30 \\
        --workdir benchmarks/work/convergence_long --out benchmarks/results/convergence_long   # a longer run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_study  # noqa: E402
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAINERS = ("nnUNetTrainerUS", "AttUNet_CBAM_BCE_Trainer", "ACSNetTrainer", "SSNetTrainer", "AnatoSegNetTrainer",
            "SCRNetTrainer")
REFERENCE = "nnUNetTrainerUS"
MIN_DICE, MIN_OVER_ALL_FOREGROUND, MIN_RATIO = 0.3, 2.0, 0.8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=20, help="training iterations per epoch (default 20)")
    p.add_argument("--val-iterations", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-size", type=int, default=128)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "convergence")
    p.add_argument("--out", type=Path, default=HERE / "results" / "convergence")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per training run (default 0: nnU-Net's choice, every core); 1 leaves a "
                        "core free on a shared machine")
    return p.parse_args(argv)


def model_folder(work: Path, trainer: str, plans: str, fold: int) -> Path:
    found = sorted((work / "results").glob(f"Dataset*/{trainer}__{plans}__2d/fold_{fold}"))
    return found[0] if found else None


def per_image_dice(pred_dir: Path, gt_dir: Path):
    """(Dice of the predictions, Dice of an all-foreground mask, of an empty mask, mean predicted /
    reference foreground pixels) per validation image."""
    from bus_nnunet.evaluation.folder import list_segmentations, read_segmentation
    from bus_nnunet.evaluation.metrics import dice_score
    preds, refs = list_segmentations(pred_dir), list_segmentations(gt_dir)
    rows = []
    for case, path in sorted(preds.items()):
        ref = read_segmentation(refs[case]) > 0
        pred = read_segmentation(path) > 0
        rows.append((dice_score(ref, pred), dice_score(ref, np.ones_like(ref)), dice_score(ref, np.zeros_like(ref)),
                     int(pred.sum()), int(ref.sum()), pred.all() or not pred.any(), int((pred & ref).sum())))
    return rows


def _by_size(dice: np.ndarray, n_ref: np.ndarray) -> dict:
    """Mean Dice of the smaller and the larger half of the lesions (by reference pixels)."""
    small = n_ref <= np.median(n_ref)
    return {"small_half": float(dice[small].mean()), "large_half": float(dice[~small].mean())}


def analyse(trainer: str, folder: Path, gt_dir: Path) -> dict:
    import torch
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    train_loss = [float(v) for v in logging["train_losses"]]
    val_loss = [float(v) for v in logging["val_losses"]]
    pseudo = [float(np.nanmean(v)) for v in logging["dice_per_class_or_region"]]
    rows = per_image_dice(folder / "validation", gt_dir)
    dice, all_fg, empty, n_pred, n_ref, degenerate, n_tp = (np.array(c, dtype=float) for c in zip(*rows))
    record = {
        "trainer": trainer,
        "val_dice": float(dice.mean()),
        "val_dice_median": float(np.median(dice)),
        # pooled over images, as nnU-Net's pseudo-Dice pools over its validation patches
        "val_dice_pooled": float(2 * n_tp.sum() / (n_pred.sum() + n_ref.sum())),
        "val_dice_by_reference_size": _by_size(dice, n_ref),
        "val_images": len(rows),
        "baseline_all_foreground_dice": float(all_fg.mean()),
        "baseline_empty_dice": float(empty.mean()),
        "predicted_pixels_per_image": float(n_pred.mean()),
        "reference_pixels_per_image": float(n_ref.mean()),
        "degenerate_predictions": int(degenerate.sum()),
        "train_loss_by_epoch": train_loss,
        "val_loss_by_epoch": val_loss,
        "pseudo_dice_by_epoch": pseudo,
        "lr_by_epoch": [float(v) for v in logging["lrs"]],
        "min_train_loss": float(np.min(train_loss)),
        "train_loss_nonnegative_every_epoch": bool(min(train_loss) >= 0),
        "nan": bool(any(not math.isfinite(v) for v in train_loss + val_loss)),
    }
    if "val_cls_auc" in logging:
        record["val_cls_auc_by_epoch"] = [float(v) for v in logging["val_cls_auc"]]
    cls_summary = folder / "validation" / "classification_summary.json"
    if cls_summary.exists():
        record["val_classification_auc"] = json.loads(cls_summary.read_text())["malignant_vs_rest"]["auc"]
    first, last = np.mean(train_loss[:2]), np.mean(train_loss[-2:])
    record["loss_fell"] = bool(last < first)
    record["learned"] = bool(record["val_dice"] >= MIN_DICE and
                             record["val_dice"] >= MIN_OVER_ALL_FOREGROUND * record["baseline_all_foreground_dice"]
                             and record["loss_fell"] and not record["nan"])
    return record


def plot_curves(records: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in records.items():
        epochs = np.arange(1, len(r["train_loss_by_epoch"]) + 1)
        axes[0].plot(epochs, r["train_loss_by_epoch"], marker="o", ms=3, label=name)
        axes[1].plot(epochs, r["pseudo_dice_by_epoch"], marker="o", ms=3, label=name)
        axes[2].semilogy(epochs, r["lr_by_epoch"], marker="o", ms=3, label=name)
    axes[0].set(title="train loss (each trainer's own loss)", xlabel="epoch")
    axes[1].set(title="validation pseudo-Dice (nnU-Net)", xlabel="epoch", ylim=(0, 1))
    axes[2].set(title="learning rate", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(study: dict, out: Path) -> None:
    records = study["trainers"]
    ref = records.get(REFERENCE, {}).get("val_dice")
    main_study = out.parent / "convergence.json"
    if ref is None and main_study.exists() and main_study != out.with_suffix(".json"):
        # a run of a few trainers (e.g. a longer one) is compared with the main study's reference
        ref = json.loads(main_study.read_text())["trainers"].get(REFERENCE, {}).get("val_dice")
        study["reference_from"] = f"{main_study.name}: {REFERENCE} val Dice {ref}"
    rows = []
    for name, r in records.items():
        if "val_dice" not in r:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", r.get("status", "")])
            continue
        ratio = r["val_dice"] / ref if ref else float("nan")
        r["ratio_to_reference"] = round(ratio, 3)
        notes = [] if r["learned"] else ["NOT LEARNED"]
        if ref and ratio < MIN_RATIO:
            notes.append(f"< {MIN_RATIO} x {REFERENCE}")
        if "val_classification_auc" in r:
            notes.append(f"classification AUC {r['val_classification_auc']:.3f}")
        if r["nan"]:
            notes.append("NaN loss")
        if r["degenerate_predictions"]:
            notes.append(f"{r['degenerate_predictions']} empty/all-foreground predictions")
        rows.append([name, f"{r['val_dice']:.3f}", f"{ratio:.2f}", f"{r['baseline_all_foreground_dice']:.3f}",
                     f"{r['val_dice_pooled']:.3f}", f"{r['pseudo_dice_by_epoch'][-1]:.3f}", f"{r['train_loss_by_epoch'][0]:.3f} -> "
                     f"{r['train_loss_by_epoch'][-1]:.3f} (min {r['min_train_loss']:.3f})",
                     f"{r.get('seconds', 0):.0f}", "; ".join(notes)])
    s = study["settings"]
    lines = ["# Convergence study", "",
             f"BrEaST lesion cases (longer side <= {s['max_size']} px), fold {s['fold']}, every trainer "
             f"{s['epochs']} epochs x {s['iterations']} iterations at batch {s['batch_size']} "
             f"({s['epochs'] * s['iterations']} optimiser steps), {s['val_iterations']} validation iterations per "
             f"epoch, each trainer's own recipe with its lr schedule stretched over this budget, through "
             f"`nnUNetv2_train`. Validation Dice: per image on nnU-Net's out-of-fold validation predictions "
             f"(mean); baseline: an all-foreground mask (an empty mask scores 0 on every lesion image); "
             f"pooled: TP/FP/FN summed over the images first, as nnU-Net's pseudo-Dice pools its validation "
             f"patches (foreground-oversampled), so large lesions weigh more.", "",
             f"Command: `{study['command']}`", "", stamp_markdown(study["environment"]), "",
             markdown_table(["trainer", "val Dice", f"x {REFERENCE}", "all-foreground Dice", "val Dice pooled",
                             "last pseudo-Dice",
                             "train loss first -> last", "train s", "notes"], rows), "",
             "![learning curves](convergence.png)" if out.name == "convergence" else f"![learning curves]({out.name}.png)",
             ""]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(study, indent=2))


def main(argv=None) -> int:
    from bus_nnunet.study.config import batch_plans_name
    args = parse_args(argv)
    plans = batch_plans_name("nnUNetPlans", args.batch_size)  # the plans copy the study trains on
    if args.threads:
        os.environ["BUS_NNUNET_TORCH_THREADS"] = str(args.threads)
    cv_out = args.workdir / "accuracy_report"
    accuracy_study.main(["--trainers", *args.trainers, "--folds", str(args.fold), "--epochs", str(args.epochs),
                         "--iterations", str(args.iterations), "--val-iterations", str(args.val_iterations),
                         "--max-size", str(args.max_size), "--batch-size", str(args.batch_size),
                         "--device", args.device, "--workdir", str(args.workdir), "--out", str(cv_out)])
    accuracy = json.loads(cv_out.with_suffix(".json").read_text())
    work = args.workdir.resolve()
    raw = sorted((work / "raw").glob("Dataset*"))[0]
    gt_dir = work / "preprocessed" / raw.name / "gt_segmentations"
    study = {"command": "python benchmarks/convergence_study.py " + " ".join(argv if argv is not None else sys.argv[1:]),
             "environment": environment_stamp(args.device), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                                           for k, v in vars(args).items()},
             "dataset": raw.name, "cases": len(list((raw / "labelsTr").glob("*.png"))), "trainers": {}}
    for trainer in args.trainers:
        run = accuracy["trainers"].get(trainer, {}).get("folds", {}).get(str(args.fold), {})
        folder = model_folder(work, trainer, plans, args.fold)
        if folder is None or not (folder / "checkpoint_final.pth").exists():
            study["trainers"][trainer] = {"trainer": trainer, "status": run.get("status", "not trained"),
                                          "log_tail": run.get("log_tail", "")}
            continue
        study["trainers"][trainer] = {**analyse(trainer, folder, gt_dir), "seconds": run.get("seconds", 0),
                                      "status": run.get("status", "")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = {k: v for k, v in study["trainers"].items() if "val_dice" in v}
    if done:
        plot_curves(done, args.out.with_suffix(".png"),
                    f"BrEaST <= {args.max_size} px, fold {args.fold}, {args.epochs} x {args.iterations} iterations, "
                    f"batch {args.batch_size}")
    write_report(study, args.out)
    accuracy_study.log(f"wrote {args.out.with_suffix('.md')}")
    return 0 if done and all(r["learned"] for r in done.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
