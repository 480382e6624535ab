"""SCRNet (Xu & Wang, arXiv 2508.13899, 2025) as nnU-Net trainers."""
from bus_nnunet.recipes import PaperBudget, Recipe
from bus_nnunet.trainers.base import BusNetworkTrainer

__all__ = ["SCRNetTrainer", "SCRNetWithoutFAMTrainer"]


class SCRNetTrainer(BusNetworkTrainer):
    """SCRNet (UNet 64-1024 + Spatial-Channel Regulation Modules) with the paper's recipe:
    loss Dice + 0.5 BCE (for two softmax classes BCE equals cross-entropy: ce_weight 0.5),
    Adam lr 1e-4, weight decay 5e-4, 100 epochs.

    The paper names only a "learning-rate annealing factor 0.2"; its scheduler is not given.  A
    plateau scheduler cannot be replayed from the epoch index (nnU-Net resumes by epoch), so this
    is a step decay x0.2 at 40 % and 80 % of the run (1e-4 / 2e-5 / 4e-6), whatever its length.
    Epochs here are nnU-Net epochs of 250 iterations (25,000 steps; the paper's 100 epochs x 57
    batches are 5,700); the ``_<N>epochs`` variants change the length.

    torch.compile is off: each SCRM's 7x7 window attention is a hand-written autograd function
    (window offsets as views of k and v padded once, attention weights recomputed in backward: the
    memory-light formulation), untested under compilation.  Memory at batch 8, 256x256
    (benchmarks/results/scrnet_memory.md): attention path <= 2.2 GiB per CCAPM; whole step 12 GiB
    under bf16 autocast, ~21.8 GiB in float32.
    """

    network_name = "scrnet"
    network_kwargs = {}
    recipe = Recipe(optimizer="adam", lr=1e-4, weight_decay=5e-4, schedule="step", step_at=(0.4, 0.8),
                    step_gamma=0.2, num_epochs=100, ce_weight=0.5, dice_weight=1.0,
                    paper_budget=PaperBudget(100, 453, 8, "paper: BUSI 647 lesion images split 453/65/129, "
                                                          "batch 8, 100 epochs"))
    deep_supervision = False
    allow_compile = False


class SCRNetWithoutFAMTrainer(SCRNetTrainer):
    """The paper's "Ours w/o FAM" ablation: each SCRM ends with X_H + X_L instead of the
    Feature Aggregation Module; everything else as :class:`SCRNetTrainer`."""

    network_kwargs = {"use_fam": False}
