"""ACSNet as an nnU-Net trainer: joint lesion segmentation and benign/malignant classification.

nnU-Net trains segmentation only, so this trainer adds the classification task around it:

* **Labels** come from the dataset's ``manifest.csv`` (``bus_nnunet.manifest``; ``$BUS_NNUNET_MANIFEST``
  overrides its location): benign = 0, malignant = 1, and normal = 2 only if some training case
  (imagesTr) is normal.  The class names are stored in the model's ``plans.json``
  (configuration key ``classification_classes``) so that inference rebuilds the same head.
* **Loss**: segmentation loss and classification cross-entropy, combined by learnable
  uncertainty weights ``0.5/sigma_t^2 * L_t + log(1 + sigma_t^2)`` (released code's
  ``AutomaticWeightedLoss``).  The weighting is bounded below only for task losses >= 0, so the
  segmentation loss is nnU-Net's Dice + CE with the Dice term as ``1 - Dice`` (nnU-Net's own is
  ``-Dice``, which lets sigma_seg -> 0 drive the loss to -inf).  The released code uses soft Dice
  alone (``1 - Dice``); the CE term is nnU-Net's addition.  The two sigmas are parameters of the
  network (``loss_weighting``), so the optimiser trains them and ``--c`` resumes them.
* **Monitoring**: every epoch, accuracy / sensitivity / specificity / F1 / ROC AUC of the
  validation patches (malignant vs rest) go to the log and to the progress logger
  (``val_cls_*`` keys).  The validation loss nnU-Net logs is the segmentation loss only.
* **Final validation** (also with ``--val``): after nnU-Net's segmentation validation, each
  validation case's whole preprocessed image (zero-padded to a multiple of 32, lateral mirroring
  averaged) is classified, and ``fold_k/validation/classification.csv``
  (``case_id,true_class,p_benign,p_malignant[,p_normal],predicted_class``) plus
  ``classification_summary.json`` are written.  ``bus-nnunet classify`` does the same for new images.

Recipe (reference ``Train_Seg_Cls_5.py``): Adam (lr 1e-4, L2 weight decay 1e-4, on the network and
the two loss weights), cosine from 1e-4 to 1e-5 over 90 epochs (nnU-Net epochs of 250 iterations,
so longer than the paper's 90 passes over ~520 images).  No deep supervision (single output).

Pretrained encoder: timm's ``resnet18.tv_in1k`` (torchvision's ImageNet ResNet-18, as the released code)
from the shared cache (``bus-nnunet weights fetch resnet18.tv_in1k``); ``BUS_NNUNET_RESNET18`` overrides
it with a local torchvision or timm ResNet-18 state dict.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.errors import UserError
from bus_nnunet.recipes import PaperBudget, Recipe
from bus_nnunet.trainers.base import BusNetworkTrainer, TrainerSetupError, unwrap_network

__all__ = ["ACSNetTrainer"]

CLASS_ORDER = ("benign", "malignant", "normal")
CLASSES_KEY = "classification_classes"  # == bus_nnunet.classification_inference.PLANS_CLASSES_KEY
LOGGED_METRICS = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def classification_labels(manifest_path, case_ids: Sequence[str]) -> Tuple[List[str], Dict[str, int]]:
    """Class names and ``case_id -> class index`` for ``case_ids`` from a manifest.

    benign = 0, malignant = 1, and normal = 2 only if one of ``case_ids`` is normal.  A UserError
    names the manifest and the case when a case has no class or an unknown one.
    """
    from bus_nnunet.manifest import case_classes
    classes = case_classes(manifest_path)
    missing = [c for c in case_ids if c not in classes]
    if missing:
        raise UserError(f"manifest {manifest_path} gives no class for training case {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; ACSNet needs benign/malignant(/normal) for every training case: fill the 'class' "
                          "column or point BUS_NNUNET_MANIFEST at a manifest that has it")
    unknown = sorted({classes[c] for c in case_ids} - set(CLASS_ORDER))
    if unknown:
        case = next(c for c in case_ids if classes[c] == unknown[0])
        raise UserError(f"manifest {manifest_path}: case {case!r} has class {unknown[0]!r}; "
                        f"ACSNet knows {', '.join(CLASS_ORDER)}")
    names = ["benign", "malignant"] + (["normal"] if any(classes[c] == "normal" for c in case_ids) else [])
    return names, {c: names.index(classes[c]) for c in case_ids}


class ACSNetTrainer(BusNetworkTrainer):
    """ACSNet (ResNet-18, gate units, deformable spatial attention, classification branch)."""

    network_name = "acsnet"
    network_description = "ACSNet: segmentation + benign/malignant classification (ResNet-18 encoder)"
    recipe = Recipe(optimizer="adam", lr=1e-4, weight_decay=1e-4, schedule="cosine", min_lr=1e-5, num_epochs=90,
                    ce_weight=1.0, dice_weight=1.0,
                    paper_budget=PaperBudget(90, 518, 8, "released Train_Seg_Cls_5.py: 5-fold CV of BUSI's 647 "
                                                         "lesion images, batch 8, 90 epochs"))
    deep_supervision = False
    nonnegative_loss = True  # the uncertainty weighting is unbounded below for a negative task loss
    pretrained_env = "BUS_NNUNET_RESNET18"
    # torchvision's deform_conv2d is an opaque custom op for the compiler; eager mode is the tested path
    allow_compile = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        from bus_nnunet.manifest import find_manifest
        try:
            self.manifest_path = find_manifest(self.plans_manager.dataset_name, must_exist=True)
            self.class_names, self.case_labels = classification_labels(self.manifest_path,
                                                                       self._training_case_ids())
        except UserError as e:  # one line from nnUNetv2_train, not a traceback
            raise TrainerSetupError(f"{type(self).__name__}: {e}") from None
        # saved with the model's plans.json: inference rebuilds the same classification head
        self.set_configuration_entry(CLASSES_KEY, list(self.class_names))
        counts = {n: sum(v == i for v in self.case_labels.values()) for i, n in enumerate(self.class_names)}
        self.print_to_log_file(f"classification labels from {self.manifest_path}: {counts}")

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
        from bus_nnunet.classification_inference import classes_from_configuration
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                      num_output_channels, enable_deep_supervision)
        network.reset_classifier(len(classes_from_configuration(configuration_manager.configuration)))
        return network

    @classmethod
    def loss_terms(cls):
        seg = " + ".join(f"{t['weight']:g} x {t['term']}" for t in super().loss_terms())
        return [{"term": f"(segmentation: {seg})", "weight": 1.0},
                {"term": "classification cross-entropy", "weight": 1.0},
                {"note": "the two task losses combined by learnable uncertainty weights "
                         "0.5/sigma_t^2 * L_t + log(1 + sigma_t^2) (sigma trained with the network, init 1)"}]

    # -- training ------------------------------------------------------------------------------------
    def _labels_of(self, keys) -> torch.Tensor:
        try:
            return torch.tensor([self.case_labels[str(k)] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise UserError(f"manifest {self.manifest_path} gives no class for case {e.args[0]!r}") from None

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = ([t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list)
                  else target.to(self.device, non_blocking=True))
        labels = self._labels_of(batch["keys"]).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast_context():
            seg, class_logits = self.network(data, return_classification=True)
            seg_loss = self.loss(seg, target)
            cls_loss = F.cross_entropy(class_logits.float(), labels)
            loss = unwrap_network(self.network).loss_weighting(seg_loss, cls_loss)
        self.backward_and_step(loss)
        return {"loss": loss.detach().cpu().numpy(), "seg_loss": seg_loss.detach().cpu().numpy(),
                "cls_loss": cls_loss.detach().cpu().numpy()}

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        weighting = unwrap_network(self.network).loss_weighting
        sigma = weighting.sigma.detach().cpu().numpy()
        self.print_to_log_file(f"train seg loss {np.mean([o['seg_loss'] for o in train_outputs]):.4f}, "
                               f"cls loss {np.mean([o['cls_loss'] for o in train_outputs]):.4f}, "
                               f"loss weights sigma {np.round(sigma, 4).tolist()} "
                               f"(factors 0.5/sigma^2 {np.round(weighting.task_weights().cpu().numpy(), 3).tolist()})")

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
        from bus_nnunet.classification_inference import summarize_classification
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
        """Classify every validation case of this fold; write ``validation/classification.csv`` and
        ``classification_summary.json``. Returns the CSV path."""
        from bus_nnunet.classification_inference import (class_probabilities, summarize_classification,
                                                          write_classification_csv)
        from bus_nnunet.io_utils import atomic_write_json
        _, val_keys = self.do_split()
        val_keys = sorted(val_keys)
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        network = unwrap_network(self.network)
        network.eval()
        probs = []
        for key in val_keys:
            data = dataset.load_case(key)[0][:]
            probs.append(class_probabilities(network, data, self.device, self.inference_allowed_mirroring_axes,
                                             network.size_divisor))
        probs = np.array(probs).reshape(len(val_keys), len(self.class_names))
        folder = os.path.join(self.output_folder, "validation")
        csv_path = os.path.join(folder, "classification.csv")
        write_classification_csv(csv_path, val_keys, probs, self.class_names,
                                 {k: self.class_names[self.case_labels[k]] for k in val_keys})
        metrics = summarize_classification([self.case_labels[k] for k in val_keys], probs, self.class_names)
        atomic_write_json(os.path.join(folder, "classification_summary.json"),
                          {"class_names": list(self.class_names), "input": "whole image, zero-padded to a multiple "
                           f"of {network.size_divisor}, mirroring axes {list(self.inference_allowed_mirroring_axes)}",
                           "malignant_vs_rest": metrics})
        self.print_to_log_file(f"validation classification ({len(val_keys)} cases): " +
                               ", ".join(f"{k} {metrics[k]:.4f}" for k in LOGGED_METRICS) + f" -> {csv_path}")
        return csv_path

