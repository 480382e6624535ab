"""``python -m bus_nnunet.study.budget_train <nnUNetv2_train arguments>``: nnU-Net's own
``nnUNetv2_train`` with a study's [schedule] applied to every trainer class, nnU-Net's stock
``nnUNetTrainer`` included (:func:`bus_nnunet.harness.budget_train`), so every trainer of a smoke
study gets the same budget."""
import sys

from bus_nnunet.harness import budget_train

if __name__ == "__main__":
    budget_train(sys.argv[1:], label="study budget")
