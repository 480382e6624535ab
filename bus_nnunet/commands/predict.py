"""``bus-nnunet predict``: lesion masks for the images users have (PNG, JPEG, BMP, TIFF; grey,
RGB, RGBA, palette or 16-bit), converted to the model's channels as the converters converted the
training images, segmented by nnU-Net's predictor with its mirroring and fold ensemble.

Writes ``OUT/masks/<name>.png`` (label values 0/1), ``OUT/masks_255/<name>.png`` (0/255, for
viewing) and ``OUT/summary.csv`` (every file: predicted, skipped with the reason, or ignored).
``<name>`` is the input's file name without its suffix (and without nnU-Net's ``_0000``), with
its sub-folder under ``-i`` when ``--recursive``.  Each mask is written into a hidden partial folder
beside OUT as soon as it is done; it becomes OUT when all are.  An image that needs many
sliding-window tiles is announced with the estimate and shows a progress bar over its tiles.
EXIF orientation is ignored, as the converters ignore it: masks follow the stored pixels, and
summary.csv notes each image whose viewers show it rotated or mirrored.  Exit status 0 when every image was predicted,
1 when some could not be read (the others are still written)."""
from __future__ import annotations

import argparse


def add_model_arguments(p, folds_help: str = "folds to ensemble (default: every fold with the checkpoint); "
                                             "'all' for fold_all") -> None:
    """-m / -f / -chk / -device, shared by the commands that run a trained model on images."""
    p.add_argument("-m", "--model", required=True,
                   help="trained model folder (nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help=folds_help)
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("-device", "--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="device (auto: cuda when available)")


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="segment a folder of ordinary images (PNG/JPEG/BMP/TIFF) "
                                              "with a trained model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, nargs="+", help="image files and/or folders of images")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (refused if it exists, unless --overwrite; never an input or inside one)")
    add_model_arguments(p)
    p.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (faster, as nnU-Net's flag)")
    p.add_argument("-step-size", "--step-size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch size (nnU-Net's default 0.5)")
    p.add_argument("--recursive", action="store_true", help="also read images in sub-folders of -i folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.prediction import parse_folds, predict_images
    from bus_nnunet.user_images import files_message
    result = predict_images(args.input, args.model, args.output, folds=parse_folds(args.folds),
                            checkpoint=args.checkpoint, device=args.device, use_mirroring=not args.disable_tta,
                            step_size=args.step_size, recursive=args.recursive, overwrite=args.overwrite,
                            progress=not args.no_progress)
    print(f"predicted {len(result['predicted'])} image(s) -> {args.output}/masks (0/1) and masks_255 (0/255); "
          f"every file's status in {args.output}/summary.csv")
    for message in (files_message(result["skipped"], "image(s) skipped, not predicted"),
                    files_message(result["ignored"], "file(s) ignored (not images)")):
        if message:
            print(message)
    return 1 if result["skipped"] else 0
