"""Selective-scan speed at SS-Net's shapes: our chunked PyTorch scan vs the plain step loop.

SS-Net makes 42 scan calls per forward (21 DTS blocks x {tile scorer K=2, pixel scan K=1}), with
sequence lengths 16..4096 and d_state 8 at 256x256 (spec section 3; reference_timings.md).  For
each distinct call shape this times forward + backward of both implementations (median of
``--repeats`` after one warm-up, the two alternating so that load changes hit both alike), scales
by how often SS-Net makes that call and prints a table.
Inputs follow SS-Net's initialisation (A = -[1..8], delta = softplus of dt in [1e-3, 0.1] plus a
projection), so the scan picks the chunk length it picks inside SS-Net (printed as ``T``).
``--train-step`` also times one full SS-Net training step (AdamW, batch ``--batch``) with our scan
and with the step loop swapped in, to compare with reference_timings.md (released SS-Net, step
loop: 9.21 s per bs2 step at 256 on 2 cores).

    python benchmarks/bench_selective_scan.py [--batch 2] [--size 256] [--threads 2] [--train-step]

On a machine shared with other jobs use ``--threads 1``: with 2 threads every parallel op waits
for a thread the scheduler has parked, which slows the many mid-sized ops of both scans ~10x.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import bus_nnunet.network_architectures.selective_scan as scan_module
from bus_nnunet.network_architectures.selective_scan import selective_scan, selective_scan_reference

D_STATE = 8


def ssnet_scan_calls(size: int = 256):
    """(name, count, K, D, L) of every distinct selective-scan call in one SS-Net forward."""
    calls = []
    # level, blocks, C, tile, map side
    for level, blocks, c, tile, side in (("enc2", 9, 256, 2, size // 16), ("enc3", 3, 512, 2, size // 32),
                                         ("dec2", 3, 256, 4, size // 16), ("dec1", 3, 128, 4, size // 8),
                                         ("dec0", 3, 64, 8, size // 4)):
        n_tiles = (side // tile) ** 2
        calls.append((f"{level} core1", blocks, 2, c // 2, n_tiles))  # tile scorer, both directions
        calls.append((f"{level} core0", blocks, 1, 2 * c, side * side))  # pixel scan
    return calls


def make_inputs(batch, k, d, length):
    """u, delta, A, B, C, D, delta_bias as SS-Net's SelectiveScan2D initialises them."""
    g = torch.Generator().manual_seed(0)
    kd = k * d
    dt = torch.exp(torch.rand(kd, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    tensors = [torch.randn(batch, kd, length, generator=g),
               torch.randn(batch, kd, length, generator=g) * 0.5,  # dt projection of the input
               -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(kd, 1),
               torch.randn(batch, k, D_STATE, length, generator=g), torch.randn(batch, k, D_STATE, length, generator=g),
               torch.ones(kd), dt + torch.log(-torch.expm1(-dt))]  # softplus^-1(dt)
    return [t.requires_grad_() for t in tensors]


def chunk_length(inputs):
    """The chunk length our scan uses for these inputs."""
    u, delta, A, *_ = scan_module._prepare(*(t.detach() for t in inputs[:6]), inputs[6].detach(), True)
    return scan_module._selective_chunk_size(delta, A)


def interleaved_medians(runs, repeats):
    """Median seconds of each zero-argument callable in ``runs`` (name -> fn), after one warm-up
    each; the callables alternate, so a change in machine load hits all of them alike."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fwd_bwd(fn, inputs):
    def once():
        fn(*inputs).sum().backward()
        for t in inputs:
            t.grad = None
    return once


def train_steps(batch, size):
    """One SS-Net training step with our scan and one with the step loop swapped in (same model)."""
    from bus_nnunet.network_architectures import create_model, ssnet
    torch.manual_seed(0)
    model = create_model("ssnet", in_channels=3, num_classes=2, input_size=size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size)
    target = torch.randint(0, 2, (batch, size, size))

    def step_with(scan):
        def once():
            original, ssnet.selective_scan = ssnet.selective_scan, scan
            try:
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x), target).backward()
                opt.step()
            finally:
                ssnet.selective_scan = original
        return once

    return {"ours": step_with(lambda *a, **k: selective_scan(*a, **k, backend="torch")),
            "loop": step_with(selective_scan_reference)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="SS-Net input side (sets the sequence lengths)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-loop", action="store_true", help="time only our scan")
    parser.add_argument("--train-step", action="store_true", help="also time one SS-Net training step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "selective_scan.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = []
    header = f"{'call':<12}{'x':>3}{'K*D':>6}{'L':>6}{'T':>4}{'ours ms':>10}{'loop ms':>10}{'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, count, k, d, length in ssnet_scan_calls(args.size):
        inputs = make_inputs(args.batch, k, d, length)
        runs = {"ours": fwd_bwd(lambda *a: selective_scan(*a, backend="torch"), inputs)}
        if not args.skip_loop:
            runs["loop"] = fwd_bwd(selective_scan_reference, inputs)
        medians = interleaved_medians(runs, args.repeats)
        ours, loop = medians["ours"], medians.get("loop")
        chunk = chunk_length(inputs)
        rows.append({"call": name, "count": count, "channels": k * d, "length": length, "chunk": chunk,
                     "ours_s": ours, "loop_s": loop})
        print(f"{name:<12}{count:>3}{k * d:>6}{length:>6}{chunk:>4}{ours * 1e3:>10.1f}"
              f"{'' if loop is None else f'{loop * 1e3:10.1f}{loop / ours:8.1f}x'}", flush=True)
    total_ours = sum(r["ours_s"] * r["count"] for r in rows)
    total_loop = None if args.skip_loop else sum(r["loop_s"] * r["count"] for r in rows)
    print("-" * len(header))
    print(f"all 42 calls, fwd+bwd: ours {total_ours:.2f} s" +
          ("" if total_loop is None else f", loop {total_loop:.2f} s ({total_loop / total_ours:.1f}x)"))
    result = {"benchmark": "selective_scan", "date": datetime.date.today().isoformat(),
              "device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
              "batch": args.batch, "size": args.size, "threads": args.threads, "repeats": args.repeats,
              "d_state": D_STATE, "calls": rows, "total_ours_s": total_ours, "total_loop_s": total_loop,
              "torch": torch.__version__, "python": platform.python_version()}
    if args.train_step:
        runs = train_steps(args.batch, args.size)
        if args.skip_loop:
            del runs["loop"]
        medians = interleaved_medians(runs, max(1, args.repeats))
        result["train_step_s"], result["train_step_loop_s"] = medians["ours"], medians.get("loop")
        print(f"SS-Net training step, batch {args.batch} at {args.size}: ours {medians['ours']:.2f} s" +
              (f", step loop {medians['loop']:.2f} s" if "loop" in medians else "") +
              " (reference_timings.md, released code with step loop: 9.21 s at bs2/256)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
