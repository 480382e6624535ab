"""Joint segmentation and image classification for every trainer: the classifying variants.

nnU-Net trains segmentation only.  Every bus-nnunet trainer, nnU-Net's ``nnUNetTrainer`` and any
plans (ResEnc presets included) also exist as classifying variants, made with ``type()`` in
``bus_nnunet/trainers/__init__.py`` (no file defines them):

=======================  =============================================================================
``<Trainer>_Cls``        segmentation loss + lambda x cross-entropy (``Classification()``, lambda = 1)
``<Trainer>_ClsUW``      ACSNet's learnable uncertainty weights over the two task losses (every term >= 0)
``<Trainer>_ClsBalanced`` lambda x class-weighted cross-entropy, weights ``n / (K n_k)`` of the training fold
=======================  =============================================================================

each with the schedule variants (``nnUNetTrainerUS_Cls_100epochs``).  The options live in the
recipe (:class:`bus_nnunet.recipes.Classification`), so ``bus-nnunet trainers --show`` prints them.

**Head**: global average pooling -> dropout -> linear, on the encoder's deepest feature map
(``Classification.pooling``, ``dropout``; lambda = 1 and average pooling measured there):

* nnU-Net's U-Nets from the plans (``PlainConvUNet``, ``ResidualEncoderUNet``, ``ResidualUNet`` of
  dynamic-network-architectures): the network's own ``encoder`` returns every stage's output, the
  last one goes to the head and all of them to the network's ``decoder`` (its ``forward``, in two
  calls); no forward hook, so torch.compile sees plain code;
* registry networks: a forward hook on the submodule the network registers as
  ``deepest_features`` (``network_architectures/_registry.py``); a network without it gets no
  variant.

The network, head (and uncertainty weights) are one module, :class:`ClassifyingNetwork`, whose
``forward(x)`` returns the segmentation logits only: nnU-Net's prediction, mirroring, ``--val``,
ensembling and ``bus-nnunet predict`` stay as they are.  Its state dict holds the head, and the
class names go into the model's ``plans.json`` (``inference.classification.PLANS_CLASSES_KEY``), so
inference rebuilds the same head.

**Classes** come from the dataset's ``manifest.csv`` (:func:`bus_nnunet.manifest.classification_labels`:
benign, malignant, and normal when a training case is normal); a dataset without them stops
before training with one line naming the manifest and the cases.

**Validation** (also ``--val``) writes ``fold_k/validation/classification.csv`` and
``classification_summary.json``; ``bus-nnunet classify`` classifies new images with any
classifying model.  ACSNet (its own classification branch) shares all of this through
:class:`ClassifyingTrainerMixin`.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.errors import UserError
from bus_nnunet.recipes import CLASSIFICATION_POOLINGS
from bus_nnunet.trainers.base import TrainerSetupError, unwrap_network

__all__ = ["ClassificationHead", "ClassifyingNetwork", "ClassifyingTrainerMixin", "PlansUNetClassifyingMixin",
           "RegistryNetworkClassifyingMixin", "combine_task_losses", "classifying_mixin_for", "LOGGED_METRICS"]

LOGGED_METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


class ClassificationHead(nn.Module):
    """Global pooling -> dropout -> linear: ``(B, C, *spatial)`` -> ``(B, num_classes)`` logits.
    ``pooling="avg"``: the spatial mean; ``"avgmax"``: mean and max concatenated (2C features)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, pooling: str = "avg"):
        super().__init__()
        if pooling not in CLASSIFICATION_POOLINGS:
            raise ValueError(f"pooling={pooling!r}: one of {CLASSIFICATION_POOLINGS}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(in_channels * (2 if pooling == "avgmax" else 1), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.flatten(2)
        pooled = flat.mean(-1) if self.pooling == "avg" else torch.cat([flat.mean(-1), flat.amax(-1)], 1)
        return self.fc(self.dropout(pooled))


class _FeatureTap:
    """Forward hook keeping one submodule's output (or first input) until :meth:`take`."""

    def __init__(self, module: nn.Module, use_input: bool):
        self.use_input, self.value = use_input, None
        if use_input:
            module.register_forward_pre_hook(self._keep_input)
        else:
            module.register_forward_hook(self._keep_output)

    def _keep_input(self, module, args):
        self.value = args[0]

    def _keep_output(self, module, args, output):
        self.value = output

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None  # no reference to activations between calls
        if not isinstance(value, torch.Tensor) or value.ndim < 3:
            raise RuntimeError(f"the deepest-features hook got {type(value).__name__} "
                               f"{tuple(getattr(value, 'shape', ()))}, not a (B, C, H, W) feature map")
        return value


class ClassifyingNetwork(nn.Module):
    """A segmentation network with a class head on its deepest encoder features.

    ``forward(x)`` -> segmentation output (what nnU-Net sees); ``forward(x, return_classification=True)``
    -> ``(segmentation, class logits)``; :meth:`forward_classification` -> class logits.  Either
    ``features="encoder"`` (dynamic-network-architectures U-Nets: ``network.encoder`` returns the
    stages, ``network.decoder`` takes them) or ``features="<submodule>[:input]"`` (a hook).

    Geometry for whole-image classification (``inference.classification.class_probabilities``):
    ``size_divisor`` per spatial axis, ``min_size``, and ``input_size`` when the network only takes
    one size.  ``loss_weighting`` (ACSNet's uncertainty weights) when the recipe asks for it.
    """

    def __init__(self, network: nn.Module, num_classes: int, features: str, in_channels: int,
                 probe_size: Sequence[int], dropout: float = 0.0, pooling: str = "avg",
                 size_divisor: Sequence[int] = (32, 32),
                 min_size: int = 32, input_size: Optional[Sequence[int]] = None,
                 uncertainty_weighting: bool = False):
        super().__init__()
        self.network = network
        self.features = features
        self.size_divisor = tuple(int(d) for d in size_divisor)
        self.min_size = int(min_size)
        self.input_size = tuple(input_size) if input_size else None
        self._tap = None
        if features == "encoder":
            channels = int(network.encoder.output_channels[-1])
        else:
            name, _, where = features.partition(":")
            self._tap = _FeatureTap(network.get_submodule(name), use_input=where == "input")
            channels = self._probe_channels(in_channels, probe_size)
        self.classifier = ClassificationHead(channels, num_classes, dropout, pooling)
        if uncertainty_weighting:
            from bus_nnunet.network_architectures.acsnet import UncertaintyLossWeighting
            self.loss_weighting = UncertaintyLossWeighting(2)

    @property
    def segmentation_network(self) -> nn.Module:
        return self.network

    def _probe_channels(self, in_channels: int, size: Sequence[int]) -> int:
        """Channels of the tapped features, from one forward pass of a zero image (eval mode, no grad)."""
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                self.network(torch.zeros(1, in_channels, *size))
        finally:
            self.network.train(was_training)
        return int(self._tap.take().shape[1])

    def _segment(self, x: torch.Tensor) -> Tuple[object, torch.Tensor]:
        if self._tap is None:
            skips = self.network.encoder(x)
            return self.network.decoder(skips), skips[-1]
        seg = self.network(x)
        return seg, self._tap.take()

    def forward(self, x: torch.Tensor, return_classification: bool = False):
        if not return_classification:
            seg = self.network(x)
            if self._tap is not None:
                self._tap.value = None  # nnU-Net's prediction keeps no feature map alive
            return seg
        seg, features = self._segment(x)
        return seg, self.classifier(features)

    def forward_classification(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits only (the encoder alone for nnU-Net's U-Nets)."""
        if self._tap is None:
            return self.classifier(self.network.encoder(x)[-1])
        return self.forward(x, return_classification=True)[1]


def _pooling_words(task) -> str:
    return "global average pooling" if task.pooling == "avg" else "global average + max pooling"


def combine_task_losses(task, network: nn.Module, seg_loss: torch.Tensor, cls_loss: torch.Tensor) -> torch.Tensor:
    """The training loss of ``task`` (:class:`bus_nnunet.recipes.Classification`): ``seg + lambda x cls``, or
    the network's ``loss_weighting`` (ACSNet's uncertainty weights, which refuse a negative task loss)."""
    if task.weighting == "uncertainty":
        return unwrap_network(network).loss_weighting(seg_loss, cls_loss)
    return seg_loss + task.weight * cls_loss


class ClassifyingTrainerMixin:
    """Image classification beside nnU-Net's segmentation training (put it first in the bases).

    Needs ``recipe.classification`` (:class:`bus_nnunet.recipes.Classification`); a subclass says how
    the network gets its class output in :meth:`add_classifier`.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        task = getattr(getattr(cls, "recipe", None), "classification", None)
        if task is not None and task.weighting == "uncertainty":
            cls.nonnegative_loss = True  # the weighting is unbounded below for a negative task loss

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.recipe.classification is None:
            raise TypeError(f"{type(self).__name__}: a classifying trainer needs recipe.classification")
        from bus_nnunet.inference.classification import PLANS_CLASSES_KEY
        from bus_nnunet.manifest import classification_labels, find_manifest
        try:
            self.manifest_path = find_manifest(self.plans_manager.dataset_name, must_exist=True)
            self.class_names, self.case_labels = classification_labels(self.manifest_path,
                                                                       self._training_case_ids())
        except UserError as e:  # one line from nnUNetv2_train, not a traceback
            raise TrainerSetupError(f"{type(self).__name__}: {e}") from None
        # saved with the model's plans.json: inference rebuilds the same classification head
        self.set_configuration_entry(PLANS_CLASSES_KEY, list(self.class_names))
        counts = {n: sum(v == i for v in self.case_labels.values()) for i, n in enumerate(self.class_names)}
        self.print_to_log_file(f"classification labels from {self.manifest_path}: {counts}; "
                               f"{self.recipe.classification.describe()}")
        self._class_weights = None

    def _training_case_ids(self) -> List[str]:
        """Every imagesTr case (all folds), so that every fold gets the same class list."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder):
            raise UserError(f"preprocessed data {folder} not found; run nnUNetv2_plan_and_preprocess first")
        return sorted(infer_dataset_class(folder).get_identifiers(folder))

    # -- network -------------------------------------------------------------------------------------
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        from bus_nnunet.inference.classification import classes_from_configuration
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, enable_deep_supervision)
        num_classes = len(classes_from_configuration(configuration_manager.configuration))
        return cls.add_classifier(network, num_classes, configuration_manager, num_input_channels)

    @classmethod
    def add_classifier(cls, network: nn.Module, num_classes: int, configuration_manager,
                       num_input_channels: int) -> nn.Module:
        """The network with a class output: ``forward(x, return_classification=True)`` and
        ``forward_classification(x)``, and ``loss_weighting`` for the uncertainty weighting."""
        raise NotImplementedError

    @classmethod
    def classifier_description(cls) -> str:
        return f"{_pooling_words(cls.recipe.classification)} -> dropout -> linear on the deepest encoder features"

    # -- loss ----------------------------------------------------------------------------------------
    @classmethod
    def loss_terms(cls):
        task = cls.recipe.classification
        seg = " + ".join(f"{t['weight']:g} x {t['term']}" for t in super().loss_terms())
        weight = 1.0 if task.weighting == "uncertainty" else task.weight
        ce = "classification cross-entropy" + (" (class-weighted, balanced)" if task.class_weights == "balanced"
                                               else "")
        notes = [{"note": task.describe()}] if task.weighting == "uncertainty" else []
        return [{"term": f"(segmentation: {seg})", "weight": 1.0}, {"term": ce, "weight": weight}, *notes]

    def class_weights(self) -> Optional[torch.Tensor]:
        """``n / (K n_k)`` over this fold's training cases (scikit-learn's "balanced"); a class without
        training cases gets 0 (it has nothing to weight).  None without class weighting."""
        if self.recipe.classification.class_weights != "balanced":
            return None
        if self._class_weights is None:
            from sklearn.utils.class_weight import compute_class_weight
            train_keys, _ = self.do_split()
            y = np.array([self.case_labels[k] for k in train_keys])
            counts = np.bincount(y, minlength=len(self.class_names))
            present = np.unique(y)
            weights = np.zeros(len(counts))
            weights[present] = compute_class_weight("balanced", classes=present, y=y)
            self._class_weights = torch.tensor(weights, dtype=torch.float32)
            self.print_to_log_file(f"class weights (training fold {self.fold}, counts "
                                   f"{dict(zip(self.class_names, counts.tolist()))}): "
                                   f"{dict(zip(self.class_names, np.round(weights, 4).tolist()))}")
        return self._class_weights.to(self.device)

    def combine_losses(self, seg_loss: torch.Tensor, cls_loss: torch.Tensor) -> torch.Tensor:
        return combine_task_losses(self.recipe.classification, self.network, seg_loss, cls_loss)

    # -- training ------------------------------------------------------------------------------------
    def _labels_of(self, keys) -> torch.Tensor:
        try:
            return torch.tensor([self.case_labels[str(k)] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise UserError(f"manifest {self.manifest_path} gives no class for case {e.args[0]!r}") from None

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step with the class loss beside the segmentation loss (AMP, clipping and
        the optimiser step as the trainer's own)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = ([t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list)
                  else target.to(self.device, non_blocking=True))
        labels = self._labels_of(batch["keys"]).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            seg, class_logits = self.network(data, return_classification=True)
            seg_loss = self.loss(seg, target)
            cls_loss = F.cross_entropy(class_logits.float(), labels, weight=self.class_weights())
            loss = self.combine_losses(seg_loss, cls_loss)
        self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy(),
                "cls_loss": cls_loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        text = (f"train seg loss {np.mean([o['seg_loss'] for o in train_outputs]):.4f}, "
                f"cls loss {np.mean([o['cls_loss'] for o in train_outputs]):.4f}")
        weighting = getattr(unwrap_network(self.network), "loss_weighting", None)
        if weighting is not None and self.recipe.classification.weighting == "uncertainty":
            text += (f", loss weights sigma {np.round(weighting.sigma.detach().cpu().numpy(), 4).tolist()} "
                     f"(factors 0.5/sigma^2 {np.round(weighting.task_weights().cpu().numpy(), 3).tolist()})")
        self.print_to_log_file(text)

    def validation_step(self, batch: dict) -> dict:
        outputs = super().validation_step(batch)
        data = batch["data"].to(self.device, non_blocking=True)
        with torch.no_grad(), self.autocast_context():
            logits = unwrap_network(self.network).forward_classification(data)
        outputs["class_probabilities"] = torch.softmax(logits.float(), 1).cpu().numpy()
        outputs["class_labels"] = self._labels_of(batch["keys"]).numpy()
        return outputs

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        probs = np.concatenate([o.pop("class_probabilities") for o in val_outputs])
        labels = np.concatenate([o.pop("class_labels") for o in val_outputs])
        super().on_validation_epoch_end(val_outputs)
        from bus_nnunet.inference.classification import summarize_classification
        metrics = summarize_classification(labels, probs, self.class_names)
        self.print_to_log_file("val classification (patches, malignant vs rest): " +
                               ", ".join(f"{k} {metrics[k]:.4f}" for k in LOGGED_METRICS))
        for k in LOGGED_METRICS:
            self._log_extra(f"val_cls_{k}", float(metrics[k]))

    def _log_extra(self, key: str, value: float):
        """Log a key nnU-Net's local logger does not know (it asserts on unknown keys)."""
        local = getattr(self.logger, "local_logger", None)
        store = getattr(local, "my_fantastic_logging", None)
        if isinstance(store, dict) and key not in store:
            store[key] = [float("nan")] * self.current_epoch  # resumed from a run without this key
        self.logger.log(key, value, self.current_epoch)

    # -- final validation ----------------------------------------------------------------------------
    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:
            self.export_validation_classification()

    def export_validation_classification(self) -> str:
        """Classify every validation case of this fold (whole image, as ``bus-nnunet classify``); write
        ``validation/classification.csv`` and ``classification_summary.json``. Returns the CSV path."""
        from bus_nnunet.inference.classification import (class_probabilities, describe_input,
                                                          summarize_classification, write_classification_csv)
        from bus_nnunet.io_utils import atomic_write_json
        _, val_keys = self.do_split()
        val_keys = sorted(val_keys)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        network = unwrap_network(self.network)
        network.eval()
        mirror_axes = self.inference_allowed_mirroring_axes
        probs = [class_probabilities(network, dataset.load_case(key)[0][:], self.device, mirror_axes)
                 for key in val_keys]
        probs = np.array(probs).reshape(len(val_keys), len(self.class_names))
        folder = os.path.join(self.output_folder, "validation")
        csv_path = os.path.join(folder, "classification.csv")
        write_classification_csv(csv_path, val_keys, probs, self.class_names,
                                 {k: self.class_names[self.case_labels[k]] for k in val_keys})
        metrics = summarize_classification([self.case_labels[k] for k in val_keys], probs, self.class_names)
        atomic_write_json(os.path.join(folder, "classification_summary.json"),
                          {"class_names": list(self.class_names), "input": describe_input(network, mirror_axes),
                           "malignant_vs_rest": metrics})
        self.print_to_log_file(f"validation classification ({len(val_keys)} cases): " +
                               ", ".join(f"{k} {metrics[k]:.4f}" for k in LOGGED_METRICS) + f" -> {csv_path}")
        return csv_path


class PlansUNetClassifyingMixin(ClassifyingTrainerMixin):
    """Classifying variant of a trainer that builds nnU-Net's U-Net from the plans (any plans:
    ``nnUNetPlans``, the ResEnc presets)."""

    #: dynamic-network-architectures U-Nets whose forward is ``decoder(encoder(x))``
    SUPPORTED = ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")

    @classmethod
    def add_classifier(cls, network, num_classes, configuration_manager, num_input_channels):
        name = type(network).__name__
        if name not in cls.SUPPORTED:
            raise TypeError(f"{cls.__name__}: the plans build {name}; classifying variants support "
                            f"dynamic-network-architectures' {', '.join(cls.SUPPORTED)}")
        divisor = np.prod(np.array(configuration_manager.pool_op_kernel_sizes), axis=0).astype(int).tolist()
        task = cls.recipe.classification
        return ClassifyingNetwork(network, num_classes, "encoder", num_input_channels, (), task.dropout,
                                  task.pooling, size_divisor=divisor, min_size=max(divisor),
                                  uncertainty_weighting=task.weighting == "uncertainty")

    @classmethod
    def classifier_description(cls) -> str:
        return f"{_pooling_words(cls.recipe.classification)} -> dropout -> linear on the U-Net encoder's last stage"

    def set_deep_supervision_enabled(self, enabled: bool):
        # nnU-Net's rule for its U-Nets, applied to the network inside the classifying wrapper
        from bus_nnunet.trainers.base import segmentation_network
        segmentation_network(self.network).decoder.deep_supervision = enabled


class RegistryNetworkClassifyingMixin(ClassifyingTrainerMixin):
    """Classifying variant of a :class:`~bus_nnunet.trainers.base.BusNetworkTrainer`: the head sits on
    the submodule the network registers as ``deepest_features``."""

    @classmethod
    def add_classifier(cls, network, num_classes, configuration_manager, num_input_channels):
        from bus_nnunet.network_architectures import model_info, snap_patch_size
        info = model_info(cls.network_name)
        if not info.deepest_features:
            raise TypeError(f"{cls.__name__}: network {cls.network_name!r} registers no deepest_features")
        patch = tuple(int(s) for s in configuration_manager.patch_size)
        fixed = info.takes_input_size or bool(info.fixed_sizes)
        # the channel probe runs once per build: the smallest input the network takes
        probe = patch if fixed else snap_patch_size(cls.network_name, (info.min_size,) * len(patch))
        task = cls.recipe.classification
        return ClassifyingNetwork(network, num_classes, info.deepest_features, num_input_channels, probe,
                                  task.dropout, task.pooling, size_divisor=(info.size_divisor,) * len(patch),
                                  min_size=info.min_size, input_size=patch if fixed else None,
                                  uncertainty_weighting=task.weighting == "uncertainty")

    @classmethod
    def classifier_description(cls) -> str:
        from bus_nnunet.network_architectures import model_info
        return (f"{_pooling_words(cls.recipe.classification)} -> dropout -> linear on {cls.network_name}'s "
                f"{model_info(cls.network_name).deepest_features!r} (registered deepest_features)")


def classifying_mixin_for(trainer: type) -> Optional[type]:
    """The classifying mixin for ``trainer``'s network, or None when it cannot get one (it classifies
    already, or its registered network names no ``deepest_features``)."""
    from bus_nnunet.trainers.base import BusNetworkTrainer
    if getattr(trainer, "recipe", None) is not None and trainer.recipe.classification is not None:
        return None
    if issubclass(trainer, BusNetworkTrainer):
        from bus_nnunet.network_architectures import model_info
        return RegistryNetworkClassifyingMixin if model_info(trainer.network_name).deepest_features else None
    return PlansUNetClassifyingMixin
