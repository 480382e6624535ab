"""Selective-scan speed at SS-Net's shapes: our chunked PyTorch scan vs the plain step loop.

SS-Net makes 42 scan calls per forward (21 DTS blocks x {tile scorer K=2, pixel scan K=1}), with
sequence lengths 16..4096 and d_state 8 at 256x256 (spec section 3; reference_timings.md).  For
each distinct call shape this times forward + backward of both implementations (median of
``--repeats`` after one warm-up), scales by how often SS-Net makes that call and prints a table.
``--train-step`` also times one full SS-Net training step (AdamW, batch ``--batch``), to compare
with reference_timings.md (released SS-Net, step loop: 9.21 s per bs2 step at 256 on 2 cores).

    python benchmarks/bench_selective_scan.py [--batch 2] [--size 256] [--threads 2] [--out PATH]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

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
    g = torch.Generator().manual_seed(0)
    kd = k * d
    tensors = [torch.randn(batch, kd, length, generator=g), torch.randn(batch, kd, length, generator=g) * 0.5 - 2,
               -torch.exp(torch.randn(kd, D_STATE, generator=g) * 0.3),
               torch.randn(batch, k, D_STATE, length, generator=g), torch.randn(batch, k, D_STATE, length, generator=g),
               torch.ones(kd), torch.randn(kd, generator=g) * 0.1]
    return [t.requires_grad_() for t in tensors]


def time_fwd_bwd(fn, inputs, repeats):
    def once():
        start = time.perf_counter()
        y = fn(*inputs)
        y.sum().backward()
        for t in inputs:
            t.grad = None
        return time.perf_counter() - start

    once()  # warm-up
    return statistics.median(once() for _ in range(repeats))


def time_train_step(batch, size, repeats):
    from bus_nnunet.network_architectures import create_model
    model = create_model("ssnet", in_channels=3, num_classes=2, input_size=size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size)
    target = torch.randint(0, 2, (batch, size, size))

    def once():
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), target).backward()
        opt.step()
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


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
    header = f"{'call':<12}{'x':>3}{'K*D':>6}{'L':>6}{'ours ms':>10}{'loop ms':>10}{'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, count, k, d, length in ssnet_scan_calls(args.size):
        inputs = make_inputs(args.batch, k, d, length)
        ours = time_fwd_bwd(lambda *a: selective_scan(*a, backend="torch"), inputs, args.repeats)
        loop = None if args.skip_loop else time_fwd_bwd(selective_scan_reference, inputs, args.repeats)
        rows.append({"call": name, "count": count, "channels": k * d, "length": length, "ours_s": ours, "loop_s": loop})
        print(f"{name:<12}{count:>3}{k * d:>6}{length:>6}{ours * 1e3:>10.1f}"
              f"{'' if loop is None else f'{loop * 1e3:10.1f}{loop / ours:8.1f}x'}", flush=True)
    total_ours = sum(r["ours_s"] * r["count"] for r in rows)
    total_loop = None if args.skip_loop else sum(r["loop_s"] * r["count"] for r in rows)
    print("-" * len(header))
    print(f"all 42 calls, fwd+bwd: ours {total_ours:.2f} s" +
          ("" if total_loop is None else f", loop {total_loop:.2f} s ({total_loop / total_ours:.1f}x)"))
    result = {"batch": args.batch, "size": args.size, "threads": args.threads, "repeats": args.repeats,
              "d_state": D_STATE, "calls": rows, "total_ours_s": total_ours, "total_loop_s": total_loop,
              "torch": torch.__version__}
    if args.train_step:
        step = time_train_step(args.batch, args.size, max(1, args.repeats))
        result["train_step_s"] = step
        print(f"SS-Net training step, batch {args.batch} at {args.size}: {step:.2f} s "
              f"(reference_timings.md, released code with step loop: 9.21 s at bs2/256)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
