"""``bus-nnunet uncertainty``: per-pixel entropy, mutual information and fold disagreement from
the probabilities of several models (e.g. one prediction folder per fold, written with
``nnUNetv2_predict -f k --save_probabilities``). Writes ``<case>_entropy.png``,
``<case>_disagreement.png`` (0-255 = 0-1), ``<case>_uncertainty.npy`` (3, H, W: entropy, mutual
information, disagreement) and ``summary.csv`` with per-case means."""
from __future__ import annotations

import argparse


def register(subparsers):
    from bus_nnunet.io_utils import OVERWRITE_HELP
    p = subparsers.add_parser("uncertainty", help="entropy / fold-disagreement maps from saved probabilities",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", nargs="+", required=True,
                   help="folders of nnU-Net .npz probabilities, one per ensemble member (fold / trainer)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from bus_nnunet.errors import UserError
    from bus_nnunet.evaluation import folder as F
    from bus_nnunet.evaluation.uncertainty import MAP_NAMES, uncertainty_maps
    from bus_nnunet.io_utils import atomic_output_dir, atomic_write_text, check_output_free

    check_output_free(args.output, args.overwrite, "output folder", inputs=args.input, folder=True)
    members = []
    for d in args.input:
        d = Path(d)
        files = {F.case_id_of(p): p for p in sorted(d.glob("*.npz"))} if d.is_dir() else {}
        if not files:
            raise UserError(f"no .npz probabilities in {d}; predict with --save_probabilities (or train with --npz)")
        members.append(files)
    common = sorted(set.intersection(*(set(m) for m in members)))
    if not common:
        raise UserError(f"the folders {args.input} share no case; give predictions of the same images")
    skipped = sorted(set.union(*(set(m) for m in members)) - set(common))
    rows = []
    with atomic_output_dir(args.output, args.overwrite, inputs=args.input) as tmp:
        for case_id in tqdm(common, desc="uncertainty", unit="case"):
            probs = [F.read_class_probabilities(m[case_id]) for m in members]
            shapes = {p.shape for p in probs}
            if len(shapes) != 1:
                raise UserError(f"{case_id}: probability shapes differ between folders: {sorted(shapes)}")
            maps = uncertainty_maps(probs)
            stack = np.stack([maps[k] for k in MAP_NAMES])
            np.save(tmp / f"{case_id}_uncertainty.npy", stack)
            for k in ("entropy", "disagreement"):
                Image.fromarray(np.round(maps[k] * 255).astype(np.uint8)).save(tmp / f"{case_id}_{k}.png")
            lesion = maps["mean_probabilities"].argmax(0) > 0
            rows.append({"case_id": case_id, **{f"mean_{k}": float(maps[k].mean()) for k in MAP_NAMES},
                         "mean_entropy_in_lesion": float(maps["entropy"][lesion].mean()) if lesion.any() else float("nan"),
                         "uncertain_fraction": float((maps["entropy"] > 0.5).mean())})
        atomic_write_text(tmp / "summary.csv", F.rows_to_csv(rows))
    print(f"uncertainty maps of {len(common)} case(s) from {len(members)} member(s) written to {args.output}"
          + (f"; {len(skipped)} case(s) not in every folder were skipped" if skipped else ""))
    return 0
