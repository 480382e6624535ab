"""``bus-nnunet profile``: parameters, MACs, FLOPs (= 2 x MACs), parameters and MACs by thop's
rules (what papers quote as "Params" and "GFLOPs"), peak memory of a forward pass and of a
training step, and inference latency of a trainer's network.

MACs are counted by torch.utils.flop_counter: every convolution, linear layer, matmul/einsum and
attention call (and torchvision's deformable convolution), once per call; elementwise work is not
counted. The thop-rules columns apply thop's per-module rules (each distinct module hooked once):
it misses functional matmuls and einsums, counts norms and overcounts transposed convolutions, but
reproduces published figures (SS-Net at 1x3x256x256: 4.93 G MACs, 16.21 M params of 17.54 M).

Peak memory on CUDA: torch.cuda.max_memory_allocated above what was allocated before the step.
On CPU: the increase of the process's peak resident set size (VmHWM) during the step, measured in
a fresh subprocess. nnU-Net's own U-Net (nnUNetTrainer, nnUNetTrainerUS) is built from --plans,
or from nnU-Net's 2D defaults for --size when no plans are given."""
from __future__ import annotations

import argparse


def register(subparsers):
    p = subparsers.add_parser("profile", help="parameters, MACs/GFLOPs, peak memory and latency of a trainer's network",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trainer", nargs="?", help="trainer class name (omit with --all)")
    p.add_argument("--all", action="store_true", help="profile every available bus-nnunet trainer and nnUNetTrainer")
    p.add_argument("--size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"), help="input size (256 256)")
    p.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--classes", type=int, default=2, help="output channels incl. background (default 2)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--plans", help="nnUNetPlans.json for nnU-Net's plan-built U-Net")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards for the latency (default 10; 0 = skip)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.errors import UserError
    from bus_nnunet import profiling as P

    if bool(args.trainer) == bool(args.all):
        raise UserError("give one TRAINER or --all")
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UserError("--device cuda requested but CUDA is not available; use --device cpu")
    if args.all:
        from bus_nnunet import trainers
        names = ["nnUNetTrainer"] + sorted(trainers.TRAINERS)
    else:
        names = [args.trainer]
    results, skipped = [], []
    for name in names:
        try:
            results.append(P.profile_trainer(name, args.size, args.channels, args.classes, args.device,
                                             args.batch_size, args.plans, memory=not args.no_memory,
                                             latency_repeats=args.repeats))
        except UserError:
            if not args.all:
                raise
            skipped.append((name, "unknown trainer"))
        except Exception as e:  # --all: a network by someone else may need a missing package
            if not args.all:
                raise UserError(f"cannot profile {name}: {type(e).__name__}: {e}") from None
            skipped.append((name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    header, rows = P.TABLE_HEADER, P.format_results(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"\ninput {args.batch_size}x{args.channels}x{args.size[0]}x{args.size[1]}, {args.classes} classes, "
          f"device {args.device}; MACs: {P.MACS_METHOD}; FLOPs = 2 x MACs; thop rules: the "
          f"papers' 'GFLOPs' convention; memory: "
          f"{P.MEMORY_METHOD['cuda' if args.device.startswith('cuda') else 'cpu']}")
    for r in results:
        print(f"  {r.trainer}: {r.network}" + (f" [{'; '.join(r.notes)}]" if r.notes else ""))
    for name, why in skipped:
        print(f"  skipped {name}: {why}")
    if args.json:
        from bus_nnunet.io_utils import atomic_write_json
        atomic_write_json(args.json, {"results": [r.as_dict() for r in results],
                                      "skipped": dict(skipped), "memory_method": results[0].memory_method
                                      if results else None})
    return 0 if results else 1
