"""Peak memory of SCRNet's attention path and of a whole SCRNet training step (CPU, max RSS).

ACmix's unfold formulation would materialise B x C x 49 x H x W copies of k and v
(about 6.1 GiB each at level 1 for batch 8, 256 x 256), over 100 GB summed over the 5 levels.
SCRNet here pads k and v once, visits the 49 window offsets as strided views, accumulates the
key/value gradients in place in a hand-written backward and recomputes the attention weights
there (``network_architectures/scrnet.py``).  This benchmark measures, each in a fresh subprocess
(so the process's peak RSS is that measurement's own peak):

1. ``attention``: the attention path of one CCAPM (``CCAPM.cross_attention``: q/k/v embeddings,
   relative position, window attention; forward + backward, float32) at every encoder level of a
   ``--size`` input (level shapes 64 x 256^2 ... 1024 x 16^2), measured DIRECTLY at ``--batch``
   (default 8, the paper's batch).  ``--attention-batch N`` measures at N instead and scales
   linearly to ``--batch`` (marked "scaled" in the results).  Next to it, the size of the unfolded
   k and v tensors the naive formulation would need (computed, not run).
2. ``training_step``: a whole SCRNet training step (forward, cross-entropy, backward, Adam step;
   3 input channels, 2 classes) in each of ``--precisions`` (float32, and bf16 = CPU bfloat16
   autocast, the analogue of nnU-Net's mixed-precision training) at the
   ``--step-points`` (default 1 and 2 images of 256 x 256) and the linear extrapolation to
   ``--batch`` x ``--size``: peak = fixed + slope * B * H * W, fitted on those points.
   ``--full-batch 8`` also measures ``8 x --size`` directly.  It is launched only when
   ``MemAvailable`` is at least ``--min-available-gib`` and 1.1 x the extrapolated process peak
   (waiting up to ``--wait-minutes``, re-checking every minute; not at all when that is over 90 %
   of the machine's RAM); otherwise, or when the worker is killed (out of memory), the results say
   it was not measured and why.

Peak RSS counts everything the process holds above the baseline taken after the model, optimiser
and inputs are built (weights are in the baseline; gradients, Adam states and activations are not).
Seconds are wall times of one pass, indicative only on a shared machine (the load average before
and after each measurement is recorded).  Writes JSON (``--out``) and a Markdown summary (``--md``),
and prints a table; hand-written notes (the JSON's ``notes`` key, the Markdown below its
``NOTES_MARKER`` line) are kept when the files are rewritten.
Default run (batch 8, 256 x 256 attention + 2 x 2 step points): about 4 minutes on 2 CPU cores;
with ``--full-batch 8`` add about 2 minutes per precision that fits.

    python benchmarks/bench_scrnet_memory.py [--full-batch 8] [--out ...json] [--md ...md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402
from bus_nnunet.profiling import peak_rss_bytes, rss_bytes  # noqa: E402

WIDTHS = (64, 128, 256, 512, 1024)
GIB = 1024 ** 3
DEFAULT_OUT = HERE / "results" / "scrnet_memory.json"
NOTES_MARKER = "<!-- notes: kept when bench_scrnet_memory.py rewrites this file -->"


def _mem_available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


# -- workers (run in a fresh interpreter) -----------------------------------------------------------
def _worker_attention(level: int, batch: int, size: int, threads: int) -> dict:
    import torch
    from bus_nnunet.network_architectures.scrnet import CCAPM

    torch.set_num_threads(threads)
    channels, side = WIDTHS[level], size // 2 ** level
    module = CCAPM(channels).train()
    q0, k0, v0 = (torch.randn(batch, channels, side, side, requires_grad=True) for _ in range(3))
    baseline = rss_bytes()
    load_before = _load()
    start = time.perf_counter()
    out = module.cross_attention(q0, k0, v0)
    forward_seconds = time.perf_counter() - start
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    return {"level": level + 1, "channels": channels, "side": side, "batch": batch,
            "peak_above_baseline_gib": (peak_rss_bytes() - baseline) / GIB,
            "forward_seconds": forward_seconds, "seconds": seconds,
            "load_average_before_after": [load_before, _load()],
            "input_tensor_gib": batch * channels * side * side * 4 / GIB,
            # ACmix's unfold: k and v as B x C x 49 x H x W float32 tensors
            "naive_unfold_kv_gib": 2 * batch * channels * 49 * side * side * 4 / GIB}


def _worker_training_step(batch: int, size: int, threads: int, amp: bool) -> dict:
    import torch
    from bus_nnunet.network_architectures import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = create_model("scrnet", in_channels=3, num_classes=2).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, 2, (batch, size, size))
    baseline = rss_bytes()
    load_before = _load()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    return {"batch": batch, "size": size, "amp_bf16": amp, "measured": True,
            "peak_above_baseline_gib": (peak_rss_bytes() - baseline) / GIB,
            "peak_rss_gib": peak_rss_bytes() / GIB, "seconds": seconds,
            "load_average_before_after": [load_before, _load()],
            "parameters": sum(p.numel() for p in net.parameters())}


def _run_worker(kind: str, **kwargs) -> dict:
    """Run one measurement in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {kwargs} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit_linear(points):
    """Least-squares peak = fixed + slope * (batch * pixels)."""
    xs = [p["batch"] * p["size"] ** 2 for p in points]
    ys = [p["peak_above_baseline_gib"] for p in points]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else my / mx
    return my - slope * mx, slope


def _wait_for_memory(need_gib: float, wait_minutes: float):
    """(available GiB, None) once MemAvailable >= need_gib, else (last value, reason) after waiting."""
    deadline = time.monotonic() + 60 * wait_minutes
    checks = []
    while True:
        available = _mem_available_gib()
        checks.append(round(available, 1))
        if available >= need_gib:
            return available, None
        if time.monotonic() >= deadline:
            return available, (f"MemAvailable stayed below {need_gib:g} GiB for {wait_minutes:g} min "
                               f"(checked every minute: {checks} GiB); not launched")
        print(f"waiting for {need_gib:g} GiB available (now {available:.1f} GiB)", file=sys.stderr)
        time.sleep(60)


def _scrnet_commit() -> str:
    """Last commit of network_architectures/scrnet.py (+ "-modified" for uncommitted changes)."""
    path = str(HERE.parent / "network_architectures" / "scrnet.py")
    try:
        commit = subprocess.run(["git", "-C", str(HERE), "log", "-1", "--format=%h", "--", path],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "diff", "--quiet", "HEAD", "--", path]).returncode != 0
        return commit + ("-modified" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(result: dict, notes: str) -> str:
    env = result["environment"]
    att_batch = result["target_batch"]
    lines = ["# SCRNet memory (CPU, peak RSS above baseline)", "",
             f"Written by `benchmarks/bench_scrnet_memory.py` (scrnet.py at commit {result['scrnet_commit']}); "
             f"raw numbers in `scrnet_memory.json`.  Each measurement in a fresh process.  Seconds are "
             f"single passes on a shared 2-core machine (other engineers' jobs running; load averages "
             f"in the JSON): indicative only.", "", stamp_markdown(env), "",
             f"## Attention path of one CCAPM at batch {att_batch}, {result['size']} x {result['size']} input",
             "", "Embeddings + relative position + 7x7 window attention, forward + backward, float32.", ""]
    rows = [[a["level"], a["channels"], f"{a['side']}x{a['side']}", a["batch"],
             f"{a['scaled_peak_gib']:.2f}", "measured" if a["batch"] == att_batch else f"scaled from batch {a['batch']}",
             f"{a['naive_unfold_kv_gib']:.2f}", f"{a['seconds']:.1f}"] for a in result["attention_path_per_level"]]
    lines += [markdown_table(["level", "C", "H x W", "batch run", f"peak GiB at batch {att_batch}", "how",
                              "naive unfolded k+v GiB (computed)", "fwd+bwd s"], rows), ""]
    lines += [f"Naive unfolded k and v summed over 5 levels x 2 CCAPMs: "
              f"{result['naive_unfold_kv_total_gib']:.1f} GiB.", "",
              "## Whole training step (forward, CE, backward, Adam step; 3 in / 2 classes)", ""]
    rows = []
    for name, t in result["training_step"].items():
        for s in t["points"]:
            rows.append([name, s["batch"], f"{s['size']}x{s['size']}", f"{s['peak_above_baseline_gib']:.2f}",
                         f"measured (process peak {s['peak_rss_gib']:.2f} GiB)", f"{s['seconds']:.1f}"])
        ext, fit = t["extrapolated"], t["fit"]
        rows.append([name, ext["batch"], f"{ext['size']}x{ext['size']}", f"{ext['peak_above_baseline_gib']:.2f}",
                     f"extrapolated (fixed {fit['fixed_gib']:.2f} GiB + {fit['gib_per_megapixel_sample']:.2f} GiB "
                     f"per megapixel-sample)", ""])
        direct = t["direct"]
        if direct and direct["measured"]:
            rows.append([name, direct["batch"], f"{direct['size']}x{direct['size']}",
                         f"{direct['peak_above_baseline_gib']:.2f}",
                         f"measured (process peak {direct['peak_rss_gib']:.2f} GiB)", f"{direct['seconds']:.1f}"])
        elif direct:
            rows.append([name, direct["batch"], f"{direct['size']}x{direct['size']}", "",
                         f"not measured: {direct['reason']}", ""])
    lines += [markdown_table(["precision", "batch", "H x W", "peak GiB above baseline", "how", "s"], rows), ""]
    lines += [NOTES_MARKER, "", notes.strip() + "\n"] if notes.strip() else [NOTES_MARKER, ""]
    return "\n".join(lines)


PRECISIONS = {"float32": "float32", "bf16": "bf16_autocast"}


def _training_steps(args, amp: bool) -> dict:
    """Measured step points, their linear fit, the extrapolation to --batch x --size and the
    guarded direct measurement at --full-batch x --size."""
    label = "bf16 autocast" if amp else "float32"
    points = []
    for point in args.step_points.split(","):
        batch, side = (int(v) for v in point.lower().split("x"))
        points.append(_run_worker("step", batch=batch, size=side, threads=args.threads, amp=amp))
        print(f"training step {label} {batch}x{side}: {points[-1]['peak_above_baseline_gib']:.2f} GiB, "
              f"{points[-1]['seconds']:.1f} s", file=sys.stderr)
    fixed, slope = _fit_linear(points)
    baseline = max(p["peak_rss_gib"] - p["peak_above_baseline_gib"] for p in points)

    def predicted(batch):
        return fixed + slope * batch * args.size ** 2

    direct = None
    if args.full_batch:
        process_peak = predicted(args.full_batch) + baseline
        need = max(args.min_available_gib, 1.1 * process_peak)
        direct = {"batch": args.full_batch, "size": args.size, "amp_bf16": amp, "measured": False,
                  "predicted_process_peak_gib": process_peak}
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB
        if need > 0.9 * total:  # the rest is the kernel's and other processes': it would never be available
            direct["reason"] = (f"needs about {process_peak:.1f} GiB (extrapolated process peak) + 10 %, "
                                f"more than 90 % of this machine's {total:.1f} GiB")
        else:
            available, reason = _wait_for_memory(need, args.wait_minutes)
            if reason:
                direct["reason"] = reason
            else:
                try:
                    direct = _run_worker("step", batch=args.full_batch, size=args.size, threads=args.threads,
                                         amp=amp)
                    direct["mem_available_gib_before"] = round(available, 1)
                except RuntimeError as error:  # e.g. killed by the kernel's OOM killer (exit -9)
                    direct["reason"] = f"worker failed with {available:.1f} GiB available: {str(error)[:300]}"
        print(f"training step {label} {args.full_batch}x{args.size}: "
              f"{direct.get('peak_above_baseline_gib', direct.get('reason'))}", file=sys.stderr)
    return {"points": points, "fit": {"fixed_gib": fixed, "gib_per_megapixel_sample": slope * 1e6},
            "extrapolated": {"batch": args.batch, "size": args.size, "measured": False,
                             "peak_above_baseline_gib": predicted(args.batch)},
            "direct": direct}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    parser.add_argument("--md", type=Path, default=None,
                        help="Markdown summary (default: the JSON path with .md)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the attention-path measurement and the "
                                                            "extrapolation target (paper: 8)")
    parser.add_argument("--size", type=int, default=256, help="input side (paper: 256)")
    parser.add_argument("--attention-batch", type=int, default=None,
                        help="measure the attention path at this batch and scale it to --batch "
                             "(default: measure at --batch directly)")
    parser.add_argument("--step-points", default="1x256,2x256",
                        help="measured training-step points BATCHxSIDE, comma separated (default: %(default)s)")
    parser.add_argument("--full-batch", type=int, default=0, help="also measure a training step at this batch "
                                                                  "and --size directly (guarded, see above)")
    parser.add_argument("--min-available-gib", type=float, default=20.0,
                        help="launch --full-batch only with this much MemAvailable (default: %(default)s)")
    parser.add_argument("--wait-minutes", type=float, default=30.0,
                        help="how long to wait for that memory (default: %(default)s)")
    parser.add_argument("--precisions", default="float32,bf16",
                        help="training-step precisions: float32 and/or bf16 (CPU bfloat16 autocast); "
                             "default: %(default)s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop("kind")
        result = _worker_attention(**spec) if kind == "attention" else _worker_training_step(**spec)
        print(json.dumps(result))
        return 0

    import torch
    torch.set_num_threads(args.threads)
    environment = environment_stamp("cpu")
    environment["mem_total_gib"] = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GIB, 1)
    environment["mem_available_gib_at_start"] = round(_mem_available_gib(), 1)
    started = time.perf_counter()
    attention_batch = args.attention_batch or args.batch
    attention = []
    for level in range(len(WIDTHS)):
        measured = _run_worker("attention", level=level, batch=attention_batch, size=args.size,
                               threads=args.threads)
        scale = args.batch / attention_batch
        measured["scaled_batch"] = args.batch
        measured["scaled_peak_gib"] = measured["peak_above_baseline_gib"] * scale
        measured["naive_unfold_kv_gib"] *= scale
        attention.append(measured)
        print(f"attention level {level + 1} batch {attention_batch}: {measured['peak_above_baseline_gib']:.2f} GiB, "
              f"{measured['seconds']:.1f} s", file=sys.stderr)
    training = {}
    for precision in args.precisions.split(","):
        if precision not in PRECISIONS:
            parser.error(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
        training[PRECISIONS[precision]] = _training_steps(args, amp=precision == "bf16")

    environment["updated_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    environment["load_average_at_update"] = _load()
    result = {
        "benchmark": "scrnet_memory", "measure": "max RSS above baseline, fresh subprocess",
        "scrnet_commit": _scrnet_commit(), "environment": environment, "size": args.size,
        "target_batch": args.batch,
        "attention_path_per_level": attention,
        "attention_path_measured_directly": attention_batch == args.batch,
        "attention_path_peak_max_gib_at_batch": max(a["scaled_peak_gib"] for a in attention),
        "naive_unfold_kv_total_gib": sum(a["naive_unfold_kv_gib"] for a in attention) * 2,  # two CCAPMs per SCRM
        "training_step": training,
        "parameters": next(iter(training.values()))["points"][0]["parameters"],
        "wall_seconds": time.perf_counter() - started,
    }
    if args.out.exists():  # measurements recorded by hand next to the script's (see NOTES_MARKER)
        result["notes"] = json.loads(args.out.read_text()).get("notes", {})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    md_path = args.md or args.out.with_suffix(".md")
    notes = ""
    if md_path.exists() and NOTES_MARKER in md_path.read_text():
        notes = md_path.read_text().split(NOTES_MARKER, 1)[1]
    tmp = md_path.with_suffix(md_path.suffix + ".tmp")
    tmp.write_text(_markdown(result, notes))
    tmp.replace(md_path)

    print(f"SCRNet memory (CPU max RSS above baseline; {result['parameters']:,} parameters, 3 in / 2 out)")
    print(f"{'level':>5} {'C':>5} {'side':>5} {'batch':>5} {'measured GiB':>13} {'at batch ' + str(args.batch):>13} "
          f"{'naive k,v GiB':>14} {'s':>7}")
    for a in attention:
        print(f"{a['level']:>5} {a['channels']:>5} {a['side']:>5} {a['batch']:>5} {a['peak_above_baseline_gib']:>13.2f} "
              f"{a['scaled_peak_gib']:>13.2f} {a['naive_unfold_kv_gib']:>14.2f} {a['seconds']:>7.1f}")
    print(f"naive unfold k,v summed over 5 levels x 2 CCAPMs: {result['naive_unfold_kv_total_gib']:.1f} GiB")
    for name, t in training.items():
        print(f"training step, {name}: {'peak GiB':>10} {'s':>7}")
        for point in t["points"] + ([t["direct"]] if t["direct"] and t["direct"]["measured"] else []):
            print(f"{point['batch']:>14} x {point['size']:>3}^2    {point['peak_above_baseline_gib']:>10.2f} "
                  f"{point['seconds']:>7.1f}")
        if t["direct"] and not t["direct"]["measured"]:
            print(f"{t['direct']['batch']:>14} x {t['direct']['size']:>3}^2    not measured: {t['direct']['reason']}")
        fit = t["fit"]
        print(f"{'extrapolated':>14} {args.batch} x {args.size}^2  {t['extrapolated']['peak_above_baseline_gib']:>10.2f}"
              f"   (fixed {fit['fixed_gib']:.2f} GiB + {fit['gib_per_megapixel_sample']:.2f} GiB per megapixel-sample)")
    print(f"wrote {args.out} and {md_path} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
