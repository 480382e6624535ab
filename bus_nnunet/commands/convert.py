"""``bus-nnunet convert <dataset> <source_dir>``: a public ultrasound release -> nnU-Net raw dataset.

Writes ``$nnUNet_raw/DatasetNNN_<Name>/`` (imagesTr, labelsTr, imagesTs/labelsTs where the
dataset has an official test set, dataset.json, splits_final.json, manifest.csv) atomically and
prints a summary.  See docs/datasets.md for every dataset's layout and split policy."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bus_nnunet.errors import UserError



def register(subparsers) -> None:
    from bus_nnunet.io_utils import OVERWRITE_HELP
    from bus_nnunet.dataset_conversion import converters
    infos = converters()
    p = subparsers.add_parser(
        "convert", help="convert a public breast/thyroid ultrasound dataset to nnU-Net raw format",
        description="Convert a dataset in its distributed layout to $nnUNet_raw/DatasetNNN_<Name> "
                    "(grey PNG images, 0/1 labels, dataset.json, splits_final.json, manifest.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    aliases = [f"{a} = {info.key}" for info in infos.values() for a in info.aliases]
    p.add_argument("dataset", choices=[*infos, *(a for info in infos.values() for a in info.aliases)],
                   type=str.lower, metavar="dataset",
                   help=f"source dataset layout: {', '.join(infos)}" + (f" (aliases: {', '.join(aliases)})"
                                                                        if aliases else ""))
    p.add_argument("source_dir", help="the unzipped release (any parent of its root folder works)")
    p.add_argument("--id", type=int, default=None, dest="dataset_id",
                   help="nnU-Net dataset id (default: " +
                        ", ".join(f"{key} {info.default_id}" for key, info in infos.items()) + ")")
    p.add_argument("--name", default=None, help="dataset name (DatasetNNN_<name>); default: the dataset's name")
    p.add_argument("-o", "--raw-root", default=None, help="output root (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--keep-normal", action="store_true",
                   help="include normal (lesion-free) cases with empty labels; by default every dataset is "
                        "converted to its lesion cases only, as in the segmentation papers")
    p.add_argument("--rgb", action="store_true", help="write 3-channel RGB images (default: grey, channel 'US')")
    p.add_argument("--folds", type=int, default=5, help="number of cross-validation folds when the dataset has "
                   "no official folds (BUS-BRA: 5 or 10 selects its official fold file)")
    p.add_argument("--seed", type=int, default=12345, help="seed of the fold assignment (reproducible)")
    p.add_argument("--dedup", action="store_true", help="detect exact and near duplicates (pHash), keep each "
                   "duplicate group in one fold, write duplicates.csv")
    p.add_argument("--dedup-distance", type=int, default=8, help="pHash Hamming distance for near duplicates")
    p.add_argument("--test-fraction", type=float, default=0.0, help="hold out this fraction (stratified, grouped) "
                   "as imagesTs/labelsTs when the dataset has no official test set")
    p.add_argument("--resize-masks", dest="resize_masks", action="store_true", default=None,
                   help="resize masks whose size differs from their image (nearest neighbour; default only for STU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for info in infos.values():
        info.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.dataset_conversion import get_converter
    from bus_nnunet.dataset_conversion.pipeline import Options, convert

    info = get_converter(args.dataset)
    raw_root = args.raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserError("no output root: set nnUNet_raw or pass -o/--raw-root")
    options = Options(
        dataset_id=args.dataset_id if args.dataset_id is not None else info.default_id,
        name=args.name or info.default_name, raw_root=Path(raw_root), overwrite=args.overwrite,
        keep_normal=args.keep_normal, rgb=args.rgb, folds=args.folds, seed=args.seed, dedup=args.dedup,
        dedup_distance=args.dedup_distance, test_fraction=args.test_fraction, resize_masks=args.resize_masks,
        progress=not args.no_progress, dataset_options=info.options_from(args))
    result = convert(info, Path(args.source_dir), options)
    print(result.summary)
    return 0
