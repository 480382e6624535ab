"""``bus-nnunet classify``: image-level class probabilities from a multi-task model (ACSNet).

Images are preprocessed exactly as nnU-Net preprocesses them for this model (its plans), each
whole image is classified (zero-padded to the network's size divisor, lateral mirroring
averaged) and the probabilities are averaged over the folds.  Segmentations of the same images
come from ``nnUNetv2_predict`` as usual."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify", help="benign/malignant probabilities of images with a trained ACSNet model",
        description="Classify every image of a folder (nnU-Net raw naming, CASE_0000.png) with a trained "
                    "multi-task model; write case_id,true_class,p_<class>...,predicted_class to a CSV.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="folder of images (CASE_0000.png ...)")
    p.add_argument("-m", "--model", required=True,
                   help="trained model folder (nnUNet_results/DatasetXXX/<Trainer>__<Plans>__<configuration>)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to average (default: every fold folder with the checkpoint); 'all' for fold_all")
    p.add_argument("-o", "--output", required=True, help="output CSV file")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name in each fold")
    p.add_argument("--manifest", default=None, help="optional manifest.csv to fill the true_class column")
    p.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda", "mps"), help="device")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args) -> int:
    from bus_nnunet.classification_inference import classify_images, write_classification_csv
    from bus_nnunet.errors import UserError
    from bus_nnunet.io_utils import check_output_free

    check_output_free(args.output, args.overwrite, "output file")
    folds = None
    if args.folds is not None:
        try:
            folds = [f if f == "all" else int(f) for f in args.folds]
        except ValueError:
            raise UserError(f"-f takes fold numbers or 'all', got {args.folds}") from None
    case_ids, probabilities, class_names = classify_images(args.input, args.model, folds, args.checkpoint,
                                                           args.device)
    true_classes = None
    if args.manifest:
        from bus_nnunet.manifest import case_classes
        true_classes = case_classes(args.manifest)
    write_classification_csv(args.output, case_ids, probabilities, class_names, true_classes)
    counts = {c: int(sum(probabilities[i].argmax() == k for i in range(len(case_ids))))
              for k, c in enumerate(class_names)}
    print(f"classified {len(case_ids)} images -> {args.output} (predicted: {counts})")
    return 0
