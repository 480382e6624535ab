"""SS-Net (Yan et al.) as an nnU-Net trainer, with the partial PVTv2-b2 transfer of stages 1-2.

Recipe (released ``start.py``): AdamW (lr 1e-4, betas 0.9/0.999, weight decay 0.01),
cosine decay to 1e-5, BCE + Dice with weights 1/1 (two-class softmax CE == the paper's sigmoid BCE),
gradient clipping at norm 1.  Adaptation to nnU-Net epochs: the released CosineAnnealingLR(T_max=50,
eta_min=1e-5) restarts periodically every 100 short epochs (~25 iterations each on BUSI); here the
same lr range is covered by one cosine decay over the nnU-Net run (epochs of 250 iterations, so the
default 1000 epochs is far more optimisation than the paper's <= 1000 short epochs; use the generated
``SSNetTrainer_100epochs`` for a comparable budget).

Learning from scratch (no PVT weights, benchmarks/convergence_study.py on BrEaST at 128 px): the
released tile scan first collapses to background for ~150-200 steps while the cross-entropy falls,
then learns (val Dice 0.14 after 200 steps, 0.52 after 600); ``SSNetTrainerIntended``, which scans
real tiles, learns within 200 steps (0.47).

Pretrained stages 1-2 (152 tensors): timm's ``pvt_v2_b2.in1k`` from the shared cache (``bus-nnunet
weights fetch pvt_v2_b2.in1k``); ``BUS_NNUNET_PVT_V2_B2`` overrides it with a local ``pvt_v2_b2.pth``
(official whai362 layout) or a saved timm ``pvt_v2_b2`` state dict.  The released ``start.py`` never
calls ``load_from``; here the transfer happens whenever weights are available.
"""

from bus_nnunet.recipes import PaperBudget, Recipe
from bus_nnunet.trainers.base import BusNetworkTrainer

__all__ = ["SSNetTrainer", "SSNetTrainerIntended"]


class SSNetTrainer(BusNetworkTrainer):
    """SS-Net (released ``SS_UNet``, tile-scan quirks kept) with the paper's AdamW / cosine / BCE+Dice recipe."""

    network_name = "ssnet"
    network_kwargs = {"faithful_tiles": True}
    recipe = Recipe(optimizer="adamw", lr=1e-4, weight_decay=1e-2, betas=(0.9, 0.999), schedule="cosine",
                    min_lr=1e-5, ce_weight=1.0, dice_weight=1.0, grad_clip=1.0,
                    paper_budget=PaperBudget(1000, 388, 16, "released start.py: at most 1000 epochs (early stopping "
                                                            "125 epochs after the best), batch 16, 6:2:2 split of "
                                                            "BUSI's 647 lesion images"))
    deep_supervision = False
    pretrained_env = "BUS_NNUNET_PVT_V2_B2"
    # argsort/gather/scatter with data-dependent indices: compiling brings little and is fragile
    allow_compile = False



class SSNetTrainerIntended(SSNetTrainer):
    """SS-Net with the paper's intended tile scan (``faithful_tiles=False``): real p x p tiles sorted
    by their own scores and read along the Hilbert curve, instead of the released code's unfold view
    that scans stride-p pixel sub-grids under another tile's score.  Same parameters and MACs."""

    network_kwargs = {"faithful_tiles": False}
