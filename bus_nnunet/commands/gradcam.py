"""``bus-nnunet gradcam``: Grad-CAM heatmaps of a trained nnU-Net model over the lesion class.

Images are read as ``bus-nnunet predict`` reads them (PNG, JPEG, BMP, TIFF in any mode,
converted to the model's channels) and preprocessed exactly as nnU-Net does for that model; for
each image the output folder receives ``<case>_gradcam.png`` (overlay), ``<case>_cam.npy`` (the map in [0, 1],
original image size) and ``<case>_mask.png`` (the model's lesion prediction, 0/255).  A file
that cannot be read is named and skipped (exit status 1)."""
from __future__ import annotations

import argparse


def register(subparsers):
    from bus_nnunet.io_utils import OVERWRITE_HELP
    p = subparsers.add_parser("gradcam", help="Grad-CAM lesion heatmaps of a trained model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", help="nnU-Net model folder (.../<trainer>__<plans>__<configuration>)")
    p.add_argument("-i", "--input", nargs="+", help="image files and/or folders of images")
    p.add_argument("-o", "--output", help="output folder")
    p.add_argument("-f", "--fold", default="0", help="fold whose checkpoint to explain (default 0; 'all' allowed)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--layer", help="module name of the target layer (default: the last convolution at the "
                                   "finest resolution, i.e. the final decoder features; see --list-layers)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the convolutions the network runs at its patch size (name, output shape) and exit")
    p.add_argument("--label", type=int, default=1, help="segmentation class to explain (default 1 = lesion)")
    p.add_argument("--recursive", action="store_true", help="also read images in sub-folders of -i folders")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    from PIL import Image

    from bus_nnunet.inference import images as U
    from bus_nnunet.errors import UserError
    from bus_nnunet.evaluation import gradcam as G
    from bus_nnunet.io_utils import atomic_output_dir, check_output_free

    if args.list_layers:
        return list_layers(G.load_predictor(args.model_folder, args.fold, args.checkpoint))
    if not args.input or not args.output:
        raise UserError("gradcam needs -i IMAGES and -o OUTPUT (or --list-layers)")
    inputs = [args.model_folder, *args.input]
    check_output_free(args.output, args.overwrite, "output folder", inputs=inputs, folder=True)
    images, ignored = U.collect_images(args.input, args.recursive)
    U.require_some(images, ignored, args.input)
    predictor = G.load_predictor(args.model_folder, args.fold, args.checkpoint)
    rgb = U.model_wants_rgb(predictor.dataset_json, args.model_folder)
    U.require_natural_image_model(predictor.configuration_manager, args.model_folder)
    layer, done, skipped = args.layer, 0, []
    with atomic_output_dir(args.output, args.overwrite, inputs=inputs) as tmp:
        for image, data in U.read_all(images, rgb, skipped, desc="Grad-CAM"):
            heat, mask, original, layer = G.gradcam_case(predictor, data, args.label, layer)
            stem = tmp / image.name
            stem.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(G.overlay(original, heat)).save(f"{stem}_gradcam.png")
            np.save(f"{stem}_cam.npy", heat.astype(np.float32))
            Image.fromarray(mask.astype(np.uint8) * 255).save(f"{stem}_mask.png")
            done += 1
        if not done:
            raise UserError(U.files_message(skipped, "image(s) could not be read") + "; nothing was written")
    print(f"Grad-CAM of {done} image(s) at layer {layer!r} (label {args.label}) written to {args.output}")
    for message in (U.files_message(skipped, "image(s) skipped"),
                    U.files_message(ignored, "file(s) ignored (not images)")):
        if message:
            print(message)
    return 1 if skipped else 0


def list_layers(predictor) -> int:
    from bus_nnunet.evaluation import gradcam as G
    shape = (1, len(predictor.dataset_json["channel_names"]), *map(int, predictor.configuration_manager.patch_size))
    heads = predictor.label_manager.num_segmentation_heads
    layers = G.conv_layers(predictor.network, shape)
    default = G.default_target_layer(predictor.network, shape, heads, layers)
    for name, out in layers:
        print(f"{name:<60} {'x'.join(map(str, out[1:]))}{'   <- default' if name == default else ''}")
    return 0
