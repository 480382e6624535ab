"""Every trainable parameter of every registered trainer's network gets a gradient in the trainer's
own ``train_step``.

nnU-Net's ``-num_gpus`` wraps the network in DDP with ``find_unused_parameters=False``, which fails on
the next step when a trainable parameter got no gradient in a step; a gradient that is always exactly
zero is a dead path.  Each case runs real ``train_step`` calls on CPU (the trainer's loss, deep
supervision, ACSNet's classification loss and uncertainty weights, optimiser steps) on batches from
the trainer's own data loader, and records in post-accumulate-grad hooks (so before ``zero_grad``)
which parameters the backward pass reached and which got a finite, non-zero gradient.  Every
parameter must be reached in each of at least ``MIN_STEPS`` steps (what DDP needs, also for
data-dependent paths); a non-zero value may take up to ``MAX_STEPS`` batches (dropped paths,
zero-initialised branches that open after a step).

Cases come from ``bus_nnunet.trainers.TRAINERS``: one per distinct network configuration, so a newly
registered trainer is tested without edits here.  The classifying variants (``<Trainer>_Cls*``) add a
class head (and, for ``_ClsUW``, two uncertainty weights) to the same networks: their training step
runs here for nnU-Net's U-Net with each loss option, and a cheap forward/backward on tiny tensors
covers the head of every network that has a classifying variant.
"""
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from bus_nnunet.trainers import CLASSIFYING, CLASSIFYING_VARIANTS, TRAINERS, UNAVAILABLE
from bus_nnunet.trainers.base import BusNetworkTrainer, OneMinusDiceLoss, unwrap_network

MIN_STEPS, MAX_STEPS = 2, 4


def network_config(cls) -> tuple:
    """What decides which parameters exist and which the training step reaches: the registered network
    and its arguments (or, for trainers that build nnU-Net's network from the plans, the trainer), deep
    supervision and its weights, and the trainer's own network builder, loss and training step."""
    name = getattr(cls, "network_name", None)
    network = (name, repr(sorted(getattr(cls, "network_kwargs", {}).items()))) if name else ("plans", cls.__name__)
    ds_weights = getattr(cls, "deep_supervision_weights", None)
    return (*network, getattr(cls, "deep_supervision", None), None if ds_weights is None else tuple(ds_weights),
            *(getattr(cls, f).__qualname__ for f in ("build_network_architecture", "_build_loss", "train_step")))


def _cases():
    groups = {}
    for trainer_name in sorted(TRAINERS):
        groups.setdefault(network_config(TRAINERS[trainer_name]), []).append(trainer_name)
    return [names[0] for names in groups.values()]


CASES = _cases()
#: the classifying training step with each loss option except the plain one (its path is _ClsBalanced's
#: without weights): uncertainty weights, class-weighted cross-entropy
CLASSIFYING_STEP_CASES = ["nnUNetTrainerUS_ClsUW", "nnUNetTrainerUS_ClsBalanced"]


def test_every_trainer_module_is_importable():
    assert not UNAVAILABLE, UNAVAILABLE  # a trainer module that fails to import would drop out of CASES
    assert "nnUNetTrainerUS" in CASES


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(cls, planned_dataset, tmp_path, monkeypatch):
    for k, v in planned_dataset.results_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # in-process data augmentation
    pre = Path(planned_dataset.env["nnUNet_preprocessed"]) / "Dataset990_SyntheticUS"
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False  # nnU-Net's run_training adds this key
    trainer = cls(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))
    trainer.initialize()
    loss = trainer.loss.loss if isinstance(trainer.loss, OneMinusDiceLoss) else trainer.loss
    if not isinstance(trainer, BusNetworkTrainer) and isinstance(loss, DeepSupervisionWrapper):
        # nnU-Net's own loss weights its lowest-resolution output 0 on one GPU and, as its fix for
        # this DDP failure, 1e-6 under DDP: train with the DDP weights
        loss.weight_factors = tuple(w if w else 1e-6 for w in loss.weight_factors)
    return trainer


@pytest.mark.parametrize("trainer_name", CASES + CLASSIFYING_STEP_CASES)
def test_train_step_gives_every_trainable_parameter_a_gradient(trainer_name, planned_dataset, tmp_path,
                                                               monkeypatch):
    torch.manual_seed(0)
    trainer = _trainer({**TRAINERS, **CLASSIFYING}[trainer_name], planned_dataset, tmp_path, monkeypatch)
    network = unwrap_network(trainer.network)
    trainable = {n: p for n, p in network.named_parameters() if p.requires_grad}
    assert trainable
    reached, nonzero, not_finite = set(), set(), set()

    def recorder(name):
        def hook(param):
            reached.add(name)
            if not torch.isfinite(param.grad).all():
                not_finite.add(name)
            elif param.grad.abs().max() > 0:
                nonzero.add(name)
        return hook

    handles = [p.register_post_accumulate_grad_hook(recorder(n)) for n, p in trainable.items()]
    loader, _ = trainer.get_dataloaders()  # real batches: augmentation, DS targets, case keys (ACSNet labels)
    trainer.network.train()
    steps, unreached = 0, {}
    while steps < MIN_STEPS or (steps < MAX_STEPS and len(nonzero) < len(trainable)):
        reached.clear()
        loss = trainer.train_step(next(loader))["loss"]
        assert torch.isfinite(torch.as_tensor(loss)).all()
        if len(reached) < len(trainable):
            unreached[steps] = [n for n in trainable if n not in reached]
        steps += 1
    for h in handles:
        h.remove()
    assert not unreached, f"trainable tensors without a gradient (step: names), DDP would fail: {unreached}"
    assert not not_finite, f"non-finite gradients: {sorted(not_finite)}"
    missing = [n for n in trainable if n not in nonzero]
    assert not missing, f"{len(missing)} trainable tensors got no non-zero gradient in {steps} steps: {missing}"


# -- the class head of every classifying variant ------------------------------------------------------
def _head_cases():
    """One ``_ClsUW`` variant (head + uncertainty weights) per network with classifying variants: each
    registry network, nnU-Net's plain U-Net and its ResEnc U-Net (same trainer, other plans)."""
    cases = {}
    for name, cls in sorted(CLASSIFYING.items()):
        if name.endswith("_ClsUW"):
            cases.setdefault(getattr(cls, "network_name", None) or "PlainConvUNet", name)
    cases["ResidualEncoderUNet"] = cases["PlainConvUNet"]
    return sorted(cases.items())


def test_every_trainer_has_every_classifying_variant():
    for base in [*[n for n in TRAINERS if n != "ACSNetTrainer"], "nnUNetTrainer"]:  # ACSNet classifies itself
        for suffix in CLASSIFYING_VARIANTS:
            assert f"{base}_{suffix}" in CLASSIFYING, f"{base}_{suffix}"
    assert {getattr(CLASSIFYING[n], "network_name", None) for _, n in _head_cases()} >= \
        {getattr(c, "network_name", None) for c in CLASSIFYING.values()}


class _Configuration:
    """The two fields of nnU-Net's ConfigurationManager a registry network's head needs."""

    def __init__(self, patch_size, classes):
        self.patch_size, self.configuration = list(patch_size), {"classification_classes": classes}


@pytest.mark.parametrize("network,trainer_name", _head_cases())
def test_classifying_network_gives_every_parameter_a_gradient(network, trainer_name, planned_dataset):
    """A tiny forward/backward of the variant's own network + head: every trainable tensor is reached
    (DDP), every head and loss-weight tensor gets a finite non-zero gradient, and ``forward(x)``
    stays the segmentation output alone."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from bus_nnunet.network_architectures import model_info, snap_patch_size
    from bus_nnunet.trainers.classification import combine_task_losses
    cls = CLASSIFYING[trainer_name]
    classes = ["benign", "malignant", "normal"]
    torch.manual_seed(0)
    if getattr(cls, "network_name", None):
        size = snap_patch_size(cls.network_name, (model_info(cls.network_name).min_size,) * 2)
        net = cls.build_network_architecture(None, _Configuration(size, classes), 1, 2, False)
    else:
        pre = Path(planned_dataset.env["nnUNet_preprocessed"]) / "Dataset990_SyntheticUS"
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        config = plans["configurations"]["2d"]
        config["classification_classes"] = classes
        if network == "ResidualEncoderUNet":  # nnU-Net's ResEnc presets' architecture
            kwargs = config["architecture"]["arch_kwargs"]
            kwargs["n_blocks_per_stage"] = [1] + [2] * (kwargs["n_stages"] - 1)
            kwargs.pop("n_conv_per_stage")
            config["architecture"]["network_class_name"] = \
                "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
        manager = PlansManager(plans)
        cm = manager.get_configuration("2d")
        net = cls.build_network_architecture(manager, cm, 1, 2, True)
        size = cm.patch_size
        assert type(net.segmentation_network).__name__ == network
    net.train()
    x = torch.randn(2, 1, *size)
    seg, logits = net(x, return_classification=True)
    assert logits.shape == (2, len(classes))
    outputs = seg if isinstance(seg, (list, tuple)) else [seg]  # deep supervision: every output
    seg_loss = torch.nn.functional.cross_entropy(outputs[0], torch.randint(0, 2, (2, *size))) + \
        sum(o.square().mean() for o in outputs[1:])
    cls_loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    combine_task_losses(cls.recipe.classification, net, seg_loss, cls_loss).backward()
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert not [n for n, p in trainable.items() if p.grad is None], "trainable tensors without a gradient"
    head = {n: p for n, p in trainable.items() if n.startswith(("classifier.", "loss_weighting."))}
    assert len(head) == 3  # fc.weight, fc.bias, sigma
    for n, p in head.items():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, n
    net.eval()
    if hasattr(net.segmentation_network, "decoder"):
        net.segmentation_network.decoder.deep_supervision = False  # as nnU-Net's predictor builds it
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net.segmentation_network(x))  # what nnU-Net's predictor sees
        assert torch.allclose(net.forward_classification(x), net(x, return_classification=True)[1], atol=1e-5)
