"""Base classes every bus-nnunet trainer extends.

* :class:`UltrasoundAugmentationMixin` -- B-mode-aware augmentation and test-time mirroring
  (lateral mirroring only, rotation <= 15 degrees, speckle / gain / depth attenuation), plus
  schedule overrides for smoke runs.
* :class:`BusNetworkTrainer` -- plugs a network from ``bus_nnunet.network_architectures`` into
  nnU-Net: builds it from the plan (input channels, classes, patch size snapped to what the
  network accepts), handles deep supervision for single- and multi-output networks, and applies
  the paper's optimiser / schedule / loss recipe.  A network trainer is a few class attributes::

      class SSNetTrainer(BusNetworkTrainer):
          network_name = "ssnet"
          recipe = Recipe(optimizer="adamw", lr=1e-4, weight_decay=1e-2, schedule="cosine")

Pretrained weights (``bus_nnunet.weights``): a trainer with ``pretrained_env`` loads its network's
registered ImageNet weights from that variable's file, else from the shared cache, else warns and
trains from scratch; ``BUS_NNUNET_PRETRAINED=none`` trains from scratch on purpose.

Schedule overrides (environment, for CPU smoke runs; logged when used):
``BUS_NNUNET_NUM_EPOCHS``, ``BUS_NNUNET_NUM_ITERATIONS`` (per epoch),
``BUS_NNUNET_NUM_VAL_ITERATIONS``, read and checked once by :func:`bus_nnunet.schedule.schedule_overrides` (also for
nnU-Net's own trainers, by ``bus_nnunet.study.budget_train``).

Schedule variants: every trainer also exists as ``<Trainer>_1epoch``, ``_5epochs``,
``_100epochs`` and ``_250epochs`` (nnU-Net's naming).  They are made with ``type()`` by
``_add_schedule_variants`` in ``bus_nnunet/trainers/__init__.py`` (they only set
``variant_num_epochs``), so no file defines them; ``bus-nnunet trainers --variants`` lists them.

Deep supervision is an extension point: a network that registers ``deep_supervision_strides``
returns one output per stride when built with ``deep_supervision=True`` and is trained with
nnU-Net's ``DeepSupervisionWrapper`` (weights ``deep_supervision_weights``).  None of the bundled
networks has auxiliary outputs; the test network of ``tests/test_foundation.py`` exercises it.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch._dynamo import OptimizedModule

from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from bus_nnunet import augmentation
from bus_nnunet.errors import UserError
from bus_nnunet.network_architectures import create_model, model_info, snap_patch_size
from bus_nnunet.schedule import NNUNET_SCHEDULE_DEFAULTS, schedule_overrides
from bus_nnunet.recipes import NNUNET_RECIPE, EpochLRScheduler, Recipe, build_optimizer

__all__ = ["UltrasoundAugmentationMixin", "BusNetworkTrainer", "OneMinusDiceLoss", "unwrap_network",
           "segmentation_network", "TrainerSetupError"]


class TrainerSetupError(UserError, SystemExit):
    """An input or setting that stops a trainer before it trains (missing manifest, broken cached weights).

    A UserError for callers in Python; also a SystemExit, because nnU-Net's ``nnUNetv2_train`` catches
    nothing: Python then prints the message alone on stderr and exits with status 1, where any other
    exception would bury the message at the end of a traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = message  # what Python prints for an uncaught SystemExit


class OneMinusDiceLoss(nn.Module):
    """nnU-Net's Dice + CE with the Dice term as ``w * (1 - Dice)`` (>= 0) instead of ``-w * Dice``.

    nnU-Net's soft Dice loss returns -Dice (in [-1, 0]), so its compound loss goes negative once
    Dice exceeds the cross-entropy; adding the Dice weight gives the papers' 1 - Dice form.  Only
    the value moves: gradients are identical.
    """

    def __init__(self, loss: nn.Module, dice_weight: float):
        super().__init__()
        self.loss, self.dice_weight = loss, float(dice_weight)

    def forward(self, output, target):
        return self.loss(output, target) + self.dice_weight


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def segmentation_network(network: nn.Module) -> nn.Module:
    """The segmentation network behind DDP, torch.compile and a classifying variant's head
    (``trainers.classification.ClassifyingNetwork``): what deep supervision and pretrained
    weights act on."""
    network = unwrap_network(network)
    return getattr(network, "segmentation_network", network)


class AtomicCheckpointMixin:
    """nnU-Net checkpoints written whole or not at all, and an unreadable one named on ``--c``.

    nnU-Net's ``torch.save`` straight to ``checkpoint_latest.pth`` leaves a truncated file when the
    run is killed mid-write, after which ``--c`` dies in the zip reader.  Here the checkpoint goes
    to a hidden sibling, is fsynced and renamed over the old one, so the file on disk is always
    the previous or the new checkpoint.
    """

    def save_checkpoint(self, filename: str) -> None:
        from bus_nnunet.io_utils import remove_stale_partials
        target = os.path.abspath(filename)
        folder, name = os.path.split(target)
        remove_stale_partials(target, log=self.print_to_log_file)  # what a killed run left
        tmp = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        try:
            super().save_checkpoint(tmp)
            if os.path.exists(tmp):  # not on ranks > 0 or with checkpointing disabled
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str) and not _whole_zip(filename_or_checkpoint):
            folder = os.path.dirname(os.path.abspath(filename_or_checkpoint))
            others = [n for n in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
                      if n != os.path.basename(filename_or_checkpoint) and os.path.isfile(os.path.join(folder, n))]
            fallback = (f"delete it and --c resumes from {others[0]}" if others else
                        "delete it and train again without --c (no other checkpoint in that folder)")
            raise RuntimeError(f"checkpoint {filename_or_checkpoint} cannot be read (not a whole torch.save zip "
                               f"archive); it was probably cut short by a kill while it was written: {fallback}")
        super().load_checkpoint(filename_or_checkpoint)


def _whole_zip(path: str) -> bool:
    """Whether torch.save's zip archive ends in its central directory, which a write cut short never
    reaches (reading only the directory, not the checkpoint); checked before nnU-Net's loader,
    whose error would be a zip-reader traceback."""
    import zipfile
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


class UltrasoundAugmentationMixin(AtomicCheckpointMixin):
    """Ultrasound-aware augmentation for any nnU-Net trainer (put it first in the bases)."""

    #: False gives nnU-Net's own augmentation (both-axis mirroring, +-180 degree rotation).
    ultrasound_augmentation: bool = True
    #: set by the generated ``<Trainer>_<N>epochs`` variants
    variant_num_epochs: Optional[int] = None
    #: the training recipe (nnU-Net's own unless a subclass states its paper's)
    recipe: Recipe = NNUNET_RECIPE
    #: report the Dice term as dice_weight * (1 - Dice) >= 0 instead of nnU-Net's -Dice (same gradients);
    #: needed where the loss feeds something that is only valid for losses >= 0 (uncertainty weighting)
    nonnegative_loss: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._apply_schedule_lengths()

    @classmethod
    def schedule_lengths(cls) -> Dict[str, Tuple[int, str]]:
        """``attr -> (value, where it comes from)`` for epochs, iterations and validation iterations:
        nnU-Net's default, then the recipe, then a ``_<N>epochs`` variant, then the environment."""
        lengths = {attr: (value, "nnU-Net default") for attr, value in NNUNET_SCHEDULE_DEFAULTS.items()}
        if cls.recipe.num_epochs:
            lengths["num_epochs"] = (cls.recipe.num_epochs, "recipe")
        if cls.variant_num_epochs:
            lengths["num_epochs"] = (cls.variant_num_epochs, f"variant {cls.__name__}")
        lengths.update(schedule_overrides())
        return lengths

    # -- what the trainer will do, for `bus-nnunet trainers --show` --------------------------------
    @classmethod
    def loss_terms(cls) -> List[Dict[str, object]]:
        """The loss as ``[{"term": ..., "weight": ...}, {"note": ...}]``."""
        r = cls.recipe
        dice = "soft Dice as 1 - Dice (>= 0)" if getattr(cls, "nonnegative_loss", False) else \
            "soft Dice as nnU-Net's -Dice"
        return [t for t in ({"term": "cross-entropy", "weight": r.ce_weight}, {"term": dice, "weight": r.dice_weight})
                if t["weight"]]

    @classmethod
    def deep_supervision_description(cls) -> str:
        return "on: nnU-Net's, one output per decoder stage, weights 1/2^i (lowest resolution 0), normalised"

    @classmethod
    def pretrained_sources(cls) -> List[Tuple[object, str]]:
        """``(PretrainedPart, override variable)`` per part of the network with ImageNet weights."""
        return []

    @classmethod
    def pretrained_weights_envs(cls) -> List[str]:
        return [env for _, env in cls.pretrained_sources()]

    def _apply_schedule_lengths(self):
        for attr, (value, source) in self.schedule_lengths().items():
            setattr(self, attr, value)
            if source.startswith("BUS_NNUNET_"):
                self.print_to_log_file(f"{source}: {attr} overridden (smoke-run setting)")

    def set_configuration_entry(self, key: str, value) -> None:
        """Set ``key`` in this run's configuration and in the plans saved with the model
        (``plans.json`` in the results folder), so inference sees what training used."""
        self.configuration_manager.configuration[key] = value
        self.plans_manager.plans["configurations"][self.configuration_name][key] = value

    def _build_loss(self):
        """nnU-Net's loss (its trainers'), reported >= 0 with ``nonnegative_loss``."""
        return self.nonnegative(super()._build_loss())

    def nonnegative(self, loss: nn.Module) -> nn.Module:
        """``loss`` with the Dice term as ``1 - Dice`` when ``nonnegative_loss`` is set. Outside nnU-Net's
        deep supervision wrapper too: its weights sum to 1, so the offset is the same."""
        return OneMinusDiceLoss(loss, self.recipe.dice_weight) if self.nonnegative_loss else loss

    def autocast_context(self):
        """nnU-Net's mixed precision: autocast on CUDA only (CPU autocast is slow, MPS unsupported)."""
        return torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else contextlib.nullcontext()

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """Backward pass, gradient clipping at ``recipe.grad_clip`` (nnU-Net's 12 in its own recipe) and
        optimiser step, AMP-aware as nnU-Net's ``train_step``."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.recipe.grad_clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.recipe.grad_clip)
            self.optimizer.step()

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        if not self.ultrasound_augmentation or len(self.configuration_manager.patch_size) != 2:
            return super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        patch_size = self.configuration_manager.patch_size
        rotation = augmentation.us_rotation_range()
        mirror_axes = augmentation.US_MIRROR_AXES
        initial_patch_size = get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25))
        self.print_to_log_file(f"ultrasound augmentation: rotation +-{augmentation.US_MAX_ROTATION_DEG:g} deg, "
                               f"mirroring axes {mirror_axes} (lateral only, also at test time)")
        self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, False, initial_patch_size, mirror_axes

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, *args, **kwargs):
        # nnU-Net calls this through the instance, so it may be a plain method here.
        compose = nnUNetTrainer.get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales,
                                                        mirror_axes, do_dummy_2d_data_aug, *args, **kwargs)
        if self.ultrasound_augmentation and len(patch_size) == 2:
            from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
            from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
            names = [type(t).__name__ for t in compose.transforms]
            # intensity transforms go after nnU-Net's intensity block, before mirroring/label clean-up
            anchor = next((i for i, t in enumerate(compose.transforms)
                           if isinstance(t, (MirrorTransform, RemoveLabelTansform))), len(names))
            compose.transforms[anchor:anchor] = augmentation.ultrasound_intensity_transforms()
        return compose


class BusNetworkTrainer(UltrasoundAugmentationMixin, nnUNetTrainer):
    """nnU-Net trainer for a network registered in ``bus_nnunet.network_architectures``."""

    #: registry name of the network (``bus_nnunet.network_architectures.list_models()``)
    network_name: str = None
    #: extra keyword arguments for the network's entry point
    network_kwargs: dict = {}
    #: the paper's optimiser, schedule, loss weights and budget
    recipe: Recipe = NNUNET_RECIPE
    #: train with the network's auxiliary outputs if it has any (registry deep_supervision_strides)
    deep_supervision: bool = True
    #: per-output loss weights for deep supervision (highest resolution first); None = 1/2**i, normalised
    deep_supervision_weights: Optional[Sequence[float]] = None
    #: environment variable naming a local checkpoint that overrides the cached ImageNet weights
    #: (``bus_nnunet.weights``); None: the trainer loads none (its paper trained from scratch)
    pretrained_env: Optional[str] = None
    #: whether nnU-Net may torch.compile the network on CUDA
    allow_compile: bool = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.network_name is None:
            raise TypeError(f"{type(self).__name__} must set network_name")
        info = model_info(self.network_name)
        self.initial_lr = self.recipe.lr
        self.weight_decay = self.recipe.weight_decay
        self.enable_deep_supervision = bool(self.deep_supervision and info.deep_supervision_strides)
        self._resolve_pretrained()
        self._snap_patch_size()
        self.print_to_log_file(f"{type(self).__name__}: network {self.network_name!r}, recipe {self.recipe}, "
                               f"deep supervision {self.enable_deep_supervision}")

    # -- plan handling ------------------------------------------------------------------------------
    def _snap_patch_size(self):
        """Make the plan's patch size one the network accepts, in the plans saved with the model
        too, so sliding-window inference feeds the network the tiles it was trained on."""
        old = tuple(int(s) for s in self.configuration_manager.patch_size)
        new = snap_patch_size(self.network_name, old)
        if new != old:
            self.set_configuration_entry("patch_size", list(new))
            self.print_to_log_file(f"patch size {list(old)} -> {list(new)} (what {self.network_name} accepts)")

    # -- network -------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """Build the network; nnU-Net calls this for training and, with DS off, for inference."""
        patch_size = tuple(int(s) for s in configuration_manager.patch_size)
        accepted = snap_patch_size(cls.network_name, patch_size)
        if accepted != patch_size:
            raise ValueError(
                f"{cls.__name__}: the plans give patch size {list(patch_size)}, which {cls.network_name} cannot "
                f"take (nearest accepted: {list(accepted)}). Models trained by {cls.__name__} save the snapped "
                f"size in their plans.json; use that plans.json, or set the configuration's patch_size.")
        return cls.create_network(num_input_channels, num_output_channels, enable_deep_supervision, patch_size)

    @classmethod
    def create_network(cls, num_input_channels: int, num_output_channels: int, enable_deep_supervision: bool,
                       patch_size: Optional[Tuple[int, ...]] = None) -> nn.Module:
        info = model_info(cls.network_name)
        kwargs = dict(cls.network_kwargs)
        if info.takes_input_size and patch_size is not None:
            kwargs["input_size"] = tuple(patch_size)
        ds = bool(enable_deep_supervision and cls.deep_supervision and info.deep_supervision_strides)
        return create_model(cls.network_name, in_channels=num_input_channels, num_classes=num_output_channels,
                            deep_supervision=ds, **kwargs)

    @classmethod
    def deep_supervision_description(cls) -> str:
        strides = model_info(cls.network_name).deep_supervision_strides
        if not (cls.deep_supervision and strides):
            return "off" + ("" if strides else " (single-output network)")
        n = len(strides)
        weights = np.array(cls.deep_supervision_weights if cls.deep_supervision_weights is not None
                           else [1 / 2 ** i for i in range(n)], dtype=float)
        return (f"on: outputs at strides {list(strides)}, loss weights "
                f"{np.round(weights / weights.sum(), 3).tolist()}")

    def set_deep_supervision_enabled(self, enabled: bool):
        mod = segmentation_network(self.network)
        if hasattr(mod, "deep_supervision"):
            mod.deep_supervision = bool(enabled and self.enable_deep_supervision)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        dim = len(self.configuration_manager.patch_size)
        return [[1.0 / s] * dim for s in model_info(self.network_name).deep_supervision_strides]

    def _do_i_compile(self):
        return self.allow_compile and super()._do_i_compile()

    # -- recipe --------------------------------------------------------------------------------------
    def _build_loss(self):
        """Dice + cross-entropy weighted by the recipe.  For two classes, softmax cross-entropy equals
        the papers' BCE on the sigmoid of the logit difference, so "BCE" recipes map to ce_weight."""
        r = self.recipe
        if self.label_manager.has_regions:
            loss = DC_and_BCE_loss({}, {"batch_dice": self.configuration_manager.batch_dice, "do_bg": True,
                                        "smooth": 1e-5, "ddp": self.is_ddp},
                                   weight_ce=r.ce_weight, weight_dice=r.dice_weight,
                                   use_ignore_label=self.label_manager.ignore_label is not None,
                                   dice_class=MemoryEfficientSoftDiceLoss)
        else:
            loss = DC_and_CE_loss({"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                                   "do_bg": False, "ddp": self.is_ddp}, {},
                                  weight_ce=r.ce_weight, weight_dice=r.dice_weight,
                                  ignore_label=self.label_manager.ignore_label, dice_class=MemoryEfficientSoftDiceLoss)
        loss = self.nonnegative(loss)
        if self.enable_deep_supervision:
            n = len(self._get_deep_supervision_scales())
            weights = np.array(self.deep_supervision_weights if self.deep_supervision_weights is not None
                               else [1 / 2 ** i for i in range(n)], dtype=float)
            if len(weights) != n:
                raise ValueError(f"{type(self).__name__}: {len(weights)} deep supervision weights for {n} outputs")
            if self.is_ddp:  # as nnU-Net does: a 0-weighted head would get no gradient, which DDP rejects
                weights[weights == 0] = 1e-6
            loss = DeepSupervisionWrapper(loss, weights / weights.sum())
        return loss

    def configure_optimizers(self):
        # frozen parameters stay out of the optimiser (no Adam state, no weight decay)
        optimizer = build_optimizer(self.recipe, [p for p in self.network.parameters() if p.requires_grad])
        return optimizer, EpochLRScheduler(optimizer, self.recipe, self.num_epochs)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step, with the recipe's gradient-clipping norm (nnU-Net hard-codes 12)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            loss = self.loss(self.network(data), target)
        self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy()}

    # -- pretrained weights (bus_nnunet.weights: env variable > cache > from scratch) ----------------
    @classmethod
    def pretrained_sources(cls) -> List[Tuple[object, str]]:
        if not cls.network_name or not cls.pretrained_env:
            return []
        parts = model_info(cls.network_name).pretrained
        if len(parts) != 1:
            raise TypeError(f"{cls.__name__}: {cls.network_name} has {len(parts)} pretrained parts; "
                            f"override pretrained_sources() to give each its variable")
        return [(parts[0], cls.pretrained_env)]

    def _resolve_pretrained(self):
        """Decide, before training starts, where each pretrained part's weights come from; log it
        (a warning naming the fetch command when they are missing) and refuse broken settings."""
        from bus_nnunet import weights
        self.pretrained_resolutions = [(part, weights.resolve(part.weights, env)) for part, env in
                                       self.pretrained_sources()]
        problems = [r.problem for _, r in self.pretrained_resolutions if r.problem]
        if problems:
            raise TrainerSetupError(f"{type(self).__name__}: " + "\n".join(problems))
        missing = [r for _, r in self.pretrained_resolutions if r.state == "missing"]
        if missing:
            self.print_to_log_file("\n" + weights.missing_warning(type(self).__name__, missing) + "\n")
        for part, r in self.pretrained_resolutions:
            if r.state != "missing":
                self.print_to_log_file(f"{type(self).__name__}: pretrained {part.slot + ' ' if part.slot else ''}"
                                       f"{part.weights}: {r.describe()}")

    def initialize(self):
        super().initialize()
        self._maybe_load_pretrained()

    def _maybe_load_pretrained(self):
        network = segmentation_network(self.network)
        for part, r in self.pretrained_resolutions:
            if r.path is None:
                continue
            report = self.load_pretrained_weights(network, r.path, part,
                                                  r.env if r.state == "file" else f"cached {part.weights}")
            self.print_to_log_file(f"{type(self).__name__}: pretrained {part.slot + ' ' if part.slot else ''}"
                                   f"weights from {r.path} ({r.state}): {report}")
            self.print_to_log_file(f"{type(self).__name__}: {_check_loaded(part, network, r.path)}")

    def load_pretrained_weights(self, network: nn.Module, path: str, part=None, label: Optional[str] = None):
        """Load ``path`` into ``network`` through the network's registered loader (the one loading
        path, ``network_architectures._pretrained``); returns the report. A checkpoint that does not
        fit raises an error that starts with ``label`` (default: the trainer's variable)."""
        from bus_nnunet.network_architectures._pretrained import PretrainedMismatchError
        part = part or model_info(self.network_name).pretrained[0]
        try:
            return str(part.load(network, path))
        except PretrainedMismatchError as e:
            raise PretrainedMismatchError(f"{label or self.pretrained_env}={path}: {e}") from None


def _check_loaded(part, network: nn.Module, path: str) -> str:
    """Evidence for the log that ``network`` holds the checkpoint's tensors: load ``path`` again into
    a perturbed copy and compare every tensor that load wrote with ``network``'s."""
    import copy
    probe = copy.deepcopy(network)
    with torch.no_grad():
        for t in probe.state_dict().values():
            if t.is_floating_point():
                t.add_(1.0)  # a tensor the load does not write keeps this offset
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    part.load(probe, path)
    after, ours = probe.state_dict(), network.state_dict()
    written = [k for k in after if not torch.equal(after[k], before[k])]
    differ = [k for k in written if not torch.equal(after[k], ours[k])]
    if not written or differ:
        raise RuntimeError(f"pretrained check failed: {len(differ)} of {len(written)} loaded tensors differ from "
                           f"{path} after initialisation (first: {differ[:3]})")
    return (f"checked: after initialisation all {len(written)} tensors loaded from {os.path.basename(path)} equal "
            f"the network's")
