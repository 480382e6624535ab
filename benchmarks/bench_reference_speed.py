"""Training-step and inference speed of our networks under the protocol the released reference
code was timed with, next to those numbers (:data:`REFERENCE`).

Protocol: 256 x 256 random image and mask, Adam lr 1e-4, training step = zero_grad +
forward + loss + backward + optimizer step, median of 5 after 2 warm-ups; inference = eval mode,
no_grad, batch 1, median of 10; each model in its own process; ``--threads`` torch threads (2 for
the reference numbers).  Our networks output two-class logits trained with cross-entropy (what our trainers
use).  nnU-Net's default 2D PlainConvUNet (1 input channel, 7 stages 32..512, deep supervision) is
measured in the same run: the ratio of each network to it is comparable with the reference
table's ratio even when this machine is busier or faster than the one that made the table.

    python benchmarks/bench_reference_speed.py [--batch 2 8] [--threads 2] [--models ...]

Writes ``benchmarks/results/reference_speed.{json,md}`` (``--out`` stem).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment_stamp, markdown_table, stamp_markdown  # noqa: E402

# the released reference code timed on the same machine kind (2026-11-22): trainable params, train step at
# bs2 / bs8 (s), inference bs1 (s)
REFERENCE = {
    "nnunet": ("nnU-Net 2.8 default 2D PlainConvUNet", 33_471_820, {2: 1.52, 8: 8.27}, 0.24),
    "acsnet": ("ACSNet, pure-PyTorch modulated deformable conv", 32_337_945, {2: 3.87, 8: 25.3}, 0.67),
    "anatosegnet": ("AnatoSegNet UResNetWithAttention", 94_906_282, {2: 4.11, 8: 13.4}, 0.62),
    "ssnet": ("SS-Net SS_UNet, step-loop selective scan", 17_535_538, {2: 9.21, 8: 29.5}, 1.48),
}
IN_CHANNELS = {"nnunet": 1}  # the reference measured nnU-Net on 1 channel, the papers' nets on RGB
DEFAULT_MODELS = ("nnunet", "acsnet", "anatosegnet", "ssnet")
SIZE = 256


def build(name: str):
    if name == "nnunet":  # nnU-Net's default 2D plan at 256x256: 7 stages 32..512, deep supervision
        from bus_nnunet.profiling import default_plain_unet_2d
        return default_plain_unet_2d(1, 2, (SIZE, SIZE), deep_supervision=True)
    from bus_nnunet.network_architectures import create_model, model_info
    kwargs = {"input_size": (SIZE, SIZE)} if model_info(name).takes_input_size else {}
    return create_model(name, in_channels=IN_CHANNELS.get(name, 3), num_classes=2, **kwargs)


def worker(name: str, batch: int, threads: int) -> dict:
    """Times one model in this (fresh) process."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    channels = IN_CHANNELS.get(name, 3)
    image = torch.rand(batch, channels, SIZE, SIZE)
    mask = torch.randint(0, 2, (batch, SIZE, SIZE))

    def loss_of(output):
        outputs = output if isinstance(output, (list, tuple)) else [output]
        # deep supervision: every output against the mask resized to it (nnU-Net's targets)
        return sum(F.cross_entropy(o, F.interpolate(mask[:, None].float(), o.shape[2:], mode="nearest")[:, 0].long())
                   for o in outputs)

    def train_step():
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_of(model(image)).backward()
        optimizer.step()
        return time.perf_counter() - start, time.process_time() - cpu

    model.train()
    for _ in range(2):
        train_step()
    steps = [train_step() for _ in range(5)]
    train = statistics.median(wall for wall, _ in steps)
    train_cpu = statistics.median(cpu for _, cpu in steps)

    model.eval()
    one = image[:1]

    def infer():
        start = time.perf_counter()
        with torch.no_grad():
            model(one)
        return time.perf_counter() - start

    for _ in range(2):
        infer()
    inference = statistics.median(infer() for _ in range(10))
    return {"model": name, "batch": batch, "params": params, "train_step_s": train, "train_step_cpu_s": train_cpu,
            "inference_s": inference}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[2], help="training batch sizes (spec: 2 and 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="nnunet and registered network names (scrnet, attention_unet... have no reference)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "reference_speed"))
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "BATCH", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))))
        return 0

    models = ["nnunet"] + [m for m in args.models if m != "nnunet"]  # the anchor always runs
    stamp = environment_stamp("cpu")
    stamp["torch_threads"] = args.threads
    results = []
    for batch in args.batch:
        for name in models:
            print(f"timing {name} at batch {batch} ...", flush=True)
            done = subprocess.run([sys.executable, __file__, "--worker", name, str(batch), str(args.threads)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"  train step {r['train_step_s']:.2f} s (CPU {r['train_step_cpu_s']:.2f} s), "
                  f"inference {r['inference_s']:.3f} s", flush=True)

    rows = []
    for batch in args.batch:
        anchor = next(r for r in results if r["model"] == "nnunet" and r["batch"] == batch)
        for r in (r for r in results if r["batch"] == batch):
            ref = REFERENCE.get(r["model"])
            ref_step = ref[2].get(batch) if ref else None
            ratio = r["train_step_s"] / anchor["train_step_s"]
            cpu_ratio = r["train_step_cpu_s"] / anchor["train_step_cpu_s"]
            ref_ratio = ref_step / REFERENCE["nnunet"][2][batch] if ref_step else None
            r.update(reference_train_step_s=ref_step, reference_inference_s=ref[3] if ref else None,
                     x_nnunet=ratio, x_nnunet_cpu=cpu_ratio, reference_x_nnunet=ref_ratio)
            rows.append([r["model"], batch, f"{r['params']:,}", f"{ref[1]:,}" if ref else "-",
                         f"{r['train_step_s']:.2f}", f"{ref_step:.2f}" if ref_step else "-",
                         f"{r['train_step_cpu_s']:.2f}", f"{ratio:.2f} ({cpu_ratio:.2f})",
                         f"{ref_ratio:.2f}" if ref_ratio else "-",
                         f"{r['inference_s']:.3f}", f"{ref[3]:.2f}" if ref else "-"])
    header = ["model", "batch", "params (ours)", "params (reference)", "train step s (ours)",
              "train step s (reference)", "train step CPU s (ours)", "x nnU-Net (ours, wall (CPU))",
              "x nnU-Net (reference)", "inference s (ours)", "inference s (reference)"]
    table = markdown_table(header, rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"benchmark": "reference_speed", "stamp": stamp,
                                                    "size": SIZE, "results": results}, indent=2))
    out.with_suffix(".md").write_text(
        "# Speed against the released reference code (its timing protocol)\n\n"
        f"256 x 256, Adam, median of 5 training steps after 2 warm-ups, inference batch 1 median of 10, each model in "
        f"its own process, {args.threads} torch threads. Reference columns: the released code "
        "timed on the same machine kind (2026-11-22; REFERENCE in benchmarks/bench_reference_speed.py). 'x nnU-Net' divides by nnU-Net's default 2D U-Net measured "
        "in the same run (ours; wall and, in brackets, process CPU time) or in the reference table, so it is comparable "
        "when machine load differs.\n\n"
        f"{stamp_markdown(stamp)}\n\n{table}\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
