"""``bus-nnunet convert <dataset> <source_dir>``: a public ultrasound release -> nnU-Net raw dataset.

Writes ``$nnUNet_raw/DatasetNNN_<Name>/`` (imagesTr, labelsTr, imagesTs/labelsTs where the
dataset has an official test set, dataset.json, splits_final.json, manifest.csv) atomically and
prints a summary.  See docs/datasets.md for every dataset's layout and split policy.  The options
and their defaults are those of :class:`dataset_conversion.pipeline.Options` and of each dataset's
own options (:meth:`dataset_conversion.base.DatasetInfo.add_arguments`)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from bus_nnunet.dataset_conversion import converters
    from bus_nnunet.dataset_conversion.pipeline import Options
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
    Options.add_arguments(p, helps={"dataset_id": "nnU-Net dataset id (default: " + ", ".join(
        f"{key} {info.default_id}" for key, info in infos.items()) + ")"})
    for info in infos.values():
        info.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.dataset_conversion import get_converter
    from bus_nnunet.dataset_conversion.pipeline import Options, convert

    info = get_converter(args.dataset)
    result = convert(info, Path(args.source_dir), Options.from_arguments(args, dataset_options=info.options_from(args)))
    print(result.summary)
    return 0
