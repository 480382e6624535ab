"""Peak memory of SCRNet's attention path and of a whole SCRNet training step (CPU, max RSS).

Spec A.9: ACmix's unfold formulation would materialise B x C x 49 x H x W copies of k and v
(about 6.6 GB each at level 1 for batch 8, 256 x 256), over 100 GB summed over the 5 levels.
SCRNet here visits the 49 window offsets with padded slices and recomputes the attention in the
backward pass.  This benchmark measures, each in a fresh subprocess (so ``ru_maxrss`` is that
measurement's own peak):

1. ``attention``: the cross-attention of one CCAPM (forward + backward) at every encoder level of a
   256 x 256 input (level shapes 64 x 256^2 ... 1024 x 16^2), measured at ``--attention-batch``
   (default 2: batch 8 at level 1 takes minutes on a busy 2-core machine) and scaled linearly to
   ``--batch`` (every tensor of the path is per sample), next to the size of the unfolded k and v
   tensors the naive formulation would need at ``--batch`` (computed, not run);
2. ``training_step``: a whole SCRNet training step (forward, backward, Adam step) at small sizes,
   and the linear extrapolation to batch 8 at 256 x 256.  Activations of a convolutional network
   with local attention grow linearly with batch x pixels, so peak = fixed + slope * B * H * W,
   fitted on the measured points.  ``--full-batch 8 --full-size 256`` measures that size directly
   (about 20 GB of RAM in float32; only on a machine that has it free).

Peak RSS counts everything the process holds above the baseline taken after the model, optimiser
and inputs are built (weights are in the baseline; gradients, Adam states and activations are not).
Writes JSON (``--out``) and prints a table.  Default run: about 2 minutes on 2 CPU cores.

    python benchmarks/bench_scrnet_memory.py [--out benchmarks/results/scrnet_memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

WIDTHS = (64, 128, 256, 512, 1024)
GIB = 1024 ** 3
DEFAULT_OUT = Path(__file__).parent / "results" / "scrnet_memory.json"


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# -- workers (run in a fresh interpreter) -----------------------------------------------------------
def _worker_attention(level: int, batch: int, size: int, threads: int) -> dict:
    import torch
    from bus_nnunet.network_architectures.scrnet import CCAPM

    torch.set_num_threads(threads)
    channels, side = WIDTHS[level], size // 2 ** level
    module = CCAPM(channels).train()
    # the attention path only: embeddings, relative position, window attention (checkpointed)
    q0, k0, v0 = (torch.randn(batch, channels, side, side, requires_grad=True) for _ in range(3))

    def attention_path():
        from torch.utils.checkpoint import checkpoint
        from bus_nnunet.network_architectures.scrnet import _coordinate_grid, local_window_attention
        b, c, h, w = q0.shape
        q, k, v = module.embed_q(q0), module.embed_k(k0), module.embed_v(v0)
        pe = module.position(_coordinate_grid(h, w, q.device, q.dtype))
        k = (k.reshape(b, module.heads, module.head_dim, h, w) - pe.unsqueeze(1)).reshape(b, c, h, w)
        return checkpoint(local_window_attention, q, k, v, module.heads, module.window, use_reentrant=False)

    baseline = _current_rss_bytes()
    start = time.perf_counter()
    out = attention_path()
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    return {"level": level + 1, "channels": channels, "side": side, "batch": batch,
            "peak_above_baseline_gib": (_peak_rss_bytes() - baseline) / GIB, "seconds": seconds,
            "input_tensor_gib": batch * channels * side * side * 4 / GIB,
            # ACmix's unfold: k and v (and their sum with pe) as B x C x 49 x H x W float32 tensors
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
    baseline = _current_rss_bytes()
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logits = net(x)
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    return {"batch": batch, "size": size, "amp_bf16": amp,
            "peak_above_baseline_gib": (_peak_rss_bytes() - baseline) / GIB, "seconds": seconds,
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="batch for the attention-path measurement and the "
                                                            "extrapolation target (paper: 8)")
    parser.add_argument("--size", type=int, default=256, help="input side (paper: 256)")
    parser.add_argument("--attention-batch", type=int, default=2,
                        help="batch at which the attention path is measured (scaled to --batch); "
                             "set it to --batch to measure batch 8 directly")
    parser.add_argument("--step-points", default="1x64,1x128",
                        help="measured training-step points BATCHxSIDE, comma separated (default: %(default)s)")
    parser.add_argument("--full-batch", type=int, default=0, help="also measure a training step at this batch "
                                                                  "and --size directly (needs ~2.5 GB per image "
                                                                  "at 256 x 256 float32)")
    parser.add_argument("--amp", action="store_true", help="training steps under CPU bfloat16 autocast")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop("kind")
        result = _worker_attention(**spec) if kind == "attention" else _worker_training_step(**spec)
        print(json.dumps(result))
        return 0

    started = time.perf_counter()
    attention = []
    for level in range(len(WIDTHS)):
        measured = _run_worker("attention", level=level, batch=args.attention_batch, size=args.size,
                               threads=args.threads)
        scale = args.batch / args.attention_batch
        measured["scaled_batch"] = args.batch
        measured["scaled_peak_gib"] = measured["peak_above_baseline_gib"] * scale
        measured["naive_unfold_kv_gib"] *= scale
        attention.append(measured)
        print(f"attention level {level + 1}: {measured['peak_above_baseline_gib']:.2f} GiB", file=sys.stderr)
    steps = []
    for point in args.step_points.split(","):
        batch, side = (int(v) for v in point.lower().split("x"))
        steps.append(_run_worker("step", batch=batch, size=side, threads=args.threads, amp=args.amp))
        print(f"training step {batch}x{side}: {steps[-1]['peak_above_baseline_gib']:.2f} GiB", file=sys.stderr)
    fixed, slope = _fit_linear(steps)
    extrapolated = fixed + slope * args.batch * args.size ** 2
    direct = None
    if args.full_batch:
        direct = _run_worker("step", batch=args.full_batch, size=args.size, threads=args.threads, amp=args.amp)

    result = {
        "benchmark": "scrnet_memory", "device": "cpu", "measure": "max RSS above baseline, fresh subprocess",
        "torch_threads": args.threads, "python": platform.python_version(),
        "attention_path_per_level": attention,
        "attention_path_peak_max_gib_at_batch": max(a["scaled_peak_gib"] for a in attention),
        "naive_unfold_kv_total_gib": sum(a["naive_unfold_kv_gib"] for a in attention) * 2,  # two CCAPMs per SCRM
        "training_step_points": steps,
        "training_step_fit": {"fixed_gib": fixed, "gib_per_megapixel_sample": slope * 1e6},
        "training_step_extrapolated": {"batch": args.batch, "size": args.size, "amp_bf16": args.amp,
                                       "peak_above_baseline_gib": extrapolated},
        "training_step_direct": direct,
        "parameters": steps[0]["parameters"],
        "wall_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)

    print(f"SCRNet memory (CPU max RSS above baseline; {result['parameters']:,} parameters, 3 in / 2 out)")
    print(f"{'level':>5} {'C':>5} {'side':>5} {'batch':>5} {'measured GiB':>13} {'at batch ' + str(args.batch):>13} "
          f"{'naive k,v GiB':>14} {'s':>7}")
    for a in attention:
        print(f"{a['level']:>5} {a['channels']:>5} {a['side']:>5} {a['batch']:>5} {a['peak_above_baseline_gib']:>13.2f} "
              f"{a['scaled_peak_gib']:>13.2f} {a['naive_unfold_kv_gib']:>14.2f} {a['seconds']:>7.1f}")
    print(f"naive unfold k,v summed over 5 levels x 2 CCAPMs: {result['naive_unfold_kv_total_gib']:.1f} GiB")
    print(f"{'training step':>24} {'peak GiB':>10} {'s':>7}")
    for s in steps + ([direct] if direct else []):
        print(f"{s['batch']:>14} x {s['size']:>3}^2    {s['peak_above_baseline_gib']:>10.2f} {s['seconds']:>7.1f}")
    print(f"{'extrapolated':>14} {args.batch} x {args.size}^2  {extrapolated:>10.2f}"
          f"   (fixed {fixed:.2f} GiB + {slope * 1e6:.2f} GiB per megapixel-sample)")
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
