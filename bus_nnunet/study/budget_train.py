"""``python -m bus_nnunet.study.budget_train <nnUNetv2_train arguments>``: nnU-Net's own
``nnUNetv2_train`` with a study's [schedule] applied to every trainer class, nnU-Net's stock
``nnUNetTrainer`` included (:func:`budget_train`), so every trainer of a smoke study (or a benchmark) gets the same
budget."""
from __future__ import annotations

import os
import sys
from typing import Sequence


def budget_train(argv: Sequence[str], label: str = "budget") -> None:
    """``nnUNetv2_train <argv>`` with ``BUS_NNUNET_NUM_EPOCHS`` / ``_NUM_ITERATIONS`` /
    ``_NUM_VAL_ITERATIONS`` applied to EVERY trainer class (bus-nnunet's trainers read them
    themselves, nnU-Net's do not), so all trainers of a comparison get the same budget.
    ``BUS_NNUNET_TORCH_THREADS`` pins torch's CPU threads."""
    import torch
    from nnunetv2.run.run_training import run_training_entry
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from bus_nnunet.schedule import schedule_overrides
    overrides = schedule_overrides()  # the trainers' own check: a bad value stops before nnU-Net starts
    original_init = nnUNetTrainer.__init__

    # nnU-Net records its __init__ arguments by signature (for checkpoints), so keep the exact one
    def init_with_budget(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                         device: torch.device = torch.device("cuda")):
        original_init(self, plans, configuration, fold, dataset_json, device)
        for attr, (value, source) in overrides.items():
            setattr(self, attr, value)
            self.print_to_log_file(f"{label}: {source} -> {attr}")

    nnUNetTrainer.__init__ = init_with_budget
    threads = os.environ.get("BUS_NNUNET_TORCH_THREADS")
    if threads:
        # nnU-Net sets cpu_count() threads on CPU; on a shared machine every parallel op then waits
        # for a busy core (~10x slower)
        torch.set_num_threads(int(threads))
        torch.set_num_threads = lambda n: None
    sys.argv = ["nnUNetv2_train", *argv]
    run_training_entry()


if __name__ == "__main__":
    budget_train(sys.argv[1:], label="study budget")
