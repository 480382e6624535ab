"""``bus-nnunet predict``: lesion masks for the images users have (PNG, JPEG, BMP, TIFF; grey,
RGB, RGBA, palette or 16-bit), converted to the model's channels as the converters converted the
training images, segmented by nnU-Net's predictor with its mirroring and fold ensemble.

Writes ``OUT/masks/<name>.png`` (label values 0/1), ``OUT/masks_255/<name>.png`` (0/255, for
viewing) and ``OUT/summary.csv`` (every file: predicted, skipped with the reason, or ignored).
Several models (-m A -m B [--weights 2 1]) are ensembled: each over its folds with mirroring as
one model is, then their softmax probabilities averaged (weighted); summary.csv then gives each
model's foreground pixels and their mean pairwise Dice (agreement).
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
    """-m / --weights / -f / -chk / -device, shared by the commands that run trained models on images."""
    p.add_argument("-m", "--model", required=True, action="extend", nargs="+", metavar="MODEL",
                   help="trained model folder (nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>); "
                        "several (-m A -m B, or -m A B) are ensembled: any trainers and plans trained on the "
                        "same labels and input channels, each over its folds, their probabilities averaged")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="one positive weight per -m model, in order (default: equal); the ensemble is the "
                        "weighted mean of the models' probabilities, normalised by the sum of the weights")
    p.add_argument("-f", "--folds", nargs="+", default=None, help=folds_help + " (of every model)")
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
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write probabilities/<name>.npz: the (ensemble's) softmax as nnU-Net saves it, "
                        "for bus-nnunet evaluate --probabilities and bus-nnunet uncertainty")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write uncertainty/<name>_entropy.png and _disagreement.png (0..255 = 0..1): the "
                        "entropy of the ensemble's probabilities and the fraction of models disagreeing with it")
    p.add_argument("--recursive", action="store_true", help="also read images in sub-folders of -i folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.inference.segmentation import parse_folds, predict_images
    from bus_nnunet.inference.images import files_message
    result = predict_images(args.input, args.model, args.output, weights=args.weights, folds=parse_folds(args.folds),
                            checkpoint=args.checkpoint, device=args.device, use_mirroring=not args.disable_tta,
                            step_size=args.step_size, recursive=args.recursive, overwrite=args.overwrite,
                            progress=not args.no_progress, save_probabilities=args.save_probabilities,
                            uncertainty=args.uncertainty)
    print(f"predicted {len(result['predicted'])} image(s) -> {args.output}/masks (0/1) and masks_255 (0/255); "
          f"every file's status in {args.output}/summary.csv")
    for message in (files_message(result["skipped"], "image(s) skipped, not predicted"),
                    files_message(result["ignored"], "file(s) ignored (not images)")):
        if message:
            print(message)
    return 1 if result["skipped"] else 0
