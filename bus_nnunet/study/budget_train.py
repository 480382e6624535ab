"""``python -m bus_nnunet.study.budget_train <nnUNetv2_train arguments>``: nnU-Net's own
``nnUNetv2_train`` with a study's [schedule] (``BUS_NNUNET_NUM_EPOCHS`` / ``_NUM_ITERATIONS`` /
``_NUM_VAL_ITERATIONS``) applied to every trainer class, nnU-Net's stock ``nnUNetTrainer``
included (bus-nnunet trainers read the variables themselves; nnU-Net's do not), so every
trainer of a smoke study gets the same budget.  ``BUS_NNUNET_TORCH_THREADS`` pins torch's CPU
threads (nnU-Net takes every core, which on a shared machine makes each op wait for a busy one).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from bus_nnunet.trainers.base import SCHEDULE_ENV


def main(argv: Sequence[str]) -> None:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    original_init = nnUNetTrainer.__init__

    # nnU-Net records its __init__ arguments by signature (for checkpoints), so keep the exact one
    def init_with_budget(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):
        original_init(self, plans, configuration, fold, dataset_json, device)
        for attr, env in SCHEDULE_ENV.items():
            if os.environ.get(env):
                setattr(self, attr, int(os.environ[env]))
                self.print_to_log_file(f"study budget: {env}={os.environ[env]} -> {attr}")

    nnUNetTrainer.__init__ = init_with_budget
    threads = os.environ.get("BUS_NNUNET_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
        torch.set_num_threads = lambda n: None
    from nnunetv2.run.run_training import run_training_entry
    sys.argv = ["nnUNetv2_train", *argv]
    run_training_entry()


if __name__ == "__main__":
    main(sys.argv[1:])
