"""Training recipes: optimiser, learning-rate schedule, loss weights and budget of a published network.

A trainer states its paper's recipe as one :class:`Recipe`; the base trainer turns it into the
optimiser and an epoch-indexed schedule.  nnU-Net calls ``lr_scheduler.step(epoch)`` at every
epoch start and does not checkpoint the scheduler, so every schedule here is a pure function of
the epoch index: ``--c`` resumes with exactly the right learning rate.

Every schedule is expressed as a fraction of the run (steps "x0.1 at 40 % and 80 %", warm-up
"the first 5 %"), so a ``_250epochs`` variant or ``BUS_NNUNET_NUM_EPOCHS`` stretches the paper's
shape instead of decaying it to nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch

__all__ = ["PaperBudget", "Classification", "Recipe", "EpochLRScheduler", "lr_at_epoch", "lr_by_epoch", "step_milestones",
           "describe_schedule", "build_optimizer", "NNUNET_RECIPE"]


@dataclass(frozen=True)
class PaperBudget:
    """A paper's optimiser-step budget: ``epochs`` passes over ``train_images`` at ``batch_size``."""

    epochs: int
    train_images: int
    batch_size: int
    source: str = ""          # where the numbers come from (paper / released code, split)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train_images / self.batch_size)

    @property
    def steps(self) -> int:
        return self.epochs * self.batches_per_epoch

    def arithmetic(self) -> str:
        return (f"{self.epochs} epochs x ceil({self.train_images} images / batch {self.batch_size}) = "
                f"{self.epochs} x {self.batches_per_epoch} = {self.steps:,} steps")


#: how the classification loss joins the segmentation loss
CLASSIFICATION_WEIGHTINGS = ("fixed", "uncertainty")
#: class weights of the classification cross-entropy
CLASSIFICATION_CLASS_WEIGHTS = ("none", "balanced")
#: global pooling of a generic class head: average, or average and max concatenated
CLASSIFICATION_POOLINGS = ("avg", "avgmax")


@dataclass(frozen=True)
class Classification:
    """The image-level classification task of a joint trainer (``<Trainer>_Cls*``, ACSNet).

    * ``weighting="fixed"``: loss = segmentation + ``weight`` x cross-entropy (``weight`` is lambda);
    * ``weighting="uncertainty"``: ACSNet's learnable weights ``0.5/sigma_t^2 L_t + log(1 + sigma_t^2)``
      over the two task losses (``weight`` unused); the segmentation loss is then reported as
      ``1 - Dice`` so that every term stays >= 0;
    * ``class_weights="balanced"``: cross-entropy weighted by ``n / (K n_k)`` from the training
      fold's class counts (scikit-learn's ``compute_class_weight("balanced")``), for imbalanced sets;
    * ``pooling``, ``dropout``: the generic head (``<Trainer>_Cls*``) is global pooling -> dropout ->
      linear on the deepest encoder features; a network with its own classification branch (ACSNet)
      ignores both.  ``"avg"`` (default): global average pooling.  ``"avgmax"`` concatenates average
      and max pooling (fastai's AdaptiveConcatPool2d), for a subclass that wants it: nnU-Net's U-Nets
      instance-normalise every stage, so a channel's spatial mean after the norm varies little
      between images and the average-pooled head needs more steps.  Measured on the demo's data
      (64 px, nnUNetTrainerUS_Cls, batch 2, held-out AUC on 24 new cases, one value per training):

      =====  =================================  ==========================
      steps  ``"avg"``, lambda 1 / 0.3          ``"avgmax"``, lambda 1 / 0.3
      =====  =================================  ==========================
      90     0.85, 0.79 / 0.75, 0.86            0.92, 0.90 / 1.0, 1.0
      120    0.99, 1.0 / -                      -
      180    1.0, 1.0, 1.0, 1.0, 0.99, 1.0 /    1.0, 1.0 / 1.0, 1.0
             0.92, 0.79
      =====  =================================  ==========================

      lambda 0.1 left the average-pooled head unlearned at 90 steps (AUC 0.43, 0.64): the class loss
      must shape the encoder, so lambda stays 1.
    """

    weight: float = 1.0
    weighting: str = "fixed"
    class_weights: str = "none"
    pooling: str = "avg"
    dropout: float = 0.2

    def __post_init__(self):
        if self.weighting not in CLASSIFICATION_WEIGHTINGS:
            raise ValueError(f"weighting={self.weighting!r}: one of {CLASSIFICATION_WEIGHTINGS}")
        if self.class_weights not in CLASSIFICATION_CLASS_WEIGHTS:
            raise ValueError(f"class_weights={self.class_weights!r}: one of {CLASSIFICATION_CLASS_WEIGHTS}")
        if self.pooling not in CLASSIFICATION_POOLINGS:
            raise ValueError(f"pooling={self.pooling!r}: one of {CLASSIFICATION_POOLINGS}")
        if not self.weight >= 0:
            raise ValueError(f"weight={self.weight}: the classification loss weight must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: a probability in [0, 1)")

    def describe(self) -> str:
        """The classification loss in words (``bus-nnunet trainers --show``)."""
        ce = "class-weighted cross-entropy (balanced on the training fold)" if self.class_weights == "balanced" \
            else "cross-entropy"
        if self.weighting == "uncertainty":
            return (f"segmentation and classification {ce} combined by learnable uncertainty weights "
                    "0.5/sigma_t^2 * L_t + log(1 + sigma_t^2) (sigma trained with the network, init 1; "
                    "segmentation Dice as 1 - Dice so every term is >= 0)")
        return f"segmentation + {self.weight:g} x classification {ce}"


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
    step_at: Tuple[float, ...] = ()   # step: fractions of the run where lr is multiplied by step_gamma
    step_gamma: float = 0.1
    warmup_fraction: float = 0.0      # linear warm-up over this fraction of the run
    num_epochs: Optional[int] = None  # None keeps nnU-Net's 1000
    ce_weight: float = 1.0            # cross-entropy (== BCE for two softmax classes, see losses)
    dice_weight: float = 1.0
    grad_clip: float = 12.0
    paper_budget: Optional[PaperBudget] = None
    classification: Optional[Classification] = None  # set for joint segmentation + classification

    def __post_init__(self):
        if any(not 0 < f < 1 for f in self.step_at) or list(self.step_at) != sorted(self.step_at):
            raise ValueError(f"step_at={self.step_at}: increasing fractions of the run, each in (0, 1)")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={self.warmup_fraction}: a fraction of the run in [0, 1)")

    def with_(self, **changes) -> "Recipe":
        return replace(self, **changes)


#: nnU-Net's own recipe (nnUNetTrainer: SGD 1e-2, Nesterov momentum 0.99, wd 3e-5, poly 0.9, Dice + CE,
#: gradient norm clipped at 12), for describing trainers that keep it
NNUNET_RECIPE = Recipe()


def _epochs_for(fraction: float, num_epochs: int) -> int:
    """First epoch at or after ``fraction`` of the run (tolerant of float rounding: 0.4 * 50 -> 20)."""
    return math.ceil(fraction * num_epochs - 1e-9)


def step_milestones(recipe: Recipe, num_epochs: int) -> List[int]:
    """Epochs at which a step schedule multiplies the lr by ``step_gamma``."""
    return [_epochs_for(f, num_epochs) for f in recipe.step_at] if recipe.schedule == "step" else []


def lr_at_epoch(recipe: Recipe, epoch: int, num_epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based) of a ``num_epochs`` run."""
    base = recipe.lr
    warmup = _epochs_for(recipe.warmup_fraction, num_epochs) if recipe.warmup_fraction else 0
    if epoch < warmup:
        return base * (epoch + 1) / warmup
    e = epoch - warmup
    total = max(1, num_epochs - warmup)
    if recipe.schedule == "poly":
        return base * (1 - min(e, total) / total) ** recipe.poly_exponent
    if recipe.schedule == "cosine":
        return recipe.min_lr + 0.5 * (base - recipe.min_lr) * (1 + math.cos(math.pi * min(e, total) / total))
    if recipe.schedule == "step":
        return base * recipe.step_gamma ** sum(epoch >= m for m in step_milestones(recipe, num_epochs))
    if recipe.schedule == "constant":
        return base
    raise ValueError(f"unknown schedule {recipe.schedule!r} (poly, cosine, step, constant)")


def lr_by_epoch(recipe: Recipe, num_epochs: int) -> List[float]:
    return [lr_at_epoch(recipe, e, num_epochs) for e in range(num_epochs)]


def describe_schedule(recipe: Recipe) -> str:
    """The schedule in words, as a fraction of the run."""
    r = recipe
    text = {"poly": f"poly {r.lr:g} * (1 - t)^{r.poly_exponent:g}",
            "cosine": f"cosine {r.lr:g} -> {r.min_lr:g}",
            "constant": f"constant {r.lr:g}",
            "step": f"step {r.lr:g}, x{r.step_gamma:g} at " + " and ".join(f"{f:.0%}" for f in r.step_at)
            if r.step_at else f"constant {r.lr:g}"}.get(r.schedule, r.schedule)
    if r.schedule in ("poly", "cosine") or (r.schedule == "step" and r.step_at):
        text += " of the run (t = epoch / epochs)"
    if r.warmup_fraction:
        text = f"linear warm-up over the first {r.warmup_fraction:.0%} of the run, then " + text
    return text


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
