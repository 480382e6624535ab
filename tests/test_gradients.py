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
registered trainer is tested without edits here.
"""
import json
from pathlib import Path

import pytest
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from bus_nnunet.trainers import TRAINERS, UNAVAILABLE
from bus_nnunet.trainers.base import unwrap_network

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
    if type(trainer)._build_loss is nnUNetTrainer._build_loss and isinstance(trainer.loss, DeepSupervisionWrapper):
        # nnU-Net's own loss weights its lowest-resolution output 0 on one GPU and, as its fix for
        # this DDP failure, 1e-6 under DDP: train with the DDP weights
        trainer.loss.weight_factors = tuple(w if w else 1e-6 for w in trainer.loss.weight_factors)
    return trainer


@pytest.mark.parametrize("trainer_name", CASES)
def test_train_step_gives_every_trainable_parameter_a_gradient(trainer_name, planned_dataset, tmp_path,
                                                               monkeypatch):
    torch.manual_seed(0)
    trainer = _trainer(TRAINERS[trainer_name], planned_dataset, tmp_path, monkeypatch)
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
