"""Efficiency benchmark: every bus-nnunet trainer against nnU-Net's default 2D U-Net
(``nnUNetTrainer``) and ``nnUNetTrainerUS`` on the SAME plan, in one run, so ratios mean something.

Per trainer (each in its own process, so a broken trainer is skipped with a note and peak
memory is per network):

* parameters (all / trainable) and MACs for one ``size x size`` image, counted by
  ``bus_nnunet.profiling.count_macs`` (the counter of ``bus-nnunet profile``:
  torch.utils.flop_counter, every convolution / linear / matmul / attention call), and by thop's
  per-module rules (``count_macs_thop_rules``, the convention of the papers' "GFLOPs")
* training step = ``trainer.train_step`` (forward + loss + backward + optimizer step, the trainer's
  own recipe optimizer, loss and deep supervision) at ``--batch x 1 x size x size``:
  - data loading EXCLUDED: synthetic tensors already in memory
  - data loading INCLUDED: ``next()`` of the trainer's real nnU-Net dataloader (its augmentation,
    in-process with ``nnUNet_n_proc_DA=0`` on CPU) on a preprocessed synthetic dataset + train_step
  (nnU-Net's nnUNetTrainerBenchmark_* trainers separate the two the same way)
* peak memory of training (CPU: peak resident set size of the worker process and its increase
  over the RSS before the first step; CUDA: torch.cuda.max_memory_allocated)
* inference throughput, eval mode, batch 1 tile: images/s without and with lateral-mirroring
  test-time augmentation (2 forward passes; nnU-Net's stock trainer mirrors both axes = 4).

The plan is produced by the real nnU-Net planner (``nnUNetv2_plan_and_preprocess``) on a
synthetic dataset of ``size x size`` images, then its batch size is set to ``--batch``; networks
are built by each trainer's ``initialize()`` (``build_network_architecture`` ->
``create_network(in_ch, n_out, enable_deep_supervision, patch_size)``).

On CPU the defaults are reduced (``--size 128 --batch 2``); on CUDA pass e.g. ``--size 256
--batch 12 --device cuda`` (steps run under AMP autocast as nnU-Net does; torch.compile is off
unless ``--compile``, because compilation time would swamp a short benchmark).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402
from bus_nnunet.profiling import MACS_METHOD  # noqa: E402
from bus_nnunet.harness import nnunet_env, plan_synthetic_dataset  # noqa: E402
from bus_nnunet.profiling import peak_rss_bytes, rss_bytes  # noqa: E402
from bus_nnunet.tool_runner import CommandFailed  # noqa: E402

HERE = Path(__file__).resolve().parent
REFERENCE = ("nnUNetTrainer", "nnUNetTrainerUS")
#: keyword arguments that change training, not the network (one representative is enough)
TRAINING_ONLY_KWARGS = ("freeze_encoder",)
DATASET_ID = 989


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# trainer selection
# ------------------------------------------------------------------------------------------------
def select_trainers(requested=None):
    """nnUNetTrainer, nnUNetTrainerUS and one trainer per distinct network configuration.

    Returns (names, notes): notes maps left-out trainers / unavailable modules to the reason."""
    from bus_nnunet.trainers import TRAINERS, UNAVAILABLE
    notes = {mod: f"module failed to import: {err}" for mod, err in UNAVAILABLE.items()}
    if requested:
        return list(requested), notes
    names, seen = list(REFERENCE), {}
    for name, cls in TRAINERS.items():
        if name in names:
            continue
        net = getattr(cls, "network_name", None)
        if net is None:  # not a network trainer (e.g. another nnU-Net-network variant)
            key = (name,)
        else:
            kwargs = {k: v for k, v in dict(getattr(cls, "network_kwargs", {})).items()
                      if k not in TRAINING_ONLY_KWARGS}
            key = (net, repr(sorted(kwargs.items())))
        if key in seen:
            notes[name] = f"same network as {seen[key]} (only training settings differ)"
            continue
        seen[key] = name
        names.append(name)
    # every network before a second configuration of the same network (interrupted runs stay useful)
    first_of_network, rest, nets = [], [], set()
    for name in names[len(REFERENCE):]:
        net = getattr(TRAINERS[name], "network_name", name)
        (rest if net in nets else first_of_network).append(name)
        nets.add(net)
    return list(REFERENCE) + first_of_network + rest, notes


# ------------------------------------------------------------------------------------------------
# the shared plan
# ------------------------------------------------------------------------------------------------
def prepare_plan(workdir: Path, size: int, n_cases: int = 12) -> dict:
    """Synthetic ``size x size`` dataset planned and preprocessed by the real nnU-Net planner."""
    env = nnunet_env(workdir)
    name = f"BenchUS{size}"
    pre = Path(env["nnUNet_preprocessed"]) / f"Dataset{DATASET_ID:03d}_{name}"
    if not (pre / "nnUNetPlans.json").exists():
        log(f"planning a synthetic {size}x{size} dataset with nnUNetv2_plan_and_preprocess")
        try:
            plan_synthetic_dataset(env, DATASET_ID, name, n_cases=n_cases, size=(size, size), verify=False,
                                   extra_env={"nnUNet_n_proc_DA": "2"})
        except CommandFailed as e:
            sys.exit(f"planning failed: {e}")
    return {"env": env, "preprocessed": str(pre)}


# ------------------------------------------------------------------------------------------------
# worker: measures one trainer
# ------------------------------------------------------------------------------------------------
def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, warmup: int, iters: int):
    times, cpu = [], []
    for i in range(warmup + iters):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    # process CPU time: what the step costs when other jobs share the cores (wall time then inflates)
    return {"median_s": statistics.median(times), "min_s": min(times), "cpu_median_s": statistics.median(cpu),
            "n": len(times)}


def _synthetic_batch(trainer, batch: int, patch, in_ch: int, device, case_ids):
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    data = torch.randn(batch, in_ch, *patch, generator=g)
    target = (torch.rand(batch, 1, *patch, generator=g) > 0.7).float()
    scales = trainer._get_deep_supervision_scales() if trainer.enable_deep_supervision else None
    if scales:
        target = [F.interpolate(target, size=[max(1, round(p * s)) for p, s in zip(patch, sc)], mode="nearest")
                  for sc in scales]
    # case identifiers as nnU-Net's dataloader gives them (trainers with a classification head read labels by key)
    keys = [case_ids[i % len(case_ids)] for i in range(batch)]
    return {"data": data, "target": target, "keys": keys}


def measure(trainer_name: str, plan: dict, a) -> dict:
    import numpy as np  # noqa: F401  (nnU-Net imports it anyway)
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    import nnunetv2

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    os.environ.update(plan["env"])
    result = {"trainer": trainer_name}
    from bus_nnunet.trainers import TRAINERS
    cls = TRAINERS.get(trainer_name) or recursive_find_python_class(
        os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), trainer_name,
        "nnunetv2.training.nnUNetTrainer")
    if cls is None:
        raise LookupError(f"nnU-Net's trainer lookup does not find {trainer_name}")
    pre = Path(plan["preprocessed"])
    plans = load_json(pre / "nnUNetPlans.json")
    plans["configurations"]["2d"]["batch_size"] = a.batch
    plans["continue_training"] = False
    dataset_json = load_json(pre / "dataset.json")
    trainer = cls(plans, "2d", 0, dataset_json, device)
    torch.set_num_threads(a.threads)
    trainer.initialize()
    net = trainer.network
    patch = tuple(int(s) for s in trainer.configuration_manager.patch_size)
    in_ch = trainer.num_input_channels
    result.update({
        "network": getattr(cls, "network_name", None) or type(getattr(net, "_orig_mod", net)).__name__,
        "network_kwargs": {k: repr(v) for k, v in dict(getattr(cls, "network_kwargs", {}) or {}).items()},
        "patch_size": list(patch), "batch_size": a.batch,
        "deep_supervision": bool(trainer.enable_deep_supervision),
        "optimizer": type(trainer.optimizer).__name__,
        "params": sum(p.numel() for p in net.parameters()),
        "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
    })
    log(f"{trainer_name}: {result['params']:,} params, patch {patch}, DS {result['deep_supervision']}")

    # MACs: one image, eval mode, single output (the counters of bus-nnunet profile)
    from bus_nnunet.profiling import count_macs, count_macs_thop_rules
    trainer.set_deep_supervision_enabled(False)
    example = torch.randn(1, in_ch, *patch, device=device)
    for key, counter in (("gmacs", count_macs), ("gmacs_thop_rules", count_macs_thop_rules)):
        try:
            result[key] = round(counter(getattr(net, "_orig_mod", net), example) / 1e9, 3)
        except Exception as e:
            result[key + "_error"] = f"{type(e).__name__}: {e}"[:300]
    if a.macs_only:
        return result

    # training step, data loading excluded
    trainer.set_deep_supervision_enabled(True)
    net.train()
    case_ids = sorted(p.name[:-len(".png")] for p in (pre / "gt_segmentations").glob("*.png"))
    batch = _synthetic_batch(trainer, a.batch, patch, in_ch, device, case_ids)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss_bytes() / 2 ** 20
    result["train_step_synthetic"] = _timed(lambda: trainer.train_step(batch), device, a.warmup, a.iters)
    if device.type == "cuda":
        result["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        result["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        peak_mib = peak_rss_bytes() / 2 ** 20
        result["peak_memory_mib"] = round(peak_mib, 1)
        result["peak_memory_increase_mib"] = round(peak_mib - rss_before, 1)
        result["peak_memory_kind"] = "peak RSS of the worker process"

    # training step, data loading included (the trainer's own nnU-Net dataloader and augmentation)
    if not a.skip_dataloader:
        try:
            dl_train, dl_val = trainer.get_dataloaders()
            trainer.dataloader_train, trainer.dataloader_val = dl_train, dl_val
            result["train_step_with_dataloader"] = _timed(lambda: trainer.train_step(next(dl_train)), device,
                                                          a.warmup, a.iters)
            result["dataloader_next"] = _timed(lambda: next(dl_train), device, 0, a.iters)
            for dl in (dl_train, dl_val):
                if hasattr(dl, "_finish"):
                    dl._finish()
        except Exception as e:
            result["train_step_with_dataloader_error"] = f"{type(e).__name__}: {e}"[:300]

    # inference throughput: batch 1 tile, without and with lateral mirroring (width axis)
    trainer.set_deep_supervision_enabled(False)
    net.eval()
    x = torch.randn(1, in_ch, *patch, device=device)
    autocast = (torch.autocast(device.type, enabled=True) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def infer(tta: bool):
        with torch.inference_mode(), autocast:
            out = net(x)
            if tta:
                out = out + torch.flip(net(torch.flip(x, (3,))), (3,))
        return out

    for tta in (False, True):
        t = _timed(lambda: infer(tta), device, a.warmup, a.infer_iters)
        result["inference_tta" if tta else "inference"] = {**t, "images_per_s": round(1 / t["median_s"], 2)}
    return result


# ------------------------------------------------------------------------------------------------
# orchestration
# ------------------------------------------------------------------------------------------------
def run_worker(trainer: str, plan_file: Path, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", trainer, "--plan-file", plan_file, "--size", a.size, "--batch",
           a.batch, "--iters", a.iters, "--warmup", a.warmup, "--infer-iters", a.infer_iters, "--device", a.device,
           "--threads", a.threads] + (["--skip-dataloader"] if a.skip_dataloader else []) + (
        ["--macs-only"] if a.macs_only else [])
    env = {"nnUNet_n_proc_DA": "0" if a.device == "cpu" else os.environ.get("nnUNet_n_proc_DA", "8"),
           "nnUNet_compile": "t" if a.compile else "f", "OMP_NUM_THREADS": str(a.threads)}
    t = time.time()
    try:
        proc = subprocess.run([str(c) for c in cmd], env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {"trainer": trainer, "skipped": f"exceeded --timeout {a.timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        reason = next((ln for ln in reversed(err) if "Error" in ln or "error" in ln), err[-1] if err else "no output")
        return {"trainer": trainer, "skipped": f"worker failed (exit {proc.returncode}): {reason[:400]}"}
    res = json.loads(lines[-1])
    res["worker_seconds"] = round(time.time() - t, 1)
    res["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return res


def _ms(d, key, field="median_s"):
    v = d.get(key)
    return None if not v else v[field] * 1000


def summarise(results, baseline="nnUNetTrainer"):
    base = next((r for r in results if r["trainer"] == baseline and "skipped" not in r), None)
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["trainer"], "", "", "", "", "", "", "", "", "", f"skipped: {r['skipped']}"])
            continue
        step = _ms(r, "train_step_synthetic")
        step_cpu = _ms(r, "train_step_synthetic", "cpu_median_s")
        step_dl = _ms(r, "train_step_with_dataloader")
        step_dl_cpu = _ms(r, "train_step_with_dataloader", "cpu_median_s")
        ratio = (f"{step_cpu / _ms(base, 'train_step_synthetic', 'cpu_median_s'):.2f} (wall "
                 f"{step / _ms(base, 'train_step_synthetic'):.2f})" if base and step else "")
        rows.append([
            r["trainer"], r["network"], f"{r['params'] / 1e6:.2f}",
            f"{r['gmacs']}" if "gmacs" in r else "n/a",
            f"{r['gmacs_thop_rules']}" if "gmacs_thop_rules" in r else "n/a",
            f"{step:.0f} ({step_cpu:.0f})" if step else "", ratio,
            f"{step_dl:.0f} ({step_dl_cpu:.0f})" if step_dl else "n/a",
            f"{r['peak_memory_mib']:.0f}" + (f" (+{r['peak_memory_increase_mib']:.0f})"
                                            if "peak_memory_increase_mib" in r else ""),
            f"{r['inference']['images_per_s']:.1f} / {r['inference_tta']['images_per_s']:.1f}",
            ("DS; " if r.get("deep_supervision") else "") + r.get("optimizer", "")
            + ("; " + r["train_step_with_dataloader_error"] if "train_step_with_dataloader_error" in r else "")
            + "".join(f"; {key}: {r[key]}" for key in ("gmacs_error", "gmacs_thop_rules_error") if key in r),
        ])
    return rows


def write_outputs(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    a = payload["settings"]
    header = ["trainer", "network", "params (M)", "GMACs (1 img)", "GMACs, thop rules",
              "train step, data excl., wall (CPU) ms", "x nnUNetTrainer, CPU (wall)",
              "train step, data incl., wall (CPU) ms", "peak mem MiB", "inference img/s (no TTA / lateral TTA)", "notes"]
    lines = ["# Efficiency benchmark", "",
             f"Plan: nnU-Net 2d plan of a synthetic {a['size']}x{a['size']} dataset, batch {a['batch']}, "
             f"patch as each trainer uses it. Timings: median of {a['iters']} after {a['warmup']} warm-up "
             f"(inference: {a['infer_iters']}); each trainer in its own process, {a['threads']} torch threads.",
             "", stamp_markdown(payload["environment"]), "",
             markdown_table(header, summarise(payload["results"])), ""]
    if payload.get("left_out"):
        lines += ["Left out (same network as a measured trainer, or not importable):", ""]
        lines += [f"- {k}: {v}" for k, v in payload["left_out"].items()] + [""]
    lines += ["Notes:", ""] + [f"- {n}" for n in payload["notes"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="image / patch side (default 128; use 256 on a GPU)")
    p.add_argument("--batch", type=int, default=2, help="batch size of the training step (default 2)")
    p.add_argument("--iters", type=int, default=3, help="timed training steps per trainer (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps (default 1)")
    p.add_argument("--infer-iters", type=int, default=5, help="timed inference passes (default 5)")
    p.add_argument("--trainers", nargs="+", default=None,
                   help="trainer names (default: nnUNetTrainer, nnUNetTrainerUS and one trainer per network)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--compile", action="store_true", help="let nnU-Net torch.compile on CUDA (off by default)")
    p.add_argument("--skip-dataloader", action="store_true", help="skip the data-loading-included timing")
    p.add_argument("--timeout", type=float, default=300, help="seconds per trainer before it is skipped")
    p.add_argument("--workdir", type=Path, default=HERE / "work" / "efficiency", help="synthetic dataset folder")
    p.add_argument("--out", type=Path, default=HERE / "results" / "efficiency",
                   help="output prefix; writes OUT.json and OUT.md (default benchmarks/results/efficiency)")
    p.add_argument("--macs-only", action="store_true",
                   help="with --update: recount parameters/MACs of OUT.json's trainers, keep their timings")
    p.add_argument("--update", action="store_true",
                   help="keep OUT.json's other results and replace/add only the trainers measured now")
    p.add_argument("--note", action="append", default=[], help="extra note for the report (repeatable)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--plan-file", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(measure(a.worker, json.loads(a.plan_file.read_text()), a)))
        return 0
    out = a.out.with_suffix("") if a.out.suffix in (".json", ".md") else a.out
    plan = prepare_plan(a.workdir.resolve() / f"size{a.size}", a.size)
    plan_file = a.workdir.resolve() / f"size{a.size}" / "plan.json"
    plan_file.write_text(json.dumps(plan))
    names, left_out = select_trainers(a.trainers)
    stamp = {**environment_stamp(a.device), "torch_threads": a.threads}
    results, previous_notes = [], []
    if a.update and out.with_suffix(".json").exists():
        previous = json.loads(out.with_suffix(".json").read_text())
        results, previous_notes = previous["results"], previous.get("notes", [])
        left_out = {**previous.get("left_out", {}), **left_out}
        stamp = {**previous["environment"], "updated_utc": stamp["date_utc"],
                 "load_average_at_update": stamp.get("load_average_1_5_15min")}
    for name in names:
        log(f"measuring {name}")
        res = run_worker(name, plan_file, a)
        log(f"{name}: " + (f"skipped ({res['skipped']})" if "skipped" in res
                           else f"{res.get('gmacs')} GMACs" if a.macs_only
                           else f"step {res['train_step_synthetic']['median_s']:.3f} s"))
        left_out.pop(name, None)
        index = next((i for i, r in enumerate(results) if r["trainer"] == name), None)
        if a.macs_only:
            if index is not None and "skipped" not in res:
                for key in ("gmacs", "gmacs_error", "gmacs_thop_rules", "gmacs_thop_rules_error",
                            "macs_tool", "gmacs_thop"):  # the last two: keys of older result files
                    results[index].pop(key, None)
                    if key in res:
                        results[index][key] = res[key]
        elif index is None:
            results.append(res)
        else:
            results[index] = res
        payload = {"environment": stamp, "settings": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(a).items() if k not in ("worker", "plan_file")},
                   "results": results, "left_out": left_out,
                   "notes": [
                       "Wall times on a shared CPU inflate with the load (see load_average); process CPU time "
                       "(in brackets) is the steadier measure of compute and the ratio column uses it.",
                       "GMACs = one forward pass of one image, bus_nnunet.profiling.count_macs "
                       f"(as bus-nnunet profile): {MACS_METHOD}. 'thop rules' = thop's per-module rules with "
                       "each distinct module hooked once (count_macs_thop_rules), the convention of the papers' "
                       "'GFLOPs': it misses functional matmuls/einsums, counts norms and overcounts strided "
                       "transposed convolutions; thop.profile itself also counts a module once per reference "
                       "(28.0 instead of 4.0 G for nnU-Net's U-Net at 128x128).",
                       "Training step = nnUNetTrainer.train_step of each trainer: its recipe optimizer, its loss "
                       "with deep supervision when the trainer uses it, gradient clipping; AMP autocast on CUDA.",
                       "Data incl. = next() of the trainer's own nnU-Net dataloader (its augmentation; "
                       + ("in-process, nnUNet_n_proc_DA=0" if a.device == "cpu" else "nnUNet_n_proc_DA workers")
                       + ") + train_step.",
                       "Inference = one tile, batch 1, eval mode; lateral TTA = the image and its left-right flip "
                       "(bus-nnunet's ultrasound TTA); nnU-Net's stock nnUNetTrainer mirrors both axes (4 passes).",
                       "CPU peak memory = the worker process's peak RSS (Python + torch + data), with its increase "
                       "over the RSS before the first training step in brackets.",
                   ] + [n for n in dict.fromkeys(previous_notes + a.note) if not n.startswith(("MACs count", "GMACs =", "Training step =",
                                                                                  "Data incl.", "Inference =",
                                                                                  "CPU peak", "Wall times"))],
                   "unsnapped_patch_size": a.size}
        write_outputs(out, payload)  # after every trainer, so an interrupted run still leaves a table
    log(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
