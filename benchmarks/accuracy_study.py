"""Accuracy study: every selected trainer on the same dataset, plan, folds and training budget,
compared by ``bus-nnunet cv-report`` on the out-of-fold validation predictions.

A thin use of ``bus-nnunet study``: the benchmark writes a study file (WORKDIR/study.toml: the
dataset converted from --source, optionally a downscaled copy, the trainers, folds and budget)
and runs it with ``bus-nnunet study run``, which converts, plans, trains every trainer x fold
through nnUNetv2_train with one budget for all (nnU-Net's stock trainer included), runs
cv-report and resumes an interrupted study.  This script then collects the cv-report and the
run status into OUT.json / OUT.md.

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
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402

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


def study_file_text(args, source: Path, work: Path) -> str:
    """The study file this benchmark runs: one dataset, the trainers, folds and budget of ``args``."""
    trainers, _ = resolve_trainers(args.trainers)
    lines = [f'name = "accuracy-{args.dataset}"', 'output = "study"', f"trainers = {json.dumps(trainers)}",
             f"folds = {json.dumps(args.folds)}", 'plans = ["nnUNetPlans"]', "nnunet_train_flags = []", "",
             "[paths]", 'nnUNet_raw = "raw"', 'nnUNet_preprocessed = "preprocessed"', 'nnUNet_results = "results"', "",
             "[[datasets]]", f"id = {args.dataset_id}", f'converter = "{args.dataset}"', f"source = {json.dumps(str(source))}",
             ""]
    if not args.full:
        lines += ["[schedule]", f"epochs = {args.epochs}", f"iterations_per_epoch = {args.iterations}",
                  f"val_iterations = {args.val_iterations}"] + ([f"batch_size = {args.batch_size}"] if args.batch_size
                                                                else []) + [""]
    cpu = args.device == "cpu"
    # on the CPU: in-process augmentation (worker processes only compete for the same few cores)
    lines += ["[executor]", 'kind = "local"', f"gpus = {0 if cpu else json.dumps('auto')}", "processes = 2"] + \
        (["augmentation_workers = 0"] if cpu else [])
    return "\n".join(lines) + "\n"


def fold_record(layout, job, state: str) -> dict:
    """status, seconds (nnU-Net's epoch timestamps) and, for a failure, the log tail of one run."""
    from bus_nnunet.study import jobs as J
    record = {"status": {"done": "ok", "failed": "failed"}.get(state, state)}
    folder = layout.fold_folder(job.dataset_id, job.trainer, job.plans, job.fold)
    checkpoint = folder / "checkpoint_final.pth" if folder else None
    if checkpoint is not None and checkpoint.is_file():
        import torch
        logging = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
        if logging.get("epoch_start_timestamps"):
            record["seconds"] = round(logging["epoch_end_timestamps"][-1] - logging["epoch_start_timestamps"][0], 1)
    if state == "failed":
        record["log_tail"] = J.log_tail(job, 30)
    return record


def main(argv=None) -> int:
    """Write the study file, run it with ``bus-nnunet study run`` (the one engine: resumable, one
    budget), and collect its cv-report into OUT.json / OUT.md."""
    from bus_nnunet.tool_runner import run_tool
    args = parse_args(argv)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = args.source or DEFAULT_SOURCES.get(args.dataset)
    if source is None or not Path(source).exists():
        sys.exit(f"--source is required for {args.dataset} (no default copy at {source})")
    source = Path(source).resolve()
    if args.max_size:
        source = downscaled_copy(source, work / f"source_max{args.max_size}", args.max_size)
    study_path = work / "study.toml"
    study_path.write_text(study_file_text(args, source, work))
    log(f"study file {study_path}")
    proc = run_tool(["bus-nnunet", "study", "run", study_path], {}, check=False)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")

    from bus_nnunet.study.run import StudyRun
    run = StudyRun.load(study_path)
    study, layout = run.study, run.layout
    plans = study.trained_plans("nnUNetPlans")
    result = {"environment": environment_stamp(args.device), "kind": "full study" if args.full else "CPU smoke study",
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "study_file": str(study_path), "plans": plans, "trainers": {}}
    name = layout.dataset_name(args.dataset_id)
    if name:
        plan_2d = json.loads((layout.preprocessed / name / f"{plans}.json").read_text())["configurations"]["2d"]
        result["plan_2d"] = {k: plan_2d.get(k) for k in ("patch_size", "batch_size", "spacing",
                                                         "median_image_size_in_voxels")}
    trains = [j for j in run.jobs if j.stage == "train"]
    states = {key: state for key, (state, _) in run.states(trains).items()}
    for job in trains:
        folds = result["trainers"].setdefault(job.trainer, {"folds": {}})["folds"]
        folds[job.fold] = fold_record(layout, job, states[job.key])
    report_dir = layout.cv_report(args.dataset_id, plans)
    result["cv_report"] = {"folder": str(report_dir),
                           "markdown": {p.name: p.read_text() for p in sorted(report_dir.glob("*.md"))}}
    result["cv_report_json"] = {p.name: json.loads(p.read_text()) for p in sorted(report_dir.glob("*.json"))}
    write_outputs(result, args.out)
    return 0 if result["cv_report_json"] else 1


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
    else:
        lines += [f"No cv-report (see `bus-nnunet study status {study['study_file']}`)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    sys.exit(main())
