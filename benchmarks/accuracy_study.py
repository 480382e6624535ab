"""Accuracy study: every selected trainer on the same dataset, plan, folds and training budget,
compared by ``bus-nnunet cv-report`` on the out-of-fold validation predictions.

Steps (each skipped when its output already exists in --workdir, so an interrupted study resumes):

1. convert  ``bus-nnunet convert <dataset> SOURCE --id N --raw-root WORKDIR/raw``
   (with ``--max-size S``: from a copy of the source whose PNGs are downscaled so the longer side
   is at most S pixels -- images bilinear, masks nearest; the CPU smoke setting)
2. plan     ``nnUNetv2_plan_and_preprocess -d N -c 2d``
3. train    ``nnUNetv2_train N 2d FOLD -tr TRAINER`` per trainer and fold, through
   ``benchmarks/_common.py budget-train`` so the BUS_NNUNET_NUM_EPOCHS / _NUM_ITERATIONS budget
   also applies to nnU-Net's stock nnUNetTrainer; nnU-Net's final validation writes the
   out-of-fold predictions (``fold_k/validation``).
4. report   ``bus-nnunet cv-report N -tr ... -f ... -o OUT``; its JSON/Markdown are copied to --out.

A trainer that is missing or fails is recorded with the reason (log tail) and left out of the
report; the study never stops for one trainer.

CPU smoke study (default)::

    python benchmarks/accuracy_study.py      # = --folds 0 1 --epochs 2 --iterations 10 --val-iterations 1
                                             #   --max-size 128 --batch-size 2, the default trainers

GPU study (the real comparison; 5 folds, each trainer's full schedule)::

    python benchmarks/accuracy_study.py --full --device cuda --workdir /data/bus_study
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_stamp, markdown_table, run_command, stamp_markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCES = {"breast": HERE.parent.parent / "shared" / "data" / "BrEaST"}
#: the accuracy bar (nnU-Net's default U-Net, with and without ultrasound augmentation) and one
#: trainer per published network, cheapest first so an interrupted smoke study still compares some
DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerUS", "AttUNet_CBAM_BCE_Trainer", "SSNetTrainer", "ACSNetTrainer",
                    "AnatoSegNetTrainer", "SCRNetTrainer")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def downscaled_copy(source: Path, target: Path, max_size: int) -> Path:
    """Copy ``source`` with every PNG shrunk so its longer side is <= max_size (masks: names
    containing 'mask', 'tumor' or 'other', resampled nearest so they stay binary)."""
    from PIL import Image
    if (target / ".complete").exists():
        return target
    if target.exists():
        shutil.rmtree(target)
    n = 0
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() != ".png":
            shutil.copy2(path, dest)
            continue
        with Image.open(path) as im:
            scale = max_size / max(im.size)
            if scale < 1:
                is_mask = any(k in path.stem.lower() for k in ("mask", "tumor", "other"))
                size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
                im = im.resize(size, Image.NEAREST if is_mask else Image.BILINEAR)
                n += 1
            im.save(dest)
    (target / ".complete").write_text(f"{n} PNGs downscaled to longer side <= {max_size}\n")
    log(f"downscaled copy of {source} -> {target} ({n} PNGs resized to <= {max_size} px)")
    return target


def dataset_folder_name(raw_root: Path, dataset_id: int):
    found = sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*"))
    return found[0].name if found else None


def tail(text: str, n: int = 1500) -> str:
    return text[-n:] if text else ""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="breast", help="converter name (bus-nnunet convert <dataset>); default breast")
    p.add_argument("--source", type=Path, default=None, help="the dataset as released (default for breast: "
                                                               "../shared/data/BrEaST)")
    p.add_argument("--id", type=int, default=501, dest="dataset_id", help="nnU-Net dataset id (default 501)")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                   help="trainer class names, or 'all' for every bus-nnunet trainer + nnUNetTrainer "
                        f"(default: {' '.join(DEFAULT_TRAINERS)})")
    p.add_argument("--folds", nargs="+", type=int, default=[0, 1], help="folds (default 0 1)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trainer (default 2; ignored with --full)")
    p.add_argument("--iterations", type=int, default=10, help="training iterations per epoch (default 10)")
    p.add_argument("--val-iterations", type=int, default=1, help="validation iterations per epoch (default 1)")
    p.add_argument("--max-size", type=int, default=128,
                   help="downscale a copy of the source so the longer image side is <= this (default 128, the "
                        "CPU smoke setting; 0 = original images)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="override the plan's 2d batch size through a plans copy 'nnUNetPlans_bsN' (same "
                        "preprocessed data; default 2, the CPU smoke setting; 0 = the plan's own)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--full", action="store_true",
                   help="the real study: 5 folds, each trainer's own schedule, original image size")
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "accuracy",
                   help="nnUNet_raw/_preprocessed/_results root (default benchmarks/work/accuracy)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "accuracy_smoke",
                   help="report prefix: writes OUT.json and OUT.md (default benchmarks/results/accuracy_smoke)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per training run before it is abandoned")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples in the report (default 1000)")
    args = p.parse_args(argv)
    if args.full:
        (args.folds, args.epochs, args.iterations, args.val_iterations, args.max_size,
         args.batch_size) = [0, 1, 2, 3, 4], 0, 0, 0, 0, 0
        if args.out == HERE / "results" / "accuracy_smoke":
            args.out = HERE / "results" / "accuracy_full"
    return args


def resolve_trainers(names):
    from bus_nnunet.trainers import TRAINERS, UNAVAILABLE
    if names == ["all"]:
        return ["nnUNetTrainer", *TRAINERS], UNAVAILABLE
    return names, UNAVAILABLE


def main(argv=None) -> int:
    args = parse_args(argv)
    work = args.workdir.resolve()
    env = {"nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results")}
    for v in env.values():
        Path(v).mkdir(parents=True, exist_ok=True)
    if args.device == "cpu":
        # in-process augmentation: worker processes only compete for the same few cores
        env.update({"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "2"})
    budget = {}
    if not args.full:
        budget = {"BUS_NNUNET_NUM_EPOCHS": str(args.epochs), "BUS_NNUNET_NUM_ITERATIONS": str(args.iterations),
                  "BUS_NNUNET_NUM_VAL_ITERATIONS": str(args.val_iterations)}
    study = {"environment": environment_stamp(args.device), "kind": "full study" if args.full else "CPU smoke study",
             "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
             "budget_env": budget, "steps": [], "trainers": {}}

    # 1. convert
    raw_name = dataset_folder_name(Path(env["nnUNet_raw"]), args.dataset_id)
    if raw_name is None:
        source = args.source or DEFAULT_SOURCES.get(args.dataset)
        if source is None or not Path(source).exists():
            sys.exit(f"--source is required for {args.dataset} (no default copy at {source})")
        source = Path(source).resolve()
        if args.max_size:
            source = downscaled_copy(source, work / f"source_max{args.max_size}", args.max_size)
        t = time.time()
        proc = run_command(["bus-nnunet", "convert", args.dataset, source, "--id", args.dataset_id,
                            "--raw-root", env["nnUNet_raw"], "--no-progress"], env, log=log)
        if proc.returncode:
            sys.exit(f"conversion failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        study["steps"].append({"step": "convert", "seconds": round(time.time() - t, 1)})
        raw_name = dataset_folder_name(Path(env["nnUNet_raw"]), args.dataset_id)
    log(f"dataset {raw_name}")

    # 2. plan + preprocess
    plans_file = Path(env["nnUNet_preprocessed"]) / raw_name / "nnUNetPlans.json"
    if not plans_file.exists():
        t = time.time()
        proc = run_command(["nnUNetv2_plan_and_preprocess", "-d", args.dataset_id, "-c", "2d", "-np", "2",
                            "-npfp", "2", "--verify_dataset_integrity", "--no_pbar"],
                           {**env, "nnUNet_n_proc_DA": "2"}, log=log)  # the planner refuses 0 threads
        if proc.returncode:
            sys.exit(f"planning failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        study["steps"].append({"step": "plan_and_preprocess", "seconds": round(time.time() - t, 1)})
    plans_name = "nnUNetPlans"
    if args.batch_size:
        plans = json.loads(plans_file.read_text())
        plans_name = f"nnUNetPlans_bs{args.batch_size}"
        plans["plans_name"] = plans_name
        plans["configurations"]["2d"]["batch_size"] = args.batch_size  # data_identifier unchanged: same data
        plans_file = plans_file.with_name(plans_name + ".json")
        plans_file.write_text(json.dumps(plans, indent=2))
    study["plans"] = plans_name
    plan_2d = json.loads(plans_file.read_text())["configurations"]["2d"]
    study["plan_2d"] = {k: plan_2d.get(k) for k in ("patch_size", "batch_size", "spacing", "median_image_size_in_voxels")}
    log(f"2d plan: patch {plan_2d['patch_size']}, batch {plan_2d['batch_size']}")

    # 3. train every trainer on every fold (nnU-Net's final validation writes the OOF predictions)
    trainers, unavailable = resolve_trainers(args.trainers)
    if unavailable:
        study["unavailable_trainer_modules"] = unavailable
    ok = []
    for trainer in trainers:
        record = study["trainers"].setdefault(trainer, {"folds": {}})
        for fold in args.folds:
            model_dir = Path(env["nnUNet_results"]) / raw_name / f"{trainer}__{plans_name}__2d" / f"fold_{fold}"
            if (model_dir / "checkpoint_final.pth").exists() and (model_dir / "validation").is_dir():
                earlier = model_dir / "benchmark_run.json"
                earlier = json.loads(earlier.read_text()) if earlier.exists() else {}
                earlier_budget = {k: earlier.get(k) for k in budget}
                if earlier and earlier_budget != budget:  # never mix budgets in one comparison
                    sys.exit(f"{model_dir} was trained with {earlier_budget}, this study uses {budget}: "
                             f"use another --workdir, or delete that folder to retrain it")
                record["folds"][fold] = {**earlier, "status": "done earlier"}
                continue
            t = time.time()
            try:
                proc = run_command([sys.executable, HERE / "_common.py", "budget-train", args.dataset_id, "2d", fold,
                                    "-tr", trainer, "-p", plans_name, "-device", args.device], {**env, **budget},
                                   timeout=args.timeout, log=log)
                status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                detail = "" if proc.returncode == 0 else tail(proc.stderr or proc.stdout)
            except Exception as e:  # timeout: note and go on
                status, detail = f"failed ({type(e).__name__})", str(e)
            record["folds"][fold] = {"status": status, "seconds": round(time.time() - t, 1)}
            if detail:
                record["folds"][fold]["log_tail"] = detail
            elif model_dir.is_dir():  # lets a resumed study report how long this fold took
                (model_dir / "benchmark_run.json").write_text(json.dumps({**record["folds"][fold], **budget}))
            log(f"{trainer} fold {fold}: {status} in {time.time() - t:.0f} s")
        if all(f["status"] in ("ok", "done earlier") for f in record["folds"].values()):
            ok.append(trainer)

    # 4. cross-validation report over the trainers that finished
    report = {}
    if ok:
        report_dir = work / "cv_report"
        proc = run_command(["bus-nnunet", "cv-report", args.dataset_id, "-tr", *ok, "-f", *args.folds, "-p", plans_name,
                            "-o", report_dir, "--overwrite", "--no-progress", "--bootstrap", args.bootstrap], env,
                           log=log)
        study["cv_report"] = {"exit": proc.returncode, "folder": str(report_dir)}
        if proc.returncode:
            study["cv_report"]["log_tail"] = tail(proc.stderr or proc.stdout, 3000)
        for path in sorted(report_dir.glob("*.json")):
            try:
                report[path.name] = json.loads(path.read_text())
            except ValueError:
                pass
        study["cv_report"]["markdown"] = {p.name: p.read_text() for p in sorted(report_dir.glob("*.md"))}
    study["cv_report_json"] = report
    write_outputs(study, args.out)
    return 0 if ok else 1


def write_outputs(study: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(study, indent=2, default=str))
    s = study["settings"]
    lines = [f"# Accuracy study ({study['kind']})", ""]
    if study["kind"] != "full study":
        lines += [f"**CPU smoke study, not a result about the networks.** Dataset `{s['dataset']}` downscaled so the "
                  f"longer side is <= {s['max_size']} px, folds {s['folds']}, {s['epochs']} epochs x "
                  f"{s['iterations']} iterations per trainer at batch size {s['batch_size']} (nnU-Net's default is 1000 x 250 at the plan's batch size). It shows the whole "
                  f"pipeline (convert, plan, train, validate, cv-report) runs for every trainer and the numbers "
                  f"are computed the same way for all; differences between trainers at this budget mean nothing.",
                  ""]
    lines += [stamp_markdown(study["environment"]), "", f"2d plan: {study.get('plan_2d')}", "",
              "## Training runs", ""]
    rows = []
    for trainer, rec in study["trainers"].items():
        for fold, f in rec["folds"].items():
            rows.append([trainer, fold, f["status"], f.get("seconds", "")])
    lines += [markdown_table(["trainer", "fold", "status", "seconds"], rows), ""]
    for trainer, rec in study["trainers"].items():
        for fold, f in rec["folds"].items():
            if "log_tail" in f:
                lines += [f"<details><summary>{trainer} fold {fold} log tail</summary>", "", "```",
                          f["log_tail"][-1200:], "```", "</details>", ""]
    comparisons = study.get("cv_report_json", {}).get("metrics.json", {}).get("comparisons", [])
    dice = [c for c in comparisons if c["metric"] == "dice"]
    if dice:
        sig = lambda v: "-" if v is None or v != v else f"{v:.3g}"  # noqa: E731  (NaN: undefined)
        lines += ["## Paired Dice comparisons: which images decide", "",
                  "From the cv-report below: `a > b` / `b > a` count the images on which one trainer scores "
                  "higher (images with equal Dice are left out of the Wilcoxon test); p to three significant "
                  "digits.", "",
                  markdown_table(["pair (a vs b)", "images", "a > b", "b > a", "mean a-b [95% CI]", "Wilcoxon p",
                                  "Holm p", "p method"],
                                 [[f"{c['trainer_a']} vs {c['trainer_b']}", c["n_pairs"], c.get("n_a_better", "?"),
                                   c.get("n_b_better", "?"),
                                   f"{c['mean_difference']:.4f} [{c['ci_low']:.4f}, {c['ci_high']:.4f}]",
                                   sig(c["p_value"]), sig(c["p_holm"]), c.get("p_method", "")] for c in dice]), ""]
    md = study.get("cv_report", {}).get("markdown", {})
    if md:
        lines += ["## bus-nnunet cv-report", ""]
        for name, text in md.items():
            # figures stay in the cv-report folder (work dir); keep the tables
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("![", "## Figures")))
            lines += [f"### {name} (figures: {study['cv_report']['folder']})", "", text.rstrip(), ""]
    elif "cv_report" in study:
        lines += ["cv-report failed:", "", "```", study["cv_report"].get("log_tail", ""), "```"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
