"""GPU readiness check: every distinct trainer network and every CUDA-only path, PASS / FAIL with numbers.

    python benchmarks/gpu_check.py                      # on a GPU: < 5 min, writes results/gpu_check.{json,md}
    python benchmarks/gpu_check.py --device cpu --tiny  # the same code paths on CPU, bf16 autocast

Per trainer (``bench_efficiency.select_trainers``: nnU-Net's ``nnUNetTrainer`` and ``nnUNetTrainerUS``
plus one trainer per distinct network, and the classifying variants :data:`CLASSIFYING`), on nnU-Net's
plan of a synthetic dataset at ``--patch``:

* **train**: ``--steps`` calls of the trainer's own ``train_step`` on random data at its patch size, so
  exactly nnU-Net's step: fp16 ``autocast`` with nnU-Net's ``GradScaler`` on CUDA (bf16 autocast on CPU,
  no scaler), the trainer's loss and gradient clipping (12 for nnU-Net, the recipe's otherwise).  PASS:
  every loss is finite and, after the scaler's unscale, every gradient is finite in every step except
  the ones the GradScaler itself skips while it lowers its initial 2^16 scale (at most 5, counted).
  Median step time and peak memory (CUDA) are reported beside nnU-Net's default U-Net at the same
  patch and batch.
* **inference**: eval-mode forward at float32 and under autocast (fp16 on CUDA, bf16 on CPU) on the
  same input.  PASS: mean |softmax difference| <= 5e-3 for fp16 (11-bit mantissa: ~5e-4 relative
  error per op, a few times that after a deep network) or <= 2e-2 for bf16 (8-bit mantissa, 8x
  coarser), and Dice of the two argmax masks >= 0.99.  The maximum difference is reported, not
  tested: it sits on the pixels whose two classes are nearly tied.
* **throughput**: images/s at batch 1 and at the plan's batch, without and with lateral mirroring
  (the ultrasound test-time augmentation: 2 forward passes), under the same autocast as nnU-Net's
  predictor (fp16 on CUDA, float32 on CPU).
* **compile**: for trainers that allow it, ``torch.compile`` of the network gives the eager loss on
  the same batch within 1e-3 relative, and a classifying network the eager class logits too
  (float32; CUDA only unless ``--compile``; ``--compile-backend eager`` captures the graph without
  generating code, which is what the CPU test runs).

Kernels: ACSNet's ``deform_conv2d`` (torchvision, CUDA) against its CPU ``grid_sample`` path, forward
and gradients; SS-Net's scan (both pure-PyTorch backends) on the device against the step loop on SS-Net's
42 scan shapes, and ``mamba_ssm``'s ``selective_scan_fn`` against ours when it imports (equality and time).
Checks that need CUDA are reported as ``skipped (no CUDA)`` on CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402
from bench_efficiency import _synthetic_batch, prepare_plan, select_trainers  # noqa: E402

BASELINE = "nnUNetTrainer"
#: classifying variants checked beside them (issue 24: AMP and torch.compile as for the base trainer): the class
#: loss in nnU-Net's AMP train_step, the head on a plan U-Net's encoder and on a compiled network's forward hook
CLASSIFYING = ("nnUNetTrainerUS_Cls", "AnatoSegNetTrainer_Cls")
MAX_SCALER_SKIPS = 5  # GradScaler starts at 2^16 and halves per overflow: a few skipped steps are normal
SOFTMAX_TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 2e-2}
MIN_DICE = 0.99
COMPILE_RTOL = 1e-3
SCAN_TOLERANCE = 1e-5  # tests/test_ssnet.py's criterion
DEFORM_TOLERANCE = 1e-4


# -------------------------------------------------------------------------------------------- results
def check(rows: List[dict], subject: str, name: str, fn: Callable[[], dict]) -> dict:
    """Run one check; ``fn`` returns its numbers with ``passed`` (True / False / None = skipped, with
    ``reason``).  An exception is a FAIL carrying the error."""
    start = time.perf_counter()
    try:
        numbers = fn()
    except Exception as e:  # a check that crashes is a finding, not the end of the run
        numbers = {"passed": False, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=4)}
    passed = numbers.pop("passed")
    status = "SKIP" if passed is None else ("PASS" if passed else "FAIL")
    row = {"subject": subject, "check": name, "status": status, "seconds": round(time.perf_counter() - start, 2),
           **numbers}
    rows.append(row)
    detail = numbers.get("error") or numbers.get("reason") or ""
    print(f"[{status}] {subject:<32} {name:<12} {detail}", flush=True)
    return row


def skipped(reason: str) -> dict:
    return {"passed": None, "reason": reason}


# ---------------------------------------------------------------------------------------- precision
def autocast_dtype(device: torch.device):
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@contextlib.contextmanager
def training_precision(trainer, device: torch.device):
    """nnU-Net's own step precision: on CUDA nothing to change (fp16 autocast + GradScaler).  On CPU,
    nnU-Net and our trainers run float32; here they run under bf16 autocast instead, by swapping the
    contexts their ``train_step`` enters (nnU-Net's ``dummy_context``, our ``autocast_context``)."""
    if device.type == "cuda":
        yield
        return
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as module

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    original = module.dummy_context
    module.dummy_context = bf16
    had_own = "autocast_context" in vars(trainer)
    if hasattr(trainer, "autocast_context"):
        trainer.autocast_context = bf16
    try:
        yield
    finally:
        module.dummy_context = original
        if hasattr(trainer, "autocast_context") and not had_own:
            del trainer.autocast_context


# ---------------------------------------------------------------------------------------- trainers
def build_trainer(name: str, plan: dict, batch: int, device: torch.device):
    """``name`` initialised on nnU-Net's plan as nnUNetv2_train would, without torch.compile (the compile
    check does that separately)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from bus_nnunet.registration import trainer_class
    os.environ.update(plan["env"])
    os.environ["nnUNet_compile"] = "false"
    pre = Path(plan["preprocessed"])
    plans = load_json(pre / "nnUNetPlans.json")
    if batch:
        plans["configurations"]["2d"]["batch_size"] = batch
    plans["continue_training"] = False
    trainer = trainer_class(name)(plans, "2d", 0, load_json(pre / "dataset.json"), device)
    threads = torch.get_num_threads()
    trainer.initialize()
    torch.set_num_threads(threads)  # nnU-Net sets its own count on CPU
    return trainer


def case_ids(plan: dict) -> List[str]:
    return sorted(p.name[:-len(".png")] for p in (Path(plan["preprocessed"]) / "gt_segmentations").glob("*.png"))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nonfinite_gradients(network) -> int:
    return sum(int(not torch.isfinite(p.grad).all()) for p in network.parameters() if p.grad is not None)


def train_check(trainer, batch: dict, device, steps: int, inject_nan: bool) -> dict:
    """``steps`` of the trainer's own train_step; losses, gradients after unscale, time and memory."""
    if inject_nan:  # the check must be able to fail: a NaN in the input reaches loss and gradients
        batch = {**batch, "data": batch["data"].clone()}
        batch["data"].view(-1)[0] = float("nan")
    losses, times, bad_grad_steps = [], [], 0
    scaler = trainer.grad_scaler
    trainer.network.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    with training_precision(trainer, device):
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            loss = float(trainer.train_step(batch)["loss"])
            _sync(device)
            times.append(time.perf_counter() - start)
            losses.append(loss)
            bad_grad_steps += nonfinite_gradients(trainer.network) > 0  # grads stay unscaled until zero_grad
    allowed = MAX_SCALER_SKIPS if scaler is not None else 0
    finite_losses = all(math.isfinite(v) for v in losses)
    out = {"passed": finite_losses and bad_grad_steps <= allowed,
           "steps": steps, "loss_first": losses[0], "loss_last": losses[-1],
           "nonfinite_loss_steps": sum(not math.isfinite(v) for v in losses),
           "nonfinite_grad_steps": bad_grad_steps, "allowed_scaler_skips": allowed,
           "step_ms": 1e3 * statistics.median(times[min(2, steps - 1):]),
           "precision": "fp16 autocast + GradScaler" if scaler is not None else
           f"{str(autocast_dtype(device)).split('.')[-1]} autocast",
           "grad_clip": getattr(getattr(trainer, "recipe", None), "grad_clip", 12)}
    if scaler is not None:
        out["final_scale"] = float(scaler.get_scale())
    if device.type == "cuda":
        out["peak_memory_mib"] = (torch.cuda.max_memory_allocated(device) - base_memory) / 2 ** 20
    return out


def _network_output(network, x):
    out = network(x)
    while isinstance(out, (list, tuple)):  # deep supervision / classification heads: the segmentation
        out = out[0]
    return out


def inference_check(trainer, x, device) -> dict:
    """Softmax at float32 and under autocast on the same input; mean/max difference, argmax Dice."""
    from bus_nnunet.trainers.base import unwrap_network
    network = unwrap_network(trainer.network)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    dtype = autocast_dtype(device)
    try:
        with torch.no_grad():
            reference = torch.softmax(_network_output(network, x).float(), 1)
            with torch.autocast(device.type, dtype=dtype):
                low = torch.softmax(_network_output(network, x).float(), 1)
    finally:
        trainer.set_deep_supervision_enabled(True)
    difference = (low - reference).abs()
    dice = foreground_dice(low.argmax(1), reference.argmax(1), reference.shape[1])
    tolerance = SOFTMAX_TOLERANCE[dtype]
    return {"passed": bool(difference.mean() <= tolerance and dice >= MIN_DICE),
            "autocast": str(dtype).split(".")[-1], "mean_abs_softmax_diff": float(difference.mean()),
            "max_abs_softmax_diff": float(difference.max()), "tolerance": tolerance, "argmax_dice": dice,
            "nonfinite": int((~torch.isfinite(low)).sum())}


def foreground_dice(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Dice of two label maps over the foreground classes together (1 when both are empty)."""
    scores = []
    for c in range(1, num_classes):
        inter, total = ((a == c) & (b == c)).sum().item(), (a == c).sum().item() + (b == c).sum().item()
        scores.append(1.0 if total == 0 else 2 * inter / total)
    return float(statistics.mean(scores)) if scores else 1.0


def throughput_check(trainer, in_channels: int, patch, plan_batch: int, device, iterations: int) -> dict:
    """Images/s at batch 1 and the plan's batch, without and with lateral mirroring."""
    from bus_nnunet.augmentation import US_MIRROR_AXES
    from bus_nnunet.trainers.base import unwrap_network
    network = unwrap_network(trainer.network).eval()
    trainer.set_deep_supervision_enabled(False)
    flip_dims = [axis + 2 for axis in US_MIRROR_AXES]
    context = (lambda: torch.autocast("cuda", dtype=torch.float16)) if device.type == "cuda" else contextlib.nullcontext
    out = {"passed": True}
    try:
        for batch in sorted({1, plan_batch}):
            x = torch.randn(batch, in_channels, *patch, device=device)
            for mirror in (False, True):
                def infer():
                    with torch.no_grad(), context():
                        y = _network_output(network, x)
                        if mirror:
                            y = y + torch.flip(_network_output(network, torch.flip(x, flip_dims)), flip_dims)
                    return y
                infer()
                _sync(device)
                start = time.perf_counter()
                for _ in range(iterations):
                    infer()
                _sync(device)
                out[f"images_per_s_b{batch}{'_mirror' if mirror else ''}"] = batch * iterations / (
                    time.perf_counter() - start)
    finally:
        trainer.set_deep_supervision_enabled(True)
    return out


def _loss_and_class_logits(trainer, network, data, target):
    """The float32 segmentation loss, and a classifying network's class logits (None otherwise)."""
    if hasattr(network, "forward_classification"):
        seg, logits = network(data, return_classification=True)
        return float(trainer.loss(seg, target)), logits.float()
    return float(trainer.loss(network(data), target)), None


def compile_check(trainer, batch: dict, device, enabled: bool, backend: str = "inductor") -> dict:
    """torch.compile of the network: the float32 training loss (and a classifying network's class
    logits) equal eager within COMPILE_RTOL."""
    if not getattr(trainer, "allow_compile", True):
        return skipped("trainer disallows torch.compile")
    if not enabled:
        return skipped("no CUDA (pass --compile to compile on CPU)")
    from bus_nnunet.trainers.base import unwrap_network
    network = unwrap_network(trainer.network).train()
    data = batch["data"].to(device)
    target = batch["target"]
    target = [t.to(device) for t in target] if isinstance(target, list) else target.to(device)
    with torch.no_grad():
        torch.manual_seed(0)
        eager, eager_logits = _loss_and_class_logits(trainer, network, data, target)
        compiled_network = torch.compile(network, backend=backend)
        start = time.perf_counter()
        torch.manual_seed(0)
        compiled, compiled_logits = _loss_and_class_logits(trainer, compiled_network, data, target)
        seconds = time.perf_counter() - start
    difference = abs(compiled - eager) / max(abs(eager), 1e-8)
    out = {"passed": math.isfinite(compiled) and difference <= COMPILE_RTOL, "backend": backend,
           "loss_eager": eager, "loss_compiled": compiled, "relative_difference": difference,
           "compile_and_run_s": seconds}
    if eager_logits is not None:
        logits_difference = float((compiled_logits - eager_logits).abs().max())
        out["class_logits_max_abs_difference"] = logits_difference
        out["passed"] = out["passed"] and logits_difference <= COMPILE_RTOL * max(float(eager_logits.abs().max()), 1.0)
    torch._dynamo.reset()  # the next trainer's network compiles afresh
    return out


def check_trainer(rows, name: str, plan: dict, args, device) -> None:
    """All per-trainer checks of ``name``; a trainer that cannot be built is one FAIL row."""
    holder = {}

    def build():
        torch.manual_seed(0)
        holder["trainer"] = build_trainer(name, plan, args.batch, device)
        t = holder["trainer"]
        holder["patch"] = tuple(int(s) for s in t.configuration_manager.patch_size)
        holder["batch"] = _synthetic_batch(t, t.batch_size, holder["patch"], t.num_input_channels, device,
                                           case_ids(plan))
        return {"passed": True, "patch_size": list(holder["patch"]), "batch_size": t.batch_size,
                "network": getattr(type(t), "network_name", None) or "PlainConvUNet (plans)",
                "parameters": sum(p.numel() for p in t.network.parameters())}

    if check(rows, name, "build", build)["status"] != "PASS":
        return
    trainer, batch, patch = holder["trainer"], holder["batch"], holder["patch"]
    check(rows, name, "train", lambda: train_check(trainer, batch, device, args.steps, name in args.inject_nan))
    x = torch.randn(1, trainer.num_input_channels, *patch, generator=torch.Generator().manual_seed(1)).to(device)
    check(rows, name, "inference", lambda: inference_check(trainer, x, device))
    check(rows, name, "throughput", lambda: throughput_check(trainer, trainer.num_input_channels, patch,
                                                              trainer.batch_size, device, args.iterations))
    check(rows, name, "compile", lambda: compile_check(trainer, batch, device, device.type == "cuda" or args.compile,
                                                       args.compile_backend))
    del holder, trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- kernels
def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().cpu().float() - b.detach().cpu().float()).abs().max().item() / max(
        1.0, b.detach().cpu().float().abs().max().item())


def _values_and_grads(fn, inputs, grad_out):
    y = fn(*inputs)
    return [y, *torch.autograd.grad(y, inputs, grad_out)]


def deform_check(device) -> dict:
    """torchvision's deform_conv2d on CUDA against ACSNet's CPU grid_sample form, forward and gradients
    (on CPU: torchvision's CPU kernel against the same form)."""
    from torchvision.ops import deform_conv2d
    from bus_nnunet.network_architectures.acsnet import deform_conv2d_sampling
    g = torch.Generator().manual_seed(0)
    cpu = [torch.randn(2, 16, 20, 24, generator=g), torch.randn(2, 18, 20, 24, generator=g) * 2,
           torch.rand(2, 9, 20, 24, generator=g), torch.randn(8, 16, 3, 3, generator=g) * 0.1]
    cpu = [t.requires_grad_() for t in cpu]
    dev = [t.detach().to(device).requires_grad_() for t in cpu]
    grad_out = torch.randn(2, 8, 20, 24, generator=g)

    def torchvision_form(x, offset, mask, weight):
        return deform_conv2d(x, offset, weight, None, padding=1, mask=mask)

    ours = _values_and_grads(deform_conv2d_sampling, cpu, grad_out)
    theirs = _values_and_grads(torchvision_form, dev, grad_out.to(device))
    errors = {n: _max_rel(a, b) for n, a, b in zip(("output", "x", "offset", "mask", "weight"), theirs, ours)}
    return {"passed": max(errors.values()) <= DEFORM_TOLERANCE, "device": str(device), "max_rel_error": errors,
            "tolerance": DEFORM_TOLERANCE, "torchvision_device": str(device)}


def scan_shapes(size: int, batch: int):
    from bench_selective_scan import make_inputs, ssnet_scan_calls
    for name, count, k, d, length in ssnet_scan_calls(size):
        yield name, count, [t.detach() for t in make_inputs(batch, k, d, length)]


def scan_check(device, size: int, batch: int) -> dict:
    """Both pure-PyTorch scans on ``device`` against the step loop on SS-Net's scan shapes."""
    from bus_nnunet.network_architectures.selective_scan import selective_scan, selective_scan_reference
    worst = {"steps": 0.0, "chunked": 0.0}
    seconds = {"steps": 0.0, "chunked": 0.0}
    for _, count, inputs in scan_shapes(size, batch):
        inputs = [t.to(device).requires_grad_() for t in inputs]
        grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1)).to(device)
        reference = _values_and_grads(selective_scan_reference, inputs, grad_out)
        for backend in worst:
            _sync(device)
            start = time.perf_counter()
            got = _values_and_grads(lambda *a: selective_scan(*a, backend=backend), inputs, grad_out)
            _sync(device)
            seconds[backend] += count * (time.perf_counter() - start)
            worst[backend] = max(worst[backend], *(_max_rel(a, b) for a, b in zip(got, reference)))
    return {"passed": max(worst.values()) <= SCAN_TOLERANCE, "device": str(device), "ssnet_size": size,
            "batch": batch, "max_rel_error": worst, "tolerance": SCAN_TOLERANCE,
            "fwd_bwd_s_42_calls_single_run": seconds}


def mamba_check(device, size: int, batch: int) -> dict:
    """mamba_ssm's selective_scan_fn against our scan on SS-Net's shapes: equality and time."""
    from bus_nnunet.network_architectures.selective_scan import mamba_kernel_available, selective_scan
    if device.type != "cuda":
        return skipped("no CUDA")
    if not mamba_kernel_available():
        return skipped("mamba_ssm does not import")
    worst, seconds = 0.0, {"mamba": 0.0, "ours": 0.0}
    for _, count, inputs in scan_shapes(size, batch):
        inputs = [t.to(device).requires_grad_() for t in inputs]
        grad_out = torch.randn(inputs[0].shape, device=device)
        results = {}
        for backend, label in (("mamba", "mamba"), ("torch", "ours")):
            fn = (lambda b: lambda *a: selective_scan(*a, backend=b))(backend)
            _values_and_grads(fn, inputs, grad_out)  # warm-up
            _sync(device)
            start = time.perf_counter()
            results[label] = _values_and_grads(fn, inputs, grad_out)
            _sync(device)
            seconds[label] += count * (time.perf_counter() - start)
        worst = max(worst, *(_max_rel(a, b) for a, b in zip(results["mamba"], results["ours"])))
    return {"passed": worst <= 1e-4, "max_rel_error": worst, "tolerance": 1e-4, "fwd_bwd_s_42_calls": seconds,
            "speedup_mamba_over_ours": seconds["ours"] / seconds["mamba"]}


def check_kernels(rows, device, args) -> None:
    check(rows, "ACSNet", "deform_conv2d", lambda: deform_check(device))
    check(rows, "SS-Net", "scan", lambda: scan_check(device, args.scan_size, args.scan_batch))
    check(rows, "SS-Net", "mamba-ssm", lambda: mamba_check(device, args.scan_size, args.scan_batch))


# -------------------------------------------------------------------------------------------- output
def environment(device) -> dict:
    stamp = environment_stamp(str(device))
    try:
        from importlib.metadata import version
        stamp["mamba_ssm"] = version("mamba-ssm")
    except Exception:
        stamp["mamba_ssm"] = "not installed"
    stamp["gpu_run"] = device.type == "cuda"
    if device.type == "cuda":
        stamp["gpu"], stamp["cuda"] = torch.cuda.get_device_name(device), torch.version.cuda
    return stamp


def summary_table(rows: List[dict]) -> str:
    by_trainer = {}
    for r in rows:
        by_trainer.setdefault(r["subject"], {})[r["check"]] = r
    base = by_trainer.get(BASELINE, {}).get("train", {})
    lines = []
    for subject, checks in by_trainer.items():
        train = checks.get("train", {})
        ratio = (f"{train['step_ms'] / base['step_ms']:.2f}" if "step_ms" in train and "step_ms" in base else "")
        memory = train.get("peak_memory_mib")
        throughput = checks.get("throughput", {})
        inference = checks.get("inference", {})
        lines.append([subject, " ".join(f"{c}:{r['status']}" for c, r in checks.items()),
                      f"{train['step_ms']:.0f}" if "step_ms" in train else "", ratio,
                      f"{memory:.0f}" if memory is not None else "",
                      f"{inference['mean_abs_softmax_diff']:.1e}" if "mean_abs_softmax_diff" in inference else "",
                      f"{inference['argmax_dice']:.3f}" if "argmax_dice" in inference else "",
                      f"{throughput['images_per_s_b1']:.1f}" if "images_per_s_b1" in throughput else "",
                      f"{throughput['images_per_s_b1_mirror']:.1f}" if "images_per_s_b1_mirror" in throughput else ""])
    return markdown_table(["subject", "checks", "step ms", f"x {BASELINE}", "peak MiB", "softmax diff",
                           "argmax Dice", "img/s b1", "img/s b1 mirror"], lines)


def write_results(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str))
    env = payload["environment"]
    counts = payload["counts"]
    headline = ("GPU run." if env["gpu_run"] else
                "**Not run on a GPU**: no CUDA device was available. This is the `--device cpu` run (bf16 "
                "autocast in place of fp16, no GradScaler, CUDA-only checks skipped); the GPU checks are "
                "still to be run with `python benchmarks/gpu_check.py` on a GPU.")
    failures = [f"- {r['subject']} {r['check']}: {r.get('error') or {k: v for k, v in r.items() if k not in ('traceback',)}}"
                for r in payload["rows"] if r["status"] == "FAIL"]
    md = [f"# GPU readiness check ({payload['device']})", "", headline, "",
          f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} skipped; patch {payload['patch']}, "
          f"{payload['steps']} training steps, {payload['seconds']:.0f} s.", "", stamp_markdown(env),
          f"- **mamba_ssm**: {env['mamba_ssm']}", "", summary_table(payload["rows"]), ""]
    kernels = [r for r in payload["rows"] if r["subject"] in ("ACSNet", "SS-Net")]
    md += ["## Kernels", "", markdown_table(["kernel", "status", "numbers"],
           [[f"{r['subject']} {r['check']}", r["status"],
             r.get("reason") or r.get("error") or json.dumps(r.get("max_rel_error"))] for r in kernels]), ""]
    if failures:
        md += ["## Failures", "", *failures, ""]
    out.with_suffix(".md").write_text("\n".join(md))


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", type=int, default=256, help="side of the synthetic images nnU-Net plans for")
    parser.add_argument("--batch", type=int, default=None, help="override the plan's batch size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=10, help="forward passes per throughput number")
    parser.add_argument("--trainers", nargs="+", help="default: nnU-Net's two and one per distinct network")
    parser.add_argument("--scan-size", type=int, default=256, help="SS-Net input side for the scan shapes")
    parser.add_argument("--scan-batch", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also run the compile check on CPU")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default inductor, nnU-Net's; eager: graph capture only)")
    parser.add_argument("--inject-nan", nargs="*", default=[], metavar="TRAINER",
                        help="put a NaN into these trainers' training data (shows that the train check fails)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke sizes: --patch 64 --batch 1 --steps 2 --iterations 1 --scan-size 64 --scan-batch 1")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work", default=None, help="scratch folder for the synthetic dataset (default: a temp dir)")
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.patch, args.batch, args.steps, args.iterations = 64, args.batch or 1, min(args.steps, 2), 1
        args.scan_size, args.scan_batch = 64, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device (use --device cpu for the CPU mode)")
    start = time.perf_counter()
    names, notes = select_trainers(args.trainers)
    if not args.trainers:
        names += [n for n in CLASSIFYING if n not in names]
    rows: List[dict] = []
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        plan = prepare_plan(work, args.patch)
        for name in names:
            check_trainer(rows, name, plan, args, device)
        check_kernels(rows, device, args)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    payload = {"benchmark": "gpu_check", "device": str(device), "environment": environment(device),
               "gpu_run": device.type == "cuda", "patch": args.patch, "batch": args.batch, "steps": args.steps,
               "trainers": names, "left_out": notes, "counts": counts,
               "seconds": time.perf_counter() - start, "rows": rows}
    write_results(Path(args.out), payload)
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} skipped in {payload['seconds']:.0f} s; "
          f"wrote {args.out} and {Path(args.out).with_suffix('.md')}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
