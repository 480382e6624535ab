"""``bus-nnunet gradcam``: Grad-CAM heatmaps of a trained nnU-Net model over the lesion class.

Images are read and preprocessed exactly as nnU-Net does for that model; for each case the
output folder receives ``<case>_gradcam.png`` (overlay), ``<case>_cam.npy`` (the map in [0, 1],
original image size) and ``<case>_mask.png`` (the model's lesion prediction)."""
from __future__ import annotations

import argparse


def register(subparsers):
    p = subparsers.add_parser("gradcam", help="Grad-CAM lesion heatmaps of a trained model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", help="nnU-Net model folder (.../<trainer>__<plans>__<configuration>)")
    p.add_argument("-i", "--input", nargs="+",
                   help="image files or folders named <case>_0000.png (as for nnUNetv2_predict)")
    p.add_argument("-o", "--output", help="output folder")
    p.add_argument("-f", "--fold", default="0", help="fold whose checkpoint to explain (default 0; 'all' allowed)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--layer", help="module name of the target layer (default: the last convolution at the "
                                   "finest resolution, i.e. the final decoder features; see --list-layers)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the convolutions the network runs at its patch size (name, output shape) and exit")
    p.add_argument("--label", type=int, default=1, help="segmentation class to explain (default 1 = lesion)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from bus_nnunet.evaluation import gradcam as G
    from bus_nnunet.io_utils import atomic_output_dir, check_output_free

    from bus_nnunet.errors import UserError
    if args.list_layers:
        return list_layers(G.load_predictor(args.model_folder, args.fold, args.checkpoint))
    if not args.input or not args.output:
        raise UserError("gradcam needs -i IMAGES and -o OUTPUT (or --list-layers)")
    check_output_free(args.output, args.overwrite, "output folder")
    predictor = G.load_predictor(args.model_folder, args.fold, args.checkpoint)
    cases = G.group_channel_files(args.input, predictor.dataset_json["file_ending"])
    if not cases:
        raise UserError(f"no {predictor.dataset_json['file_ending']} images in {args.input}")
    layer = args.layer
    with atomic_output_dir(args.output, args.overwrite) as tmp:
        for case_id, files in tqdm(sorted(cases.items()), desc="Grad-CAM", unit="case"):
            heat, mask, image, layer = G.gradcam_case(predictor, files, args.label, layer)
            Image.fromarray(G.overlay(image, heat)).save(tmp / f"{case_id}_gradcam.png")
            np.save(tmp / f"{case_id}_cam.npy", heat.astype(np.float32))
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / f"{case_id}_mask.png")
    print(f"Grad-CAM of {len(cases)} case(s) at layer {layer!r} (label {args.label}) written to {args.output}")
    return 0


def list_layers(predictor) -> int:
    from bus_nnunet.evaluation import gradcam as G
    shape = (1, len(predictor.dataset_json["channel_names"]), *map(int, predictor.configuration_manager.patch_size))
    heads = predictor.label_manager.num_segmentation_heads
    layers = G.conv_layers(predictor.network, shape)
    default = G.default_target_layer(predictor.network, shape, heads, layers)
    for name, out in layers:
        print(f"{name:<60} {'x'.join(map(str, out[1:]))}{'   <- default' if name == default else ''}")
    return 0
