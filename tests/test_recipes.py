"""Long-run training maths: lr schedules that scale with the run, what `trainers --show` prints,
and ACSNet's uncertainty weighting bounded below -- properties that short smoke runs never test."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bus_nnunet import trainers as T
from bus_nnunet.recipes import lr_at_epoch, lr_by_epoch
from bus_nnunet.trainer_card import trainer_card
from bus_nnunet.trainers import SCHEDULE_VARIANT_EPOCHS, TRAINERS, _variant_name

BIN = Path(sys.executable).parent
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)


def cosine(hi, lo):
    return lambda t: lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * t))


def steps(lr, gamma, at):
    return lambda t: lr * gamma ** sum(t >= a for a in at)


#: each family's schedule as its trainer's docstring states it, t = epoch / epochs
STATED = {
    "nnUNetTrainerUS": lambda t: 1e-2 * (1 - t) ** 0.9,                 # nnU-Net's poly
    "ACSNetTrainer": cosine(1e-4, 1e-5),
    "SSNetTrainer": cosine(1e-4, 1e-5),
    "AnatoSegNetTrainer": steps(1e-4, 0.1, (0.4, 0.8)),                 # StepLR(20, 0.1) of 50 epochs
    "SCRNetTrainer": steps(1e-4, 0.2, (0.4, 0.8)),
    "AttentionUNetTrainer": lambda t: 1e-4,                             # constant
}
#: hand values at 0 / 25 / 50 / 75 / 100 % (the last epoch) for the step schedules
HAND = {"AnatoSegNetTrainer": [1e-4, 1e-4, 1e-5, 1e-5, 1e-6], "SCRNetTrainer": [1e-4, 1e-4, 2e-5, 2e-5, 4e-6]}


def family(cls):
    return next(name for name in STATED if any(c.__name__ == name for c in cls.__mro__))


def all_trainer_names():
    names = []
    for base in sorted(TRAINERS):
        names += [base] + [_variant_name(base, e) for e in SCHEDULE_VARIANT_EPOCHS]
    return names


@pytest.mark.parametrize("name", all_trainer_names())
def test_lr_follows_the_stated_schedule_at_every_length(name, monkeypatch):
    cls = getattr(T, name)
    stated = STATED[family(cls)]
    for env_epochs in (None, 37):  # the trainer's own length, then BUS_NNUNET_NUM_EPOCHS
        if env_epochs:
            monkeypatch.setenv("BUS_NNUNET_NUM_EPOCHS", str(env_epochs))
        n = cls.schedule_lengths()["num_epochs"][0]
        assert n == (env_epochs or cls.variant_num_epochs or cls.recipe.num_epochs or 1000)
        lrs = lr_by_epoch(cls.recipe, n)
        assert lrs == pytest.approx([stated(e / n) for e in range(n)], rel=1e-9, abs=1e-12)
        if n >= 5 and family(cls) in HAND:  # at 0/25/50/75/100 % of any run >= 5 epochs
            points = [lrs[min(n - 1, round(f * (n - 1)))] for f in FRACTIONS]
            assert points == pytest.approx(HAND[family(cls)], rel=1e-9)
        # never collapses: the last epoch keeps at least the schedule's stated floor
        assert lrs[-1] >= 0.9 * stated((n - 1) / n) and lrs[-1] > 1e-7


def test_step_schedules_keep_their_shape_in_long_variants():
    """The fault this replaces: absolute-epoch steps put AnatoSegNet_250epochs at 1e-16."""
    for base in ("AnatoSegNetTrainer", "SCRNetTrainer"):
        for epochs in (50, 100, 250, 1000):
            lrs = lr_by_epoch(TRAINERS[base].recipe, epochs)
            assert len(set(lrs)) == 3 and min(lrs) == pytest.approx(HAND[base][-1])
            assert lrs.index(min(lrs)) == int(0.8 * epochs)


def test_nnunet_defaults_match_a_real_nnunet_trainer(planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.schedule import NNUNET_SCHEDULE_DEFAULTS
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    trainer = _instance(nnUNetTrainer, planned_dataset, tmp_path, monkeypatch)
    assert {k: getattr(trainer, k) for k in NNUNET_SCHEDULE_DEFAULTS} == NNUNET_SCHEDULE_DEFAULTS


def _instance(cls, planned_dataset, tmp_path, monkeypatch):
    for k, v in planned_dataset.results_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    pre = Path(planned_dataset.env["nnUNet_preprocessed"]) / planned_dataset.raw.name
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["continue_training"] = False
    return cls(plans, "2d", 0, json.loads((pre / "dataset.json").read_text()), torch.device("cpu"))


@pytest.mark.parametrize("name", ["nnUNetTrainerUS", "SCRNetTrainer_5epochs", "ACSNetTrainer",
                                  "AttUNet_CBAM_BCE_FrozenTrainer"])
def test_card_is_what_the_real_trainer_does(name, planned_dataset, tmp_path, monkeypatch):
    """The optimiser settings, epochs and the lr of every epoch that `trainers --show` reports are
    the ones nnU-Net's training loop gets from the instantiated trainer."""
    monkeypatch.setenv("BUS_NNUNET_NUM_ITERATIONS", "7")
    card = trainer_card(name)
    trainer = _instance(getattr(T, name), planned_dataset, tmp_path, monkeypatch)
    trainer.initialize()
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (card["num_epochs"], 7)
    assert card["budget"]["optimizer_steps"] == card["num_epochs"] * 7
    group = trainer.optimizer.param_groups[0]
    assert type(trainer.optimizer).__name__.lower() == card["optimizer"]["name"]
    assert group["weight_decay"] == card["optimizer"]["weight_decay"]
    seen = []
    for epoch in range(trainer.num_epochs):
        trainer.lr_scheduler.step(epoch)  # what nnU-Net calls at each epoch start
        seen.append(trainer.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx(card["lr_by_epoch"], rel=1e-9)
    trainable = sum(p.numel() for p in trainer.network.parameters() if p.requires_grad)
    in_optimizer = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert in_optimizer == trainable  # frozen encoders stay out of the optimiser


def test_trainers_show_cli_text_and_json_with_env_override():
    env = {**__import__("os").environ, "BUS_NNUNET_NUM_EPOCHS": "10"}
    proc = subprocess.run([str(BIN / "bus-nnunet"), "trainers", "--show", "AnatoSegNetTrainer_250epochs", "--json"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    card = json.loads(proc.stdout)
    assert card["num_epochs"] == 10 and card["budget"]["num_epochs_from"] == "BUS_NNUNET_NUM_EPOCHS=10"
    assert card["lr_by_epoch"] == pytest.approx([1e-4] * 4 + [1e-5] * 4 + [1e-6] * 2)
    assert card["lr_schedule"]["changes_at_epochs"] == [4, 8]
    assert card["network"]["parameters"] == 92_851_010
    assert card["budget"]["paper"]["optimizer_steps"] == 50 * 33
    text = subprocess.run([str(BIN / "bus-nnunet"), "trainers", "--show", "SCRNetTrainer_250epochs"],
                          capture_output=True, text=True).stdout
    for fact in ("250 (variant SCRNetTrainer_250epochs) x 250 iterations", "62,500 optimizer steps",
                 "100% (epoch 249): 4e-06", "lr changes at    epochs [100, 200]", "0.5 x cross-entropy",
                 "100 x 57 = 5,700 steps", "test-time mirror axes [1]"):
        assert fact in text, (fact, text)
    bad = subprocess.run([str(BIN / "bus-nnunet"), "trainers", "--show", "SCRNetTrainr"], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "unknown trainer 'SCRNetTrainr'" in bad.stderr


def test_every_trainer_has_a_card():
    for name in sorted(TRAINERS):
        card = trainer_card(name, patch_size=(64, 64))
        assert card["num_epochs"] == len(card["lr_by_epoch"]) and card["loss"] and card["network"]["parameters"] > 0
        assert card["budget"]["paper"] is not None or name == "nnUNetTrainerUS"


# -- ACSNet's uncertainty weighting ------------------------------------------------------------------
def test_uncertainty_weighting_bounded_below_on_a_sigma_grid():
    from bus_nnunet.network_architectures.acsnet import UncertaintyLossWeighting
    weighting = UncertaintyLossWeighting(2)
    for sigma in np.logspace(-4, 3, 57):
        for seg, cls in [(0.0, 0.0), (1e-3, 0.7), (0.4, 1e-4), (2.0, 2.0)]:
            weighting.sigma.data[:] = float(sigma)
            assert weighting(torch.tensor(seg), torch.tensor(cls)).item() >= 0.0
    with pytest.raises(ValueError, match="1 - Dice"):
        weighting(torch.tensor(-0.6), torch.tensor(0.5))


def test_acsnet_segmentation_loss_keeps_sigma_finite_over_10000_steps(planned_dataset, tmp_path, monkeypatch):
    """The trainer's own segmentation loss on a near-perfect prediction (the end of a long run) is
    >= 0, and sigma optimised alone against it with the trainer's Adam settings stays away from 0.
    With nnU-Net's -Dice form (about -0.6 here) sigma went to ~0 and the weight to ~5e4."""
    trainer = _instance(T.ACSNetTrainer, planned_dataset, tmp_path, monkeypatch)
    trainer.initialize()
    target = (torch.rand(2, 1, 32, 32) > 0.5).float()
    logits = torch.cat([-4 * (2 * target - 1), 4 * (2 * target - 1)], 1)  # confident and right
    seg_loss = trainer.loss(logits, target).detach()
    assert 0 <= seg_loss.item() < 0.1
    from bus_nnunet.network_architectures.acsnet import UncertaintyLossWeighting
    weighting = UncertaintyLossWeighting(2)
    opt = torch.optim.Adam(weighting.parameters(), lr=trainer.recipe.lr, weight_decay=trainer.recipe.weight_decay)
    cls_loss = torch.tensor(0.3)
    for _ in range(10_000):
        opt.zero_grad()
        weighting(seg_loss, cls_loss).backward()
        opt.step()
    assert torch.isfinite(weighting.sigma).all()
    # the optimum 0.5 L / s^4 = 1 / (1 + s^2) is finite for L > 0: the weight stays moderate
    assert weighting.task_weights().max().item() < 100 and weighting.sigma.abs().min().item() > 0.1


def _hand_ce_and_dice(logits, target):
    """Softmax cross-entropy and the foreground soft Dice (batch Dice, smooth 1e-5), by hand."""
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    fg = logits.softmax(1)[:, 1]
    ref = (target[:, 0] == 1).float()
    return ce, (2 * (fg * ref).sum() + 1e-5) / (fg.sum() + ref.sum() + 1e-5)


@pytest.mark.parametrize("name, with_dice", [("AnatoSegNetTrainer", False), ("AnatoSegNetTrainerDiceCE", True)])
def test_anatosegnet_loss_is_the_stated_one(name, with_dice, planned_dataset, tmp_path, monkeypatch):
    """The paper's CE alone, and the Dice + CE variant that the convergence study needed (CE alone
    under-segments at short budgets): nnU-Net's loss object gives the hand-computed value."""
    trainer = _instance(getattr(T, name), planned_dataset, tmp_path, monkeypatch)
    trainer.configuration_manager.configuration["batch_dice"] = True
    loss = trainer._build_loss()
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 2, 16, 16, generator=g), (torch.rand(2, 1, 16, 16, generator=g) > 0.7).float()
    ce, dice = _hand_ce_and_dice(logits, target)
    assert float(loss(logits, target)) == pytest.approx(float(ce - dice if with_dice else ce), rel=1e-4)
    card = trainer_card(name)
    assert card["lr_by_epoch"] == trainer_card("AnatoSegNetTrainer")["lr_by_epoch"]  # only the loss differs


def test_ssnet_intended_trainer_scans_real_tiles(planned_dataset, tmp_path, monkeypatch):
    from bus_nnunet.network_architectures.ssnet import DynamicTilesScan
    monkeypatch.setenv("BUS_NNUNET_PRETRAINED", "none")
    for name, faithful in (("SSNetTrainer", True), ("SSNetTrainerIntended", False)):
        trainer = _instance(getattr(T, name), planned_dataset, tmp_path, monkeypatch)
        trainer.initialize()
        scans = [m for m in trainer.network.modules() if isinstance(m, DynamicTilesScan)]
        assert scans and all(m.faithful_tiles is faithful for m in scans)
