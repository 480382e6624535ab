"""``bus-nnunet classify``: image-level class probabilities from a classifying model (ACSNet, any
``<Trainer>_Cls*`` variant).

Images are read as ``bus-nnunet predict`` reads them (PNG, JPEG, BMP, TIFF in any mode, converted
to the model's channels as the converters converted the training images), preprocessed exactly
as nnU-Net preprocesses them for this model (its plans), each whole image is classified
(zero-padded to the network's size divisor, lateral mirroring averaged) and the probabilities are
averaged over the folds; several models (-m A -m B [--weights 2 1]) are averaged (weighted) after
that, all of them classifying into the same classes.  Segmentations of the same images come from ``bus-nnunet predict``.
A file that cannot be read is named and skipped (exit status 1); the others are classified."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from bus_nnunet.commands.predict import add_model_arguments
    p = subparsers.add_parser(
        "classify", help="benign/malignant probabilities of images with a classifying model (ACSNet, <Trainer>_Cls*)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, nargs="+", help="image files and/or folders of images")
    add_model_arguments(p, "folds to average (default: every fold with the checkpoint); 'all' for fold_all")
    p.add_argument("-o", "--output", required=True,
                   help="output CSV file: case_id,true_class,p_<class>...,predicted_class")
    p.add_argument("--manifest", default=None, help="optional manifest.csv to fill the true_class column")
    p.add_argument("--recursive", action="store_true", help="also read images in sub-folders of -i folders")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.inference.classification import classify_images, write_classification_csv
    from bus_nnunet.io_utils import check_output_free
    from bus_nnunet.inference.segmentation import parse_folds
    from bus_nnunet.inference.images import files_message

    check_output_free(args.output, args.overwrite, "output file", inputs=[*args.input, *args.model])
    names, probabilities, class_names, skipped, ignored = classify_images(
        args.input, args.model, parse_folds(args.folds), args.checkpoint, args.device, args.recursive,
        not args.no_progress, weights=args.weights)
    true_classes = None
    if args.manifest:
        from bus_nnunet.manifest import case_classes
        true_classes = case_classes(args.manifest)
    write_classification_csv(args.output, names, probabilities, class_names, true_classes)
    counts = {c: int((probabilities.argmax(1) == k).sum()) for k, c in enumerate(class_names)}
    print(f"classified {len(names)} images -> {args.output} (predicted: {counts})")
    for message in (files_message(skipped, "image(s) skipped, not classified"),
                    files_message(ignored, "file(s) ignored (not images)")):
        if message:
            print(message)
    return 1 if skipped else 0
