"""nnU-Net's own auto-configured U-Net with ultrasound-aware augmentation: the fair baseline."""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from bus_nnunet.trainers.base import UltrasoundAugmentationMixin

__all__ = ["nnUNetTrainerUS"]


class nnUNetTrainerUS(UltrasoundAugmentationMixin, nnUNetTrainer):
    """nnU-Net's PlainConvUNet from the plans, nnU-Net's recipe, ultrasound augmentation and
    lateral-only test-time mirroring. Compare every network against this and ``nnUNetTrainer``."""

    network_description = "nnU-Net PlainConvUNet from the plans"
