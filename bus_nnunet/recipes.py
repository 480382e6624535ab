"""Training recipes: optimiser, learning-rate schedule and loss weights of a published network.

A trainer states its paper's recipe as one :class:`Recipe`; the base trainer turns it into the
optimiser and an epoch-indexed schedule.  nnU-Net calls ``lr_scheduler.step(epoch)`` at every
epoch start and does not checkpoint the scheduler, so every schedule here is a pure function of
the epoch index: ``--c`` resumes with exactly the right learning rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import torch

__all__ = ["Recipe", "EpochLRScheduler", "lr_at_epoch", "build_optimizer"]


@dataclass(frozen=True)
class Recipe:
    optimizer: str = "sgd"            # "sgd" | "adam" | "adamw"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99            # sgd
    nesterov: bool = True             # sgd
    betas: Tuple[float, float] = (0.9, 0.999)  # adam / adamw
    schedule: str = "poly"            # "poly" | "cosine" | "step" | "constant"
    poly_exponent: float = 0.9
    min_lr: float = 0.0               # cosine floor
    step_epochs: int = 0              # step: decay every N epochs (0 = never)
    step_gamma: float = 0.1
    warmup_epochs: int = 0            # linear warm-up from lr/warmup_epochs
    num_epochs: Optional[int] = None  # None keeps nnU-Net's 1000
    ce_weight: float = 1.0            # cross-entropy (== BCE for two softmax classes, see losses)
    dice_weight: float = 1.0
    grad_clip: float = 12.0

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)


def lr_at_epoch(recipe: Recipe, epoch: int, num_epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based) of ``num_epochs``."""
    base = recipe.lr
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        return base * (epoch + 1) / recipe.warmup_epochs
    e = epoch - recipe.warmup_epochs
    total = max(1, num_epochs - recipe.warmup_epochs)
    if recipe.schedule == "poly":
        return base * (1 - min(e, total) / total) ** recipe.poly_exponent
    if recipe.schedule == "cosine":
        return recipe.min_lr + 0.5 * (base - recipe.min_lr) * (1 + math.cos(math.pi * min(e, total) / total))
    if recipe.schedule == "step":
        return base * recipe.step_gamma ** (e // recipe.step_epochs) if recipe.step_epochs else base
    if recipe.schedule == "constant":
        return base
    raise ValueError(f"unknown schedule {recipe.schedule!r} (poly, cosine, step, constant)")


class EpochLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Sets every parameter group's lr to ``lr_at_epoch(recipe, epoch)`` on ``step(epoch)``."""

    def __init__(self, optimizer, recipe: Recipe, num_epochs: int, current_step: Optional[int] = None):
        self.recipe, self.num_epochs = recipe, num_epochs
        self.ctr = 0
        super().__init__(optimizer, current_step if current_step is not None else -1)

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        lr = lr_at_epoch(self.recipe, current_step, self.num_epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self._last_lr = [lr] * len(self.optimizer.param_groups)

    def get_last_lr(self):
        return self._last_lr


def build_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    name = recipe.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(params, recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r} (sgd, adam, adamw)")
