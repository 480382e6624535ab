"""ACSNet as an nnU-Net trainer: joint lesion segmentation and benign/malignant classification.

nnU-Net trains segmentation only; the classification task around it (labels from the manifest,
class names in the plans, the training step, validation metrics and
``fold_k/validation/classification.csv``, ``bus-nnunet classify``) is the one every classifying
trainer shares: :class:`bus_nnunet.trainers.classification.ClassifyingTrainerMixin`.  What is
ACSNet's own:

* **Class output**: the network's multi-scale channel-attention branch on E3, E4 and D1 (its last
  layer sized to the plans' classes), not the generic pooled head of the ``_Cls`` variants.
* **Loss**: ``Classification(weighting="uncertainty")``: segmentation loss and classification
  cross-entropy, combined by learnable uncertainty weights ``0.5/sigma_t^2 * L_t + log(1 + sigma_t^2)``
  (released code's ``AutomaticWeightedLoss``).  The weighting is bounded below only for task losses
  >= 0, so the segmentation loss is nnU-Net's Dice + CE with the Dice term as ``1 - Dice`` (nnU-Net's
  own is ``-Dice``, which lets sigma_seg -> 0 drive the loss to -inf).  The released code uses soft
  Dice alone (``1 - Dice``); the CE term is nnU-Net's addition.  The two sigmas are parameters of the
  network (``loss_weighting``), so the optimiser trains them and ``--c`` resumes them.

Recipe (reference ``Train_Seg_Cls_5.py``): Adam (lr 1e-4, L2 weight decay 1e-4, on the network and
the two loss weights), cosine from 1e-4 to 1e-5 over 90 epochs (nnU-Net epochs of 250 iterations,
so longer than the paper's 90 passes over ~520 images).  No deep supervision (single output).

Pretrained encoder: timm's ``resnet18.tv_in1k`` (torchvision's ImageNet ResNet-18, as the released code)
from the shared cache (``bus-nnunet weights fetch resnet18.tv_in1k``); ``BUS_NNUNET_RESNET18`` overrides
it with a local torchvision or timm ResNet-18 state dict.
"""
from __future__ import annotations

from torch import nn

from bus_nnunet.recipes import Classification, PaperBudget, Recipe
from bus_nnunet.trainers.base import BusNetworkTrainer
from bus_nnunet.trainers.classification import ClassifyingTrainerMixin

__all__ = ["ACSNetTrainer"]


class ACSNetTrainer(ClassifyingTrainerMixin, BusNetworkTrainer):
    """ACSNet (ResNet-18, gate units, deformable spatial attention, classification branch)."""

    network_name = "acsnet"
    network_description = "ACSNet: segmentation + benign/malignant classification (ResNet-18 encoder)"
    recipe = Recipe(optimizer="adam", lr=1e-4, weight_decay=1e-4, schedule="cosine", min_lr=1e-5, num_epochs=90,
                    ce_weight=1.0, dice_weight=1.0, classification=Classification(weighting="uncertainty"),
                    paper_budget=PaperBudget(90, 518, 8, "released Train_Seg_Cls_5.py: 5-fold CV of BUSI's 647 "
                                                         "lesion images, batch 8, 90 epochs"))
    deep_supervision = False
    pretrained_env = "BUS_NNUNET_RESNET18"
    # torchvision's deform_conv2d is an opaque custom op for the compiler; eager mode is the tested path
    allow_compile = False

    @classmethod
    def add_classifier(cls, network, num_classes, configuration_manager, num_input_channels) -> nn.Module:
        network.reset_classifier(num_classes)  # ACSNet's own branch, and its own loss_weighting
        return network

    @classmethod
    def classifier_description(cls) -> str:
        return "ACSNet's multi-scale channel-attention branch on E3, E4 and D1"
