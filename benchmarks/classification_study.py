"""Benign/malignant classification on real data: the classifying trainer variants beside ACSNet.

BrEaST (``../shared/data/BrEaST``, a downscaled copy with the longer side <= 128 px, as
``benchmarks/external_validation.py`` uses), fold 0, the same budget for every trainer (10 epochs x
30 iterations at batch 4 = 300 steps, 4 validation iterations per epoch, through ``nnUNetv2_train``
with the ``BUS_NNUNET_NUM_*`` schedule, :func:`bus_nnunet.study.budget_train.budget_train`):

* **trainers**: the classifying variants of nnUNetTrainerUS and of two published networks that
  learn at this budget (the CBAM attention U-Net with skip attention and AnatoSegNet with Dice+CE,
  see ``results/convergence*.md``), beside **ACSNetTrainer** (the network that classifies by
  design).  With ``--reuse`` (default: the external-validation benchmark's work folder) the
  BrEaST conversion, its ``nnUNetPlans_bs4`` preprocessing and ACSNet's finished fold are taken
  from there instead of being made again (same data, split and budget); nothing there is changed.
  With ``--train-without-head`` the trainers without the head that --reuse lacks are trained here
  too, last, for the paired Dice column.
* **report**: per trainer the validation AUC (malignant vs benign) with its 95 % confidence
  interval, sensitivity / specificity / accuracy at 0.5, the expected calibration error, the mean ±
  std per-image Dice (cv-report), the paired AUC comparisons (DeLong, Holm), the ROC curves and the
  reliability diagrams.

Resumable: a fold with ``checkpoint_final.pth`` and its validation is not trained again (one with
only ``checkpoint_latest.pth`` continues with ``--c``); the trainings run one after the other.
Writes OUT.json / OUT.md (command, environment stamp, time) and OUT_roc.png / OUT_reliability.png
(cv-report's figures)::

    python benchmarks/classification_study.py --threads 2 --train-without-head
        # idle 2-core CPU: 56 min for all seven trainings (ACSNet 7 min, nnUNetTrainerUS_Cls 3.6,
        # the attention U-Net's variant 4.6, AnatoSegNet's 14.3, and the three head-less trainers)
    python benchmarks/classification_study.py --report-only   # the tables from what is finished
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_study  # noqa: E402  (downscaled_copy, log)
from _common import add_real_data_budget_arguments, environment_stamp, markdown_table, stamp_markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASET_ID, DATASET = 601, "Dataset601_BrEaST"
CONFIGURATION = "2d"
#: the classifying variants (nnUNetTrainerUS's first) and the reference that classifies by design
TRAINERS = ("nnUNetTrainerUS_Cls", "AttUNetSkips_CBAM_BCE_Trainer_Cls", "AnatoSegNetTrainerDiceCE_Cls")
REFERENCE = "ACSNetTrainer"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), help="classifying trainers to train")
    p.add_argument("--reference", default=REFERENCE, help="trainer reused from --reuse when finished there")
    add_real_data_budget_arguments(p)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per training (1: on a shared machine more threads wait on busy cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reuse", type=Path, default=HERE / "work" / "external",
                   help="work folder of benchmarks/external_validation.py: its BrEaST data and finished "
                        "reference fold are used read-only when they match this budget")
    p.add_argument("--train-without-head", action="store_true",
                   help="also train each variant's trainer without the head here when --reuse has no finished "
                        "fold of it (for the paired Dice column)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished folds")
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "classification")
    p.add_argument("--out", type=Path, default=HERE / "results" / "classification")
    return p.parse_args(argv)


def plans_name(args) -> str:
    return f"nnUNetPlans_bs{args.batch_size}"


def nnunet_env(work: Path, args) -> dict:
    from bus_nnunet.schedule import SCHEDULE_ENV
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
               nnUNet_results=str(work / "results"), nnUNet_def_n_proc="1",
               # in-process augmentation: worker processes only compete for the same cores
               nnUNet_n_proc_DA="0", BUS_NNUNET_TORCH_THREADS=str(args.threads))
    env.update({SCHEDULE_ENV["num_epochs"]: str(args.epochs),
                SCHEDULE_ENV["num_iterations_per_epoch"]: str(args.iterations),
                SCHEDULE_ENV["num_val_iterations_per_epoch"]: str(args.val_iterations)})
    return env


def model_folder(root: Path, trainer: str, args) -> Path:
    return root / "results" / DATASET / f"{trainer}__{plans_name(args)}__{CONFIGURATION}"


def same_budget(fold_folder: Path, args) -> bool:
    """The training log of ``fold_folder`` shows this benchmark's epochs, iterations and plans."""
    logs = sorted(fold_folder.glob("training_log_*.txt"))
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    return (re.search(rf"\bBUS_NNUNET_NUM_EPOCHS={args.epochs}\b", text) is not None
            and re.search(rf"\bBUS_NNUNET_NUM_ITERATIONS={args.iterations}\b", text) is not None
            and (fold_folder.parent / "plans.json").is_file()
            and json.loads((fold_folder.parent / "plans.json").read_text())
            ["configurations"][CONFIGURATION]["batch_size"] == args.batch_size)


def prepare(args, work: Path) -> dict:
    """raw + preprocessed BrEaST in ``work`` (copied from --reuse when it has them, else converted and
    planned here) and the reference model folder (a link to --reuse's when finished there)."""
    notes = {}
    env = nnunet_env(work, args)
    reuse = args.reuse.resolve() if args.reuse else None
    for kind in ("raw", "preprocessed"):
        target = work / kind / DATASET
        if target.is_dir():
            continue
        source = reuse / kind / DATASET if reuse else None
        if source is not None and (source / "dataset.json").is_file() and \
                (kind == "raw" or (source / f"{plans_name(args)}.json").is_file()):
            # copied (16 MB), not linked: a training may write into preprocessed/, --reuse stays untouched
            shutil.copytree(source, target.with_name(target.name + ".partial"), symlinks=False, dirs_exist_ok=True)
            target.with_name(target.name + ".partial").rename(target)
            notes[kind] = f"copied from {source}"
    if not (work / "raw" / DATASET).is_dir():
        if not (DATA / "BrEaST").exists():
            sys.exit(f"{DATA / 'BrEaST'} is missing: this benchmark needs ../shared/data beside the checkout")
        source = accuracy_study.downscaled_copy(DATA / "BrEaST", work / f"source_breast_max{args.max_size}",
                                                args.max_size)
        run([str(tool("bus-nnunet")), "convert", "breast", str(source), "--id", str(DATASET_ID),
             "-o", str(work / "raw"), "--no-progress"], env, work / "logs" / "convert.log")
        notes["raw"] = f"converted from {source}"
    if not (work / "preprocessed" / DATASET / f"{plans_name(args)}.json").is_file():
        # nnU-Net's planner passes nnUNet_n_proc_DA to torch.set_num_threads, which refuses 0
        run([sys.executable, "-m", "bus_nnunet.study.plan_dataset", str(DATASET_ID), CONFIGURATION,
             "ExperimentPlanner", "nnUNetPlans", "1", str(args.batch_size)], dict(env, nnUNet_n_proc_DA="1"),
            work / "logs" / "plan.log")
        notes["preprocessed"] = "planned here"
    # read-only links into --reuse: the reference, and each variant's trainer without the head (for
    # the paired Dice test); a link is made only to a finished fold at this budget
    for trainer in (args.reference, *plain_trainers(args.trainers)):
        target = model_folder(work, trainer, args)
        source = model_folder(reuse, trainer, args) if reuse else None
        fold = source / f"fold_{args.fold}" if source else None
        if not target.exists() and fold is not None and (fold / "checkpoint_final.pth").is_file() and \
                (fold / "validation" / "summary.json").is_file() and same_budget(fold, args) and \
                (trainer != args.reference or (fold / "validation" / "classification.csv").is_file()):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)
        if target.is_symlink():
            folder = target.resolve()
            notes.setdefault("reused", {})[trainer] = str(folder.relative_to(HERE.parent)
                                                          if folder.is_relative_to(HERE.parent) else folder)
    return notes


def plain_trainers(trainers):
    """The trainers the classifying variants were made from (``T_Cls`` -> ``T``)."""
    return [re.sub(r"_Cls$", "", t) for t in trainers if t.endswith("_Cls")]


def tool(name: str) -> Path:
    from bus_nnunet.tool_runner import tool as find
    return find(name)


def run(cmd, env, log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if rc:
        accuracy_study.log(f"exit status {rc}: {' '.join(cmd)} (log {log})")
    return rc


def fold_state(folder: Path) -> str:
    if (folder / "checkpoint_final.pth").is_file():
        return "done" if (folder / "validation" / "summary.json").is_file() else "validate"
    return "resume" if (folder / "checkpoint_latest.pth").is_file() else "new"


def train(args, work: Path, trainer: str) -> dict:
    """One fold of ``trainer`` at the budget (or its missing validation); skipped when finished."""
    folder = model_folder(work, trainer, args) / f"fold_{args.fold}"
    state = fold_state(folder)
    if state == "done":
        return {"status": "finished earlier"}
    flags = {"new": [], "resume": ["--c"], "validate": ["--val"]}[state]
    accuracy_study.log(f"training {trainer} fold {args.fold} ({state}; log {work / 'logs' / (trainer + '.log')})")
    cmd = [sys.executable, str(HERE / "_common.py"), "budget-train", str(DATASET_ID), CONFIGURATION, str(args.fold),
           "-tr", trainer, "-p", plans_name(args), "-device", args.device, *flags]
    rc = run(cmd, nnunet_env(work, args), work / "logs" / f"{trainer}.log")
    return {"status": "trained" if rc == 0 else f"failed (exit status {rc})"}


def training_seconds(folder: Path):
    """Wall seconds from the first epoch's start to the last epoch's end (nnU-Net's timestamps)."""
    import torch
    checkpoint = folder / "checkpoint_final.pth"
    if not checkpoint.is_file():
        return None
    logging = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
    if not logging.get("epoch_start_timestamps"):
        return None
    return round(logging["epoch_end_timestamps"][-1] - logging["epoch_start_timestamps"][0], 1)


def collect(args, work: Path, trainers) -> dict:
    """cv-report over the finished folds: per trainer the Dice and the classification section
    (DeLong AUC CI, sens/spec at 0.5, accuracy, ECE), the paired DeLong tests and the figures."""
    finished = [t for t in trainers
                if fold_state(model_folder(work, t, args) / f"fold_{args.fold}") == "done"]
    plain = [t for t in plain_trainers(finished)
             if fold_state(model_folder(work, t, args) / f"fold_{args.fold}") == "done"]
    if not finished:
        return {"trainers": {}, "classification": {}, "missing": list(trainers)}
    report = work / "cv_report"
    rc = run([str(tool("bus-nnunet")), "cv-report", str(DATASET_ID), "-tr", *finished, *plain, "-p", plans_name(args),
              "-c", CONFIGURATION, "-f", str(args.fold), "-o", str(report), "--overwrite", "--no-progress"],
             nnunet_env(work, args), work / "logs" / "cv_report.log")
    if rc:
        sys.exit(f"cv-report failed (exit status {rc}); see {work / 'logs' / 'cv_report.log'}")
    metrics = json.loads((report / "metrics.json").read_text())
    rows = {}
    for trainer in finished:
        entry = metrics["trainers"][trainer]
        rows[trainer] = {"dice": entry["all_cases"]["per_image"]["dice"],
                         "classification": entry.get("classification")}
    for trainer, row in rows.items():
        base = re.sub(r"_Cls$", "", trainer)
        if base != trainer and base in metrics["trainers"]:
            test = next((c for c in metrics.get("comparisons", []) if c["metric"] == "dice"
                         and {c["trainer_a"], c["trainer_b"]} == {trainer, base}), None)
            row["without_head"] = {"trainer": base, "dice": metrics["trainers"][base]["all_cases"]["per_image"]["dice"],
                                   "paired_test": test}
    section = metrics.get("classification", {})
    figures = {}
    for key, name in (("roc", "roc"), ("reliability", "reliability")):
        source = report / "figures" / f"{name}.png"
        if source.is_file():
            target = args.out.with_name(f"{args.out.name}_{name}.png")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            figures[key] = target.name
    return {"trainers": rows, "missing": [t for t in trainers if t not in finished],
            "classification": {k: section.get(k) for k in ("rules", "comparisons", "notes")}, "figures": figures}


def _num(value, digits=3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def _without_head(entry) -> str:
    if not entry:
        return "–"
    text = f"{_num(entry['dice']['mean'])} ± {_num(entry['dice']['std'])}"
    test = entry.get("paired_test")
    if test and test.get("p_value") is not None:
        sign = 1 if test["trainer_a"] == entry["trainer"] else -1  # as 'with head - without'
        text += f" (with - without {-sign * test['mean_difference']:+.3f}, Wilcoxon p {test['p_value']:.2g})"
    return text


def write_outputs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    s = result["settings"]
    rows = []
    for trainer, row in result["trainers"].items():
        c = row["classification"] or {}
        auc, at = c.get("auc") or {}, c.get("at_0.5") or {}
        seconds = result["runs"].get(trainer, {}).get("training_seconds")
        rows.append([trainer, f"{_num(auc.get('auc'))} ({_num(auc.get('ci_low'))}–{_num(auc.get('ci_high'))})",
                     _num(at.get("sensitivity")), _num(at.get("specificity")), _num(c.get("accuracy")),
                     _num((c.get("ece") or {}).get("value")),
                     f"{_num(row['dice']['mean'])} ± {_num(row['dice']['std'])}",
                     _without_head(row.get("without_head")),
                     "–" if seconds is None else f"{seconds / 60:.1f}"])
    first = next(iter(result["trainers"].values()), {}).get("classification") or {}
    counts = ", ".join(f"{n} {k}" for k, n in (first.get("class_counts") or {}).items())
    lines = ["# Benign/malignant classification", "",
             f"BrEaST (longer side <= {s['max_size']} px), fold {s['fold']}'s {first.get('n_cases', '?')} validation "
             f"cases ({counts}), every trainer {s['epochs']} x {s['iterations']} iterations at batch "
             f"{s['batch_size']} ({s['epochs'] * s['iterations']} steps) through `nnUNetv2_train`. Malignant vs "
             f"rest on `p_malignant` (cv-report's classification section): AUC with DeLong's 95 % CI; "
             f"sensitivity, specificity at 0.5; accuracy of the most probable class; expected calibration "
             f"error over 10 equal-width bins; mean ± std per-image Dice. Youden's threshold is chosen on the "
             f"training folds' out-of-fold cases, which needs at least two folds: with one fold it is undefined "
             f"and not reported. 'Dice without the head': the same trainer without `_Cls` (same data, split and "
             f"budget), with the per-image paired difference and its Wilcoxon signed-rank p (cv-report).", ""]
    for key in ("raw", "preprocessed"):
        if result["notes"].get(key):
            lines += [f"- {key}: {result['notes'][key]}"]
    for trainer, folder in result["notes"].get("reused", {}).items():
        lines += [f"- {trainer}: not trained here; its finished fold is reused read-only from `{folder}` "
                  f"(the external-validation run, `benchmarks/external_validation.py`: same data, split and budget)"]
    lines += ["", f"Command: `{result['command']}`", "",
              f"Time: {result['seconds'] / 60:.1f} min for this invocation; training (nnU-Net's epoch timestamps, "
              f"column 'train min').", "", stamp_markdown(result["environment"]), "",
              markdown_table(["trainer", "AUC (95 % CI, DeLong)", "sens @0.5", "spec @0.5", "accuracy", "ECE",
                              "Dice", "Dice without the head", "train min"], rows), ""]
    if result.get("missing"):
        lines += [f"Not finished (not reported): {', '.join(result['missing'])}.", ""]
    comparisons = (result.get("classification") or {}).get("comparisons") or []
    if comparisons:
        lines += ["## Paired AUC comparisons (DeLong, Holm)", "",
                  markdown_table(["a", "b", "AUC a", "AUC b", "a - b (95 % CI)", "p", "p (Holm)"],
                                 [[c["classifier_a"], c["classifier_b"], _num(c["auc_a"]), _num(c["auc_b"]),
                                   f"{c['difference']:+.3f} ({c['ci_low']:+.3f} to {c['ci_high']:+.3f})",
                                   f"{c['p_value']:.3g}", f"{c['p_holm']:.3g}"] for c in comparisons]), ""]
    for key, title in (("roc", "ROC curves"), ("reliability", "Reliability diagram")):
        if result.get("figures", {}).get(key):
            lines += [f"![{title}]({result['figures'][key]})", ""]
    for note in (result.get("classification") or {}).get("notes") or []:
        lines += [f"- {note}"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    notes = prepare(args, work)
    trainers = [args.reference, *[t for t in args.trainers if t != args.reference]]
    # the head-less trainers feed only the paired Dice column, so they are trained last
    trained = trainers + ([t for t in plain_trainers(args.trainers) if not model_folder(work, t, args).is_symlink()]
                          if args.train_without_head else [])
    runs = {}
    for trainer in trained:
        if args.report_only:
            runs[trainer] = {"status": fold_state(model_folder(work, trainer, args) / f"fold_{args.fold}")}
        else:
            runs[trainer] = train(args, work, trainer)
    for trainer in trained:
        runs[trainer]["training_seconds"] = training_seconds(model_folder(work, trainer, args) / f"fold_{args.fold}")
    result = {"command": "python benchmarks/classification_study.py " + " ".join(argv if argv is not None
                                                                                   else sys.argv[1:]),
              "environment": environment_stamp(args.device), "notes": notes,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "seconds": round(time.time() - started, 1), "runs": runs}
    result.update(collect(args, work, trainers))
    write_outputs(result, args.out)
    accuracy_study.log(f"wrote {args.out.with_suffix('.md')}")
    return 0 if all(r["status"] in ("trained", "finished earlier", "done") for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
