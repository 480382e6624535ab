"""The trainer of the real-SLURM tests (tests/test_slurm_cluster.py); nnU-Net finds it because the
tests list this folder in ``nnUNet_extTrainer``."""
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class SlurmTimeLimitTrainer(nnUNetTrainer):
    """nnU-Net's trainer, with ``checkpoint_latest.pth`` written after every epoch, that outlives a
    SLURM time limit on demand: in the first attempt of a SLURM job (``SLURM_RESTART_COUNT`` unset
    or 0) of a fold listed in ``BUS_NNUNET_TEST_SLOW_FOLDS`` (e.g. ``1,2``) it sleeps after its
    first epoch until SLURM ends the attempt.  A requeued attempt trains on at nnU-Net's speed."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.save_every = 1

    def on_epoch_end(self):
        super().on_epoch_end()  # writes checkpoint_latest.pth, then counts the epoch
        slow = str(self.fold) in os.environ.get("BUS_NNUNET_TEST_SLOW_FOLDS", "").split(",")
        if slow and self.current_epoch == 1 and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            self.print_to_log_file("test hook: sleeping until SLURM's time limit ends this attempt")
            time.sleep(900)
