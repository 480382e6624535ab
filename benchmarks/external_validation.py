"""External validation on real data: train on one hospital's images, test on two others'.

A preset of ``bus-nnunet study`` (the one engine: resumable, one budget for every trainer).  The
benchmark writes WORKDIR/study.toml and runs it:

* **training**: nnUNetTrainerUS (nnU-Net's U-Net with ultrasound augmentation) and two published
  networks -- ACSNet and the CBAM attention U-Net with skip attention -- on BrEaST
  (``../shared/data/BrEaST``, a downscaled copy with the longer side <= 128 px), fold 0, the same
  number of iterations at the same batch size for all three (300 steps at batch 4 by default);
* **external sets** (converted, never trained on; ``train = false``): STU-Hospital (all 42
  images, 128 px as released) and the BUSI sample (``../shared/data/BUSI-sample``, downscaled the
  same way; normal cases dropped by the converter);
* **ensemble**: cv-report's ``best3`` of the three (the mean of their softmax probabilities).

Every model predicts every image of the external sets; each is scored with cv-report's metrics
and empty-mask rule.  Writes OUT.json / OUT.md (the train x test matrix per model, with the
in-domain cross-validation Dice on the diagonal, the paired tests per external set, the command,
the environment stamp and the time taken) and OUT.png (the heatmap)::

    python benchmarks/external_validation.py            # CPU, ~1 h on an idle 2-core machine
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_study  # noqa: E402  (downscaled_copy, log)
from _common import add_real_data_budget_arguments, environment_stamp, markdown_table, stamp_markdown  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
TRAINERS = ("nnUNetTrainerUS", "ACSNetTrainer", "AttUNetSkips_CBAM_BCE_Trainer")
#: id, converter, release folder, downscale?, trained on?
DATASETS = ((601, "breast", DATA / "BrEaST", True, True),
            (602, "stu", DATA / "STU", False, False),     # 128 x 128 as released
            (603, "busi", DATA / "BUSI-sample", True, False))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS))
    add_real_data_budget_arguments(p)
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "external")
    p.add_argument("--out", type=Path, default=HERE / "results" / "external_validation")
    return p.parse_args(argv)


def study_file_text(args, sources) -> str:
    lines = ['name = "external-validation"', 'output = "study"', f"trainers = {json.dumps(args.trainers)}",
             f"folds = [{args.fold}]", 'plans = ["nnUNetPlans"]', 'external = "all"',
             f"ensemble_best_k = {len(args.trainers)}", "",
             "[paths]", 'nnUNet_raw = "raw"', 'nnUNet_preprocessed = "preprocessed"', 'nnUNet_results = "results"', ""]
    for (did, converter, _, _, train), source in zip(DATASETS, sources):
        lines += ["[[datasets]]", f"id = {did}", f'converter = "{converter}"', f"source = {json.dumps(str(source))}"]
        lines += [] if train else ["train = false"]
        lines += [""]
    # on the CPU: in-process augmentation (worker processes only compete for the same two cores)
    lines += ["[schedule]", f"epochs = {args.epochs}", f"iterations_per_epoch = {args.iterations}",
              f"val_iterations = {args.val_iterations}", f"batch_size = {args.batch_size}", "",
              "[executor]", 'kind = "local"', "gpus = 0", "processes = 2", "augmentation_workers = 0"]
    return "\n".join(lines) + "\n"


def _dice(stat):
    return None if not stat or stat.get("mean") is None else (stat["mean"], stat["std"])


def collect(study, layout, plans: str) -> dict:
    """Per model: in-domain cross-validation Dice (cv-report) and each external set's Dice."""
    from bus_nnunet.evaluation.cross_validation_report import read_cross_validation_report
    from bus_nnunet.study import external_validation as X
    train_id = next(d.id for d in study.datasets if getattr(d, "train", True))
    cv = read_cross_validation_report(layout.cv_report(train_id, plans))
    rows = {}
    for model in X.external_models(study):
        if model == X.ENSEMBLE:
            members = sorted(X.ensemble_members(study, layout, train_id, plans))
            row_name = next((n for n, e in cv.ensembles.items() if sorted(e["members"]) == members), None)
            name = f"ensemble ({' + '.join(cv.ensembles[row_name]['members'])})" if row_name else "ensemble"
        else:
            row_name, name = model, model
        row = {"model": model, "name": name, "in_domain": _dice(cv.per_image(row_name, "dice")) if row_name else None,
               "external": {}}
        for test in (d.id for d in study.datasets if d.id != train_id):
            scores = X.read_scores(layout, train_id, test, plans, model)
            row["external"][layout.dataset_name(test)] = (
                {"dice": _dice(scores["summary"]["per_image"]["dice"]),
                 "hd95": _dice(scores["summary"]["per_image"]["hd95"]), "n": scores["n_images"],
                 "split": scores["test_split"]} if scores else None)
        rows[model] = row
    tests = {}
    for test in (d.id for d in study.datasets if d.id != train_id):
        per_model = {m: X.read_per_case(layout, train_id, test, plans, m) for m in rows}
        tests[layout.dataset_name(test)] = [
            {k: c.get(k) for k in ("metric", "trainer_a", "trainer_b", "n_pairs", "mean_difference", "p_holm")}
            for c in X.paired_tests(per_model)]
    return {"train_dataset": layout.dataset_name(train_id), "models": rows, "paired_tests": tests}


def _cell(value) -> str:
    return "–" if not value else f"{value[0]:.3f} ± {value[1]:.3f}"


def plot_heatmap(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    models = list(result["models"].values())
    columns = [f"{result['train_dataset']}\n(in-domain CV)"] + list(models[0]["external"])
    values = np.array([[(m["in_domain"] or (np.nan,))[0]] +
                       [(e["dice"] if e else (np.nan,))[0] for e in m["external"].values()] for m in models])
    fig, ax = plt.subplots(figsize=(2.4 + 2.2 * len(columns), 1.2 + 0.55 * len(models)))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if v > 0.6 else "white", fontsize=10)
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(models)), [m["name"] for m in models], fontsize=8)
    ax.set_title(f"mean Dice, trained on {result['train_dataset']}", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    models = list(result["models"].values())
    externals = list(models[0]["external"])
    rows = [[m["name"], _cell(m["in_domain"]), *[_cell(m["external"][t]["dice"]) if m["external"][t] else "–"
                                                  for t in externals]] for m in models]
    sizes = ", ".join(f"{t}: {next(m['external'][t]['n'] for m in models if m['external'][t])} images "
                      f"({next(m['external'][t]['split'] for m in models if m['external'][t])})"
                      for t in externals if any(m["external"][t] for m in models))
    s = result["settings"]
    lines = ["# External validation", "",
             f"Trained on {result['train_dataset']} (BrEaST, longer side <= {s['max_size']} px), fold {s['fold']}, "
             f"{s['epochs']} x {s['iterations']} iterations at batch {s['batch_size']} for every trainer, through "
             f"`bus-nnunet study` (nnUNetv2_train). Tested, never trained on: {sizes}. Mean ± std per-image Dice; "
             f"the first column is the in-domain cross-validation Dice (fold {s['fold']}'s out-of-fold validation "
             f"cases, cv-report), the others the external sets. The ensemble averages the softmax probabilities of "
             f"its members (cv-report's best{len(result['settings']['trainers'])}).", "",
             f"Command: `{result['command']}`", "",
             f"Time: {result['seconds'] / 60:.1f} min for this invocation; training (nnU-Net's epoch timestamps): "
             + ", ".join(f"{t} {v / 60:.1f} min" for t, v in result["training_seconds"].items()) + ".", "",
             stamp_markdown(result["environment"]), "",
             markdown_table(["model", f"{result['train_dataset']} (in-domain CV)", *externals], rows), "",
             f"![heatmap]({out.name}.png)", ""]
    for test, comparisons in result["paired_tests"].items():
        lines += [f"## Paired tests on {test} (Wilcoxon signed-rank, Holm)", "",
                  markdown_table(["metric", "a", "b", "n", "mean a - b", "p (Holm)"],
                                 [[c["metric"], c["trainer_a"], c["trainer_b"], c["n_pairs"],
                                   "–" if c["mean_difference"] is None else f"{c['mean_difference']:+.3f}",
                                   "–" if c["p_holm"] is None else f"{c['p_holm']:.3g}"] for c in comparisons]), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot_heatmap(result, out.with_suffix(".png"))


def training_seconds(study, layout, plans: str) -> dict:
    import torch
    out = {}
    train_id = next(d.id for d in study.datasets if getattr(d, "train", True))
    for trainer in study.trainers:
        folder = layout.fold_folder(train_id, trainer, plans, study.folds[0])
        checkpoint = folder / "checkpoint_final.pth" if folder else None
        if checkpoint is not None and checkpoint.is_file():
            logging = torch.load(checkpoint, map_location="cpu", weights_only=False).get("logging", {})
            if logging.get("epoch_start_timestamps"):
                out[trainer] = round(logging["epoch_end_timestamps"][-1] - logging["epoch_start_timestamps"][0], 1)
    return out


def main(argv=None) -> int:
    from bus_nnunet.tool_runner import tool
    from bus_nnunet.study import jobs as J
    from bus_nnunet.study.config import load_study
    args = parse_args(argv)
    started = time.time()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sources = []
    for did, converter, source, downscale, _ in DATASETS:
        if not source.exists():
            sys.exit(f"{source} is missing: this benchmark needs ../shared/data beside the checkout")
        sources.append(accuracy_study.downscaled_copy(source, work / f"source_{converter}_max{args.max_size}",
                                                      args.max_size) if downscale else source.resolve())
    study_path = work / "study.toml"
    study_path.write_text(study_file_text(args, sources))
    accuracy_study.log(f"study file {study_path}; running bus-nnunet study run (progress below)")
    rc = subprocess.call([str(tool("bus-nnunet")), "study", "run", str(study_path)])
    study = load_study(study_path)
    layout = J.Layout(study)
    plans = study.trained_plans("nnUNetPlans")
    result = {"command": "python benchmarks/external_validation.py " + " ".join(argv if argv is not None
                                                                                 else sys.argv[1:]),
              "environment": environment_stamp("cpu"), "study_exit_status": rc,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "seconds": round(time.time() - started, 1), "training_seconds": training_seconds(study, layout, plans),
              **collect(study, layout, plans)}
    write_outputs(result, args.out)
    accuracy_study.log(f"wrote {args.out.with_suffix('.md')} (study run exit status {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
