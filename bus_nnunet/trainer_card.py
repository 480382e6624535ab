"""What a trainer will do, as data: network, optimiser, lr schedule, budget, loss, augmentation.

``bus-nnunet trainers --show NAME [--json]`` prints it.  Everything is read from the trainer class
the way nnU-Net will run it: the schedule lengths come from ``schedule_lengths()`` (recipe,
``_<N>epochs`` variant, ``BUS_NNUNET_NUM_*``), the lr from the same function the trainer's
scheduler calls, the parameter count from the network the trainer builds.
"""
from __future__ import annotations

from typing import Dict

from bus_nnunet.recipes import describe_schedule, lr_by_epoch, step_milestones

__all__ = ["trainer_card", "format_card"]

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _epoch_at(fraction: float, num_epochs: int) -> int:
    """The epoch that stands for ``fraction`` of the run (1.0 = the last epoch)."""
    return min(num_epochs - 1, round(fraction * (num_epochs - 1)))


def _optimizer(recipe) -> Dict[str, object]:
    opt = {"name": recipe.optimizer, "lr": recipe.lr, "weight_decay": recipe.weight_decay,
           "grad_clip_norm": recipe.grad_clip}
    if recipe.optimizer == "sgd":
        opt.update(momentum=recipe.momentum, nesterov=recipe.nesterov)
    else:
        opt["betas"] = list(recipe.betas)
    return opt


def trainer_card(name: str, in_channels: int = 1, num_classes: int = 2, patch_size=(256, 256)) -> Dict[str, object]:
    """The recipe of trainer ``name`` (a base trainer or a ``_<N>epochs`` variant) as a JSON-able dict."""
    from bus_nnunet import augmentation
    from bus_nnunet.profiling import build_network, count_parameters
    from bus_nnunet.registration import trainer_class
    from bus_nnunet.trainers.base import UltrasoundAugmentationMixin
    from bus_nnunet.errors import UserError

    cls = trainer_class(name)
    if not issubclass(cls, UltrasoundAugmentationMixin):
        raise UserError(f"{name} is not a bus-nnunet trainer; `bus-nnunet trainers` lists them")
    recipe = cls.recipe
    lengths = cls.schedule_lengths()
    num_epochs, iterations = lengths["num_epochs"][0], lengths["num_iterations_per_epoch"][0]
    lrs = lr_by_epoch(recipe, num_epochs)
    if getattr(cls, "network_name", None):  # as the trainer does with the plan's patch
        from bus_nnunet.network_architectures import snap_patch_size
        patch_size = snap_patch_size(cls.network_name, tuple(patch_size))
    net, net_description = build_network(name, in_channels, num_classes, patch_size, deep_supervision=False)
    total, trainable = count_parameters(net)
    steps = num_epochs * iterations
    budget = {"num_epochs": num_epochs, "num_epochs_from": lengths["num_epochs"][1],
              "iterations_per_epoch": iterations, "iterations_per_epoch_from": lengths["num_iterations_per_epoch"][1],
              "val_iterations_per_epoch": lengths["num_val_iterations_per_epoch"][0],
              "optimizer_steps": steps, "paper": None}
    if recipe.paper_budget is not None:
        pb = recipe.paper_budget
        budget["paper"] = {"epochs": pb.epochs, "train_images": pb.train_images, "batch_size": pb.batch_size,
                           "batches_per_epoch": pb.batches_per_epoch, "optimizer_steps": pb.steps,
                           "arithmetic": pb.arithmetic(), "source": pb.source,
                           "ours_over_paper": round(steps / pb.steps, 2)}
    us = cls.ultrasound_augmentation
    return {
        "trainer": name,
        "base_trainer": next(c.__name__ for c in cls.__mro__ if c.__dict__.get("variant_num_epochs") is None),
        "network": {"name": getattr(cls, "network_name", None) or "PlainConvUNet",
                    "kwargs": {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in getattr(cls, "network_kwargs", {}).items()},
                    "built_as": net_description, "in_channels": in_channels, "num_classes": num_classes,
                    "patch_size": list(patch_size), "parameters": total, "trainable_parameters": trainable},
        "optimizer": _optimizer(recipe),
        "lr_schedule": {"description": describe_schedule(recipe),
                        "lr_at_fraction": {f"{f:.0%}": {"epoch": _epoch_at(f, num_epochs),
                                                        "lr": lrs[_epoch_at(f, num_epochs)]} for f in FRACTIONS},
                        "changes_at_epochs": [m for m in step_milestones(recipe, num_epochs) if m < num_epochs]},
        "num_epochs": num_epochs,
        "lr_by_epoch": lrs,
        "budget": budget,
        "loss": cls.loss_terms(),
        "classification": classification_card(cls),
        "deep_supervision": cls.deep_supervision_description(),
        "augmentation": (f"ultrasound: rotation +-{augmentation.US_MAX_ROTATION_DEG:g} deg, lateral mirroring only, "
                         "speckle / gain / depth attenuation, on top of nnU-Net's intensity and scaling transforms"
                         if us else "nnU-Net's default (mirroring on every axis, rotation +-180 deg)"),
        "test_time_mirroring_axes": list(augmentation.US_MIRROR_AXES) if us else "nnU-Net's (every axis)",
        "pretrained_weights_env": cls.pretrained_weights_envs(),
        "pretrained_weights": pretrained_state(cls),
    }


def classification_card(cls):
    """The class head and loss of a classifying trainer (``<Trainer>_Cls*``, ACSNet); None otherwise."""
    task = cls.recipe.classification
    if task is None:
        return None
    return {"head": cls.classifier_description(), "dropout": task.dropout,
            "lambda": None if task.weighting == "uncertainty" else task.weight,
            "weighting": task.weighting, "class_weights": task.class_weights, "loss": task.describe(),
            "classes": "from the dataset's manifest.csv: benign, malignant, and normal when a training case is "
                       "normal (saved in the model's plans.json)"}


def pretrained_state(cls) -> list:
    """Where each pretrained part of ``cls`` gets its weights now (``bus_nnunet.weights.resolve``)."""
    from bus_nnunet.weights import resolve
    return [{"weights": part.weights, "slot": part.slot, "env": env, "state": r.state, "path": r.path,
             "sha256": r.sha256, "uses": r.describe()}
            for part, env in cls.pretrained_sources() for r in [resolve(part.weights, env)]]


def format_card(card: Dict[str, object]) -> str:
    b, net, opt, sched = card["budget"], card["network"], card["optimizer"], card["lr_schedule"]
    opt_text = ", ".join(f"{k} {v}" for k, v in opt.items() if k != "name")
    lines = [f"{card['trainer']}" + (f" (variant of {card['base_trainer']})" if card["base_trainer"] != card["trainer"]
                                     else ""),
             f"  network          {net['name']} {net['kwargs'] or ''}".rstrip(),
             f"                   {net['parameters']:,} parameters ({net['trainable_parameters']:,} trainable) "
             f"for {net['in_channels']} input channel(s), {net['num_classes']} classes, {net['built_as']}",
             f"  optimizer        {opt['name']}: {opt_text}",
             f"  lr schedule      {sched['description']}",
             "  lr at            " + ", ".join(f"{k} (epoch {v['epoch']}): {v['lr']:.3g}"
                                               for k, v in sched["lr_at_fraction"].items())]
    if sched["changes_at_epochs"]:
        lines.append(f"  lr changes at    epochs {sched['changes_at_epochs']}")
    lines += [f"  epochs           {b['num_epochs']} ({b['num_epochs_from']}) x {b['iterations_per_epoch']} iterations "
              f"({b['iterations_per_epoch_from']}) = {b['optimizer_steps']:,} optimizer steps; "
              f"{b['val_iterations_per_epoch']} validation iterations per epoch"]
    if b["paper"]:
        p = b["paper"]
        lines.append(f"  paper's budget   {p['arithmetic']} ({p['source']}); ours is {p['ours_over_paper']}x")
    else:
        lines.append("  paper's budget   - (nnU-Net's own schedule)")
    lines.append("  loss             " + " + ".join(f"{t['weight']:g} x {t['term']}" for t in card["loss"]
                                                      if "weight" in t))
    lines += [f"                   {t['note']}" for t in card["loss"] if "note" in t]
    task = card.get("classification")
    if task:
        lines += [f"  classification   weighting {task['weighting']}, lambda "
                  f"{task['lambda'] if task['lambda'] is not None else '- (learned)'}, class weights "
                  f"{task['class_weights']}; head: {task['head']}"
                  + (f" (dropout {task['dropout']:g})" if task['head'].startswith("global") else ""),
                  f"                   classes {task['classes']}"]
    lines += [f"  deep supervision {card['deep_supervision']}",
              f"  augmentation     {card['augmentation']}",
              f"  test-time mirror axes {card['test_time_mirroring_axes']}"]
    pretrained = card["pretrained_weights"]
    lines += [f"  {'pretrained' if i == 0 else '':<16} {(p['slot'] + ' ') if p['slot'] else ''}{p['weights']}: "
              f"{p['uses']} (override: ${p['env']})" for i, p in enumerate(pretrained)] or ["  pretrained       none"]
    return "\n".join(lines)
