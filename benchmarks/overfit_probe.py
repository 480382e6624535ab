"""Overfit probe: can a trainer's network fit a handful of real images it sees every step?

The classic sanity check behind "does not learn": with no augmentation and the same few images
in every batch, a correct network + loss + optimiser drives the training Dice of those images
towards 1 within a few hundred steps.  One that cannot is broken or needs a different
optimiser setting, whatever the budget.  Images come from an nnU-Net preprocessed folder
(e.g. the convergence study's), zero-padded to the patch; the loss is Dice + cross-entropy (the
networks' own output head), the optimiser the trainer's recipe at a constant lr.

    python benchmarks/overfit_probe.py SSNetTrainer --steps 150
    python benchmarks/overfit_probe.py SSNetTrainer --lr 1e-3 --network-kwargs '{"faithful_tiles": false}'
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "work" / "convergence" / "preprocessed" / "Dataset501_BrEaST" / "nnUNetPlans_2d"


def load_images(folder: Path, n: int, size: int):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    cls = infer_dataset_class(str(folder))
    ids = sorted(cls.get_identifiers(str(folder)))
    dataset = cls(str(folder), ids)
    xs, ys, picked = [], [], []
    for key in ids:  # the first n cases with a lesion of at least 1 % of the image
        data, seg = (np.asarray(a[:]) for a in dataset.load_case(key)[:2])
        if (seg > 0).mean() < 0.01:
            continue
        pad = [(0, 0), (0, 0), (0, size - data.shape[-2]), (0, size - data.shape[-1])]
        xs.append(np.pad(data, pad)[:, 0])
        ys.append(np.pad(seg > 0, pad)[:, 0])
        picked.append(key)
        if len(picked) == n:
            break
    return torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys)).long()[:, 0], picked


def dice_of(logits: torch.Tensor, target: torch.Tensor) -> float:
    pred = logits.argmax(1)
    inter = ((pred == 1) & (target == 1)).sum((1, 2)).float()
    return float((2 * inter / ((pred == 1).sum((1, 2)) + (target == 1).sum((1, 2))).clamp(min=1)).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trainer")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=None, help="constant lr (default: the recipe's initial lr)")
    p.add_argument("--network-kwargs", default="{}", help="JSON merged into the trainer's network kwargs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="append the result as one JSON line")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from bus_nnunet.registration import trainer_class
    from bus_nnunet.network_architectures import create_model
    from bus_nnunet.recipes import build_optimizer
    cls = trainer_class(args.trainer)
    if not getattr(cls, "network_name", None):
        sys.exit(f"{args.trainer} builds its network from the plans; the probe takes registry-network trainers")
    kwargs = {**cls.network_kwargs, **json.loads(args.network_kwargs)}
    if getattr(cls, "network_name", None) == "ssnet":
        kwargs["input_size"] = (args.size, args.size)
    net = create_model(cls.network_name, in_channels=1, num_classes=2, deep_supervision=False, **kwargs)
    recipe = cls.recipe.with_(lr=args.lr) if args.lr else cls.recipe
    optimizer = build_optimizer(recipe, [q for q in net.parameters() if q.requires_grad])
    x, y, cases = load_images(args.data, args.images, args.size)
    curve, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        net.train()
        logits = net(x)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        prob = logits.float().softmax(1)[:, 1]
        soft_dice = (2 * (prob * (y == 1)).sum() + 1e-5) / (prob.sum() + (y == 1).sum() + 1e-5)
        loss = F.cross_entropy(logits.float(), y) + (1 - soft_dice)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
        optimizer.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            net.eval()
            with torch.no_grad():
                out = net(x)
                out = out[0] if isinstance(out, (list, tuple)) else out
            curve.append({"step": step, "loss": round(loss.item(), 4), "train_dice_eval": round(dice_of(out, y), 4),
                          "train_dice_train_mode": round(dice_of(logits.detach(), y), 4)})
            print(json.dumps(curve[-1]), flush=True)
    result = {"trainer": args.trainer, "network_kwargs": kwargs, "lr": recipe.lr, "optimizer": recipe.optimizer,
              "images": cases, "steps": args.steps, "seconds": round(time.time() - t0, 1), "curve": curve}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
