"""Selective-scan speed at SS-Net's shapes: every exact pure-PyTorch formulation against the step
loop and a memory-traffic lower bound, forward + backward, in one run.

SS-Net makes 42 scan calls per forward (21 DTS blocks x {tile scorer K=2, pixel scan K=1}), with
sequence lengths 16..4096 and d_state 8 at 256x256.  For each distinct call shape this times
forward + backward of each variant (median of ``--repeats`` after one warm-up, the variants
alternating so that load changes hit all alike), checks it against the step loop (output and all
seven gradients within 1e-5 of the tensor's scale), scales by how often SS-Net makes that call
and writes a table:

* ``steps``: our time-major step scan (the CPU default, ``backend="steps"``);
* ``chunked``: our chunked closed form (the previous default, ``backend="chunked"``);
* ``loop``: the plain recurrence with autograd through every step (``selective_scan_reference``);
* ``pscan``: mamba.py's Blelloch parallel scan (``pip install mambapy``; skipped when absent).

The bound: the bytes a fused kernel must move (read u, delta, B, C, grad_y; write y and the input
gradients; A, D and delta_bias are negligible) divided by this machine's measured single-stream
memory bandwidth (a 256 MiB copy, read + write bytes), and a second bound for an unfused
implementation that stores the ``(b, channels, d_state, L)`` states once in forward and reads them
once in backward (what every eager-PyTorch formulation here must do at least).
Inputs follow SS-Net's initialisation (A = -[1..8], delta = softplus of dt in [1e-3, 0.1] plus a
projection).  ``--train-step`` also times one full SS-Net training step (AdamW, batch ``--batch``)
with the default scan and with the step loop swapped in.

    taskset -c 1 python benchmarks/bench_selective_scan.py [--batch 2] [--size 256] [--threads 1] [--train-step]

Use ``--threads 1`` (the default) on a shared machine: with 2 threads every parallel op waits for a
thread the scheduler has parked, which slows the many mid-sized ops of all variants ~10x.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402

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


def pscan_scan():
    """mamba.py's selective scan (its ``MambaBlock.selective_scan``: exp of delta * A, Blelloch
    ``pscan``, ``hs @ C``) on our inputs, or None when ``mambapy`` is not installed."""
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
        u, delta, A, B, C, D = scan_module._prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
        group = torch.arange(u.shape[1]) // (u.shape[1] // B.shape[1])
        b_full, c_full = B[:, group].permute(0, 3, 1, 2), C[:, group].permute(0, 3, 1, 2)  # (b, L, ch, N)
        delta_l, u_l = delta.transpose(1, 2), u.transpose(1, 2)  # (b, L, ch)
        hs = pscan(torch.exp(delta_l.unsqueeze(-1) * A), (delta_l * u_l).unsqueeze(-1) * b_full)
        y = (hs * c_full).sum(-1)
        return (y + D * u_l if D is not None else y).transpose(1, 2)
    return scan


def variants():
    """name -> scan function of every formulation measured (the step loop is ``loop``)."""
    found = {"steps": lambda *a: selective_scan(*a, backend="steps"),
             "chunked": lambda *a: selective_scan(*a, backend="chunked"),
             "loop": selective_scan_reference}
    pscan = pscan_scan()
    if pscan is not None:
        found["pscan"] = pscan
    return found


def max_relative_error(fn, reference, inputs):
    """Largest error of output and input gradients against ``reference``, relative to each tensor's
    scale (at least 1): the criterion of tests/test_ssnet.py."""
    grad_out = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for got, want in zip(_value_and_grads(fn, inputs, grad_out), _value_and_grads(reference, inputs, grad_out)):
        worst = max(worst, (got - want).abs().max().item() / max(1.0, want.abs().max().item()))
    return worst


def _value_and_grads(fn, inputs, grad_out):
    y = fn(*inputs)
    return [y.detach(), *torch.autograd.grad(y, inputs, grad_out)]


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 5) -> float:
    """Single-stream copy bandwidth (read + write bytes per second) of a ``mib`` MiB float32 tensor."""
    src = torch.rand(mib * 2 ** 20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def traffic_bytes(batch, k, d, length, d_state=D_STATE):
    """(fused, stored-states) bytes of one forward + backward.  Fused: read u, delta, B, C and
    grad_y, write y; backward reads u, delta, B, C again and writes their gradients (A, D,
    delta_bias are < 0.1 %).  Stored states: the fused bytes plus writing the float32
    ``(b, channels, d_state, L)`` states once and reading them once."""
    seq = batch * k * d * length  # u, delta, y, grad_y, grad_u, grad_delta
    proj = batch * k * d_state * length  # each of B, C and their gradients
    fused = 4 * (3 * seq + 2 * proj + 5 * seq + 4 * proj)
    return fused, fused + 2 * 4 * seq * d_state


def train_steps(batch, size):
    """One SS-Net training step with the default scan and one with the step loop swapped in (same model)."""
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

    return {"ours": step_with(selective_scan), "loop": step_with(selective_scan_reference)}


def measure_calls(args, scans):
    rows = []
    names = list(scans)
    header = f"{'call':<12}{'x':>3}{'K*D':>6}{'L':>6}" + "".join(f"{n + ' ms':>12}" for n in names)
    print(header)
    print("-" * len(header))
    for name, count, k, d, length in ssnet_scan_calls(args.size):
        inputs = make_inputs(args.batch, k, d, length)
        medians = interleaved_medians({n: fwd_bwd(fn, inputs) for n, fn in scans.items()}, args.repeats)
        errors = {n: max_relative_error(fn, selective_scan_reference, inputs) for n, fn in scans.items() if n != "loop"}
        fused, stored = traffic_bytes(args.batch, k, d, length)
        rows.append({"call": name, "count": count, "channels": k * d, "length": length,
                     "chunk": chunk_length(inputs), "seconds": medians, "max_rel_error": errors,
                     "bytes_fused": fused, "bytes_stored_states": stored})
        print(f"{name:<12}{count:>3}{k * d:>6}{length:>6}" + "".join(f"{medians[n] * 1e3:12.1f}" for n in names),
              flush=True)
    return rows


def summarise(rows, names, bandwidth):
    """Per variant: seconds for all 42 calls, speed-up over the loop, distance to both bounds, exact."""
    total = {n: sum(r["seconds"][n] * r["count"] for r in rows) for n in names}
    bound_fused = sum(r["bytes_fused"] * r["count"] for r in rows) / (bandwidth * 1e9)
    bound_stored = sum(r["bytes_stored_states"] * r["count"] for r in rows) / (bandwidth * 1e9)
    summary = []
    for n in sorted(names, key=total.get):
        worst = 0.0 if n == "loop" else max(r["max_rel_error"][n] for r in rows)
        summary.append({"variant": n, "fwd_bwd_s": total[n], "speedup_vs_loop": total["loop"] / total[n],
                        "x_fused_bound": total[n] / bound_fused, "x_stored_states_bound": total[n] / bound_stored,
                        "max_rel_error": worst, "exact": worst <= 1e-5})
    return summary, bound_fused, bound_stored


def write_markdown(path, result):
    s = result["summary"]
    table = markdown_table(
        ["variant", "fwd+bwd, 42 calls (s)", "x step loop", "x fused bound", "x stored-states bound",
         "max rel. error vs loop", "exact (<= 1e-5)"],
        [[r["variant"], f"{r['fwd_bwd_s']:.3f}", f"{r['speedup_vs_loop']:.1f}", f"{r['x_fused_bound']:.0f}",
          f"{r['x_stored_states_bound']:.1f}", f"{r['max_rel_error']:.1e}", "yes" if r["exact"] else "no"] for r in s])
    names = [r["variant"] for r in s]
    calls = markdown_table(["call", "x", "K*D", "L"] + [f"{n} ms" for n in names],
                           [[r["call"], r["count"], r["channels"], r["length"]] +
                            [f"{r['seconds'][n] * 1e3:.1f}" for n in names] for r in result["calls"]])
    lines = [f"# Selective scan at SS-Net's shapes ({result['size']}², batch {result['batch']}, "
             f"{result['threads']} thread)", "", stamp_markdown(result["environment"]), "",
             f"Measured copy bandwidth: {result['bandwidth_gbs']:.1f} GB/s (read + write, one thread). Bounds for "
             f"all 42 calls, forward + backward: fused (inputs, outputs and gradients only) "
             f"{result['bound_fused_s'] * 1e3:.1f} ms; states stored once and read once "
             f"{result['bound_stored_states_s'] * 1e3:.1f} ms.", "", table, "", calls, ""]
    if result.get("pscan_missing"):
        lines.append("mamba.py's pscan was not measured: `mambapy` is not installed (`pip install mambapy`).")
    if "train_step_s" in result:
        lines.append(f"SS-Net training step (batch {result['batch']}, {result['size']}²): default scan "
                     f"{result['train_step_s']:.2f} s, step loop {result['train_step_loop_s']:.2f} s.")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="SS-Net input side (sets the sequence lengths)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", help="subset of steps chunked loop pscan (loop is always run)")
    parser.add_argument("--train-step", action="store_true", help="also time one SS-Net training step")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "selective_scan.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    scans = variants()
    if args.variants:
        scans = {n: f for n, f in scans.items() if n in args.variants or n == "loop"}
    bandwidth = memory_bandwidth_gbs()
    print(f"copy bandwidth {bandwidth:.1f} GB/s (1 stream)")
    rows = measure_calls(args, scans)
    summary, bound_fused, bound_stored = summarise(rows, list(scans), bandwidth)
    print(f"\nall 42 calls, fwd+bwd; bounds: fused {bound_fused * 1e3:.1f} ms, stored states {bound_stored * 1e3:.1f} ms")
    for r in summary:
        print(f"{r['variant']:<8}{r['fwd_bwd_s']:8.3f} s {r['speedup_vs_loop']:6.1f}x loop "
              f"{r['x_fused_bound']:6.0f}x fused bound {r['x_stored_states_bound']:6.1f}x stored-states bound "
              f"max err {r['max_rel_error']:.1e}")
    result = {"benchmark": "selective_scan", "date": datetime.date.today().isoformat(),
              "environment": environment_stamp("cpu"), "batch": args.batch, "size": args.size,
              "threads": args.threads, "repeats": args.repeats, "d_state": D_STATE,
              "bandwidth_gbs": bandwidth, "bound_fused_s": bound_fused, "bound_stored_states_s": bound_stored,
              "default_cpu_backend": "steps", "summary": summary, "calls": rows,
              "pscan_missing": "pscan" not in scans and not args.variants}
    if args.train_step:
        medians = interleaved_medians(train_steps(args.batch, args.size), max(1, args.repeats))
        result["train_step_s"], result["train_step_loop_s"] = medians["ours"], medians["loop"]
        print(f"SS-Net training step, batch {args.batch} at {args.size}: default scan {medians['ours']:.2f} s, "
              f"step loop {medians['loop']:.2f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    write_markdown(out.with_suffix(".md"), result)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
