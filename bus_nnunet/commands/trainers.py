"""``bus-nnunet trainers``: every trainer with its network and whether it can run here."""
from __future__ import annotations

import importlib.util


def register(subparsers):
    p = subparsers.add_parser("trainers", help="list bus-nnunet's nnU-Net trainers and their status")
    p.add_argument("--entry-folder", action="store_true",
                   help="print only the folder to put in nnUNet_extTrainer (for a manual export)")
    p.add_argument("--variants", action="store_true", help="also list the schedule and classifying variants")
    p.add_argument("--show", metavar="NAME", help="print what trainer NAME (or a _<N>epochs variant) will do: network, "
                                                  "optimiser, lr schedule, budget vs the paper's, loss, augmentation; "
                                                  "BUS_NNUNET_NUM_* overrides in the environment are applied")
    p.add_argument("--json", action="store_true", help="with --show: one JSON object (incl. lr_by_epoch)")
    p.set_defaults(func=run)


def trainer_rows():
    """(name, network, paper, status) for every base trainer."""
    from bus_nnunet.network_architectures import model_info
    from bus_nnunet.trainers import TRAINERS, UNAVAILABLE
    rows = []
    for name, cls in sorted(TRAINERS.items()):
        network_name = getattr(cls, "network_name", None)
        if network_name:
            info = model_info(network_name)
            missing = [r for r in info.requires if importlib.util.find_spec(r) is None]
            status = "available" if not missing else "needs " + ", ".join(missing)
            paper = info.paper
        else:
            network_name, paper, status = getattr(cls, "network_description", "nnU-Net default"), "", "available"
        notes = []
        sources = cls.pretrained_sources() if hasattr(cls, "pretrained_sources") else []
        if sources:
            notes.append("pretrained: " + ", ".join(part.weights for part, _ in sources) + " (`bus-nnunet weights list`)")
        rows.append((name, network_name, status, "; ".join(filter(None, [paper] + notes))))
    for module, error in sorted(UNAVAILABLE.items()):
        rows.append((module.rsplit(".", 1)[-1] + " (module)", "-", f"broken: {error}", ""))
    return rows


def run(args) -> int:
    from bus_nnunet.registration import trainer_entry_folder
    if args.entry_folder:
        print(trainer_entry_folder())
        return 0
    if args.show:
        import json
        from bus_nnunet.trainer_card import format_card, trainer_card
        card = trainer_card(args.show)
        print(json.dumps(card, indent=2) if args.json else format_card(card))
        return 0
    if args.json:
        from bus_nnunet.errors import UserError
        raise UserError("--json goes with --show NAME")
    from bus_nnunet.text_tables import format_table
    from bus_nnunet.trainers import CLASSIFYING, CLASSIFYING_VARIANTS, SCHEDULE_VARIANT_EPOCHS, TRAINERS, _variant_name
    rows = trainer_rows()
    print(format_table(["trainer", "network", "status", "paper / notes"], rows))
    suffixes = ", ".join(_variant_name("", e) for e in SCHEDULE_VARIANT_EPOCHS)
    print(f"\nEach trainer also has schedule variants <Trainer>{suffixes.replace(', ', ', <Trainer>')}.")
    print("Classifying variants (segmentation + benign/malignant[/normal] from the manifest; also of nnU-Net's "
          "nnUNetTrainer):\n" + "\n".join(f"  <Trainer>_{suffix:<12} {task.describe()}"
                                          for suffix, task in CLASSIFYING_VARIANTS.items())
          + "\n  each with the schedule variants (<Trainer>_Cls_100epochs); ACSNetTrainer classifies already.")
    if args.variants:
        for name in sorted(TRAINERS):
            print("  " + ", ".join(_variant_name(name, e) for e in SCHEDULE_VARIANT_EPOCHS))
        print("classifying variants:")
        for name in sorted(CLASSIFYING):
            print("  " + ", ".join([name] + [_variant_name(name, e) for e in SCHEDULE_VARIANT_EPOCHS]))
    print("Use: nnUNetv2_train DATASET 2d FOLD -tr <trainer> [-device cpu]")
    return 0
