"""``bus-nnunet convert <dataset> <source_dir>``: a public ultrasound release -> nnU-Net raw dataset.

Writes ``$nnUNet_raw/DatasetNNN_<Name>/`` (imagesTr, labelsTr, imagesTs/labelsTs where the
dataset has an official test set, dataset.json, splits_final.json, manifest.csv) atomically and
prints a summary.  See docs/datasets.md for every dataset's layout and split policy."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from bus_nnunet.errors import UserError

DATASETS = ("busi", "breast", "udiat", "stu", "busis", "busbra", "tn3k", "ddti", "tg3k", "folder")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a public breast/thyroid ultrasound dataset to nnU-Net raw format",
        description="Convert a dataset in its distributed layout to $nnUNet_raw/DatasetNNN_<Name> "
                    "(grey PNG images, 0/1 labels, dataset.json, splits_final.json, manifest.csv).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", choices=DATASETS, type=str.lower, help="source dataset layout")
    p.add_argument("source_dir", help="the unzipped release (any parent of its root folder works)")
    p.add_argument("--id", type=int, default=None, dest="dataset_id",
                   help="nnU-Net dataset id (default: BUSI 501, BrEaST 502, UDIAT 503, STU 504, BUSIS 505, "
                        "BUS-BRA 506, TN3K 511, DDTI 512, TG3K 513, folder 599)")
    p.add_argument("--name", default=None, help="dataset name (DatasetNNN_<name>); default: the dataset's name")
    p.add_argument("-o", "--raw-root", default=None, help="output root (default: $nnUNet_raw)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
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
    g = p.add_argument_group("tg3k")
    g.add_argument("--official-split", action="store_true",
                   help="TG3K: use tg3k-trainval.json as the single fold (it cuts through a video: leaks)")
    g = p.add_argument_group("folder (generic images/ + masks/)")
    g.add_argument("--images-dir", default="images", help="image sub-folder of source_dir")
    g.add_argument("--masks-dir", default="masks", help="mask sub-folder of source_dir")
    g.add_argument("--mask-pattern", default="{stem}.png",
                   help="mask file name(s) for an image stem; glob characters allowed, all matches OR-merged, "
                        "e.g. '{stem}_mask*.png'")
    g.add_argument("--classes-csv", default=None, help="optional CSV with columns case (image stem), class "
                   "[, patient_id]")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.dataset_conversion import get_converter
    from bus_nnunet.dataset_conversion._common import Options, convert

    info = get_converter(args.dataset)
    raw_root = args.raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise UserError("no output root: set nnUNet_raw or pass -o/--raw-root")
    options = Options(
        dataset_id=args.dataset_id if args.dataset_id is not None else info.default_id,
        name=args.name or info.default_name, raw_root=Path(raw_root), overwrite=args.overwrite,
        keep_normal=args.keep_normal, rgb=args.rgb, folds=args.folds, seed=args.seed, dedup=args.dedup,
        dedup_distance=args.dedup_distance, test_fraction=args.test_fraction, resize_masks=args.resize_masks,
        progress=not args.no_progress,
        extra={"official_split": args.official_split, "images_dir": args.images_dir, "masks_dir": args.masks_dir,
               "mask_pattern": args.mask_pattern, "classes_csv": args.classes_csv})
    result = convert(info, Path(args.source_dir), options)
    print(result.summary)
    return 0
