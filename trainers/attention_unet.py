"""nnU-Net trainers for the multi-encoder attention U-Net of Anari et al. (Sci. Rep. 2025).

One trainer per configuration of the paper's comparison, named
``AttUNet[_<encoders>]_<attention>_<loss>_[Frozen]Trainer``:

* attention: ``Plain`` (none), ``CBAM``, ``NonLocal``;
* loss: ``BCE`` (cross-entropy only; for two softmax classes it equals the paper's sigmoid BCE)
  or ``Dice`` (soft Dice only);
* ``Frozen``: encoder weights fixed (``requires_grad=False``, left out of the optimiser, BatchNorm
  statistics fixed); needs pretrained encoders, see below;
* encoders: all three (ResNet-18 + DenseNet-121 + EfficientNet-B0) unless prefixed ``DE``, ``RE``
  or ``RD`` (the two-encoder rows of the paper; these exist without attention only);
* ``AttUNetSkips_...``: the same networks with encoder features at strides 16/8/4/2 concatenated
  into the decoder (``encoder_skips=True``): the U-Net the paper's text describes, which its
  Table 1 parameter counts leave no room for.  ``AttUNet_...`` stays Table-1-exact.

``docs/attention_unet_models.md`` maps the paper's Models 1-20 to these names (``PAPER_MODELS``).

Pretrained ImageNet encoders (``resnet18.tv_in1k``, ``densenet121.tv_in1k``, ``efficientnet_b0.ra_in1k``)
come from the shared cache (``bus-nnunet weights fetch``); a local timm checkpoint file overrides each:
``BUS_NNUNET_TIMM_RESNET18``, ``BUS_NNUNET_TIMM_DENSENET121``, ``BUS_NNUNET_TIMM_EFFICIENTNET_B0``.
Frozen trainers refuse to start without them (freezing random weights leaves a random feature
extractor) unless ``BUS_NNUNET_ALLOW_FROZEN_RANDOM=1``.

Recipe: Adam, lr 1e-4 (the paper's "10e-4" read as 1e-4), no weight decay, constant learning rate,
dropout 0.3 on the fused bottleneck, 50 epochs. The paper's early stopping (patience 10 on the
validation loss, best checkpoint kept) maps onto nnU-Net's ``checkpoint_best.pth`` (best EMA
pseudo-Dice on the validation fold): predict with ``-chk checkpoint_best.pth`` to use it.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from bus_nnunet.errors import UserError
from bus_nnunet.network_architectures import model_info
from bus_nnunet.network_architectures.attention_unet import ENCODER_WEIGHTS
from bus_nnunet.recipes import PaperBudget, Recipe
from bus_nnunet.trainers.base import BusNetworkTrainer

#: encoder -> environment variable naming a local timm checkpoint (overrides the cache)
ENCODER_ENV: Dict[str, str] = {
    "resnet18": "BUS_NNUNET_TIMM_RESNET18",
    "densenet121": "BUS_NNUNET_TIMM_DENSENET121",
    "efficientnet_b0": "BUS_NNUNET_TIMM_EFFICIENTNET_B0",
}
ALLOW_FROZEN_RANDOM_ENV = "BUS_NNUNET_ALLOW_FROZEN_RANDOM"

ENCODER_SETS: Dict[str, Tuple[str, ...]] = {
    "RDE": ("resnet18", "densenet121", "efficientnet_b0"),
    "DE": ("densenet121", "efficientnet_b0"),
    "RE": ("resnet18", "efficientnet_b0"),
    "RD": ("resnet18", "densenet121"),
}
ATTENTION_TAGS = {"none": "Plain", "cbam": "CBAM", "nonlocal": "NonLocal"}
LOSS_WEIGHTS = {"BCE": dict(ce_weight=1.0, dice_weight=0.0), "Dice": dict(ce_weight=0.0, dice_weight=1.0)}

PAPER_RECIPE = Recipe(optimizer="adam", lr=1e-4, weight_decay=0.0, schedule="constant", num_epochs=50,
                      paper_budget=PaperBudget(50, 624, 16, "paper: BUSI's 780 images split 624/78/78, batch 16, "
                                                            "at most 50 epochs (early stopping, patience 10)"))


def trainer_name(encoders: str, attention: str, loss: str, frozen: bool, skips: bool = False) -> str:
    """``AttUNet[Skips][_<encoders>]_<attention>_<loss>_[Frozen]Trainer`` (encoders omitted for all three)."""
    prefix = "AttUNetSkips" if skips else "AttUNet"
    prefix = prefix if encoders == "RDE" else f"{prefix}_{encoders}"
    return f"{prefix}_{ATTENTION_TAGS[attention]}_{loss}_{'Frozen' if frozen else ''}Trainer"


#: paper Table 1 row -> (encoders, attention, loss, frozen, total params, trainable params);
#: counts for the paper's 3-channel input and 1-channel sigmoid head
PAPER_MODELS: Dict[int, Tuple[str, str, str, bool, int, int]] = {
    1: ("RDE", "cbam", "BCE", False, 23_881_989, 23_881_989),
    2: ("RDE", "cbam", "Dice", False, 23_881_989, 23_881_989),
    3: ("RDE", "nonlocal", "BCE", False, 24_493_277, 24_493_277),
    4: ("RDE", "nonlocal", "Dice", False, 24_493_277, 24_493_277),
    5: ("RDE", "none", "Dice", True, 23_794_557, 1_656_641),
    6: ("RDE", "none", "BCE", True, 23_794_557, 1_656_641),
    7: ("RDE", "none", "BCE", False, 23_794_557, 23_794_557),
    8: ("RDE", "none", "Dice", False, 23_794_557, 23_794_557),
    9: ("RDE", "nonlocal", "Dice", True, 24_493_277, 2_355_361),
    10: ("RDE", "cbam", "Dice", True, 23_881_989, 1_744_073),
    11: ("RDE", "nonlocal", "BCE", True, 24_493_277, 2_355_361),
    12: ("RDE", "cbam", "BCE", True, 23_881_989, 1_744_073),
    13: ("DE", "none", "Dice", True, 12_350_269, 1_388_865),
    14: ("DE", "none", "BCE", True, 12_350_269, 1_388_865),
    15: ("RE", "none", "BCE", True, 16_305_149, 1_121_089),
    16: ("RE", "none", "Dice", True, 16_305_149, 1_121_089),
    17: ("RD", "none", "BCE", True, 19_117_569, 987_201),
    18: ("RD", "none", "Dice", True, 19_117_569, 987_201),
    19: ("DE", "none", "BCE", False, 12_350_269, 12_350_269),  # paper prints 12,350,296 (digit swap)
    20: ("DE", "none", "Dice", False, 12_350_269, 12_350_269),  # paper prints 12,350,296 (digit swap)
}


def frozen_encoders_without_weights(encoders: Sequence[str], environ: Mapping[str, str] = os.environ) -> List[str]:
    """Encoders that would keep random weights: no file in their variable and none in the cache
    (or ``BUS_NNUNET_PRETRAINED=none``)."""
    from bus_nnunet.weights import resolve
    return [e for e in encoders if resolve(ENCODER_WEIGHTS[e], ENCODER_ENV[e], environ).state in ("missing", "off")]


def check_frozen_encoders_pretrained(trainer: str, encoders: Sequence[str],
                                     environ: Mapping[str, str] = os.environ) -> None:
    """Refuse to train a frozen-encoder model whose encoders would keep random weights."""
    missing = frozen_encoders_without_weights(encoders, environ)
    if not missing or environ.get(ALLOW_FROZEN_RANDOM_ENV) == "1":
        return
    from bus_nnunet.weights import PRETRAINED_ENV, weights_dir
    lines = "\n".join(f"  bus-nnunet weights fetch {ENCODER_WEIGHTS[e]}   # or: export {ENCODER_ENV[e]}=/path/to/{e}.pth"
                      for e in missing)
    raise UserError(
        f"{trainer} freezes its encoders, but no pretrained weights are given for {', '.join(missing)}.\n"
        f"Freezing randomly initialised encoders is meaningless: the decoder would learn on top of a fixed "
        f"random feature extractor, which is not the paper's frozen-encoder experiment. Put the ImageNet weights "
        f"in the cache ({weights_dir(environ)}) or point the variables at local timm checkpoint files"
        + (f" (and unset {PRETRAINED_ENV}=none)" if environ.get(PRETRAINED_ENV, "").lower() == "none" else "")
        + f":\n{lines}\n"
        f"or use the trainable-encoder trainer ({trainer.replace('_FrozenTrainer', '_Trainer')}). "
        f"To freeze random weights anyway (e.g. a smoke test), set {ALLOW_FROZEN_RANDOM_ENV}=1.")


class AttentionUNetTrainer(BusNetworkTrainer):
    """Base of the generated trainers: attention U-Net with the paper's recipe (Adam 1e-4)."""

    network_name = "attention_unet"
    network_kwargs = dict(encoders=ENCODER_SETS["RDE"], attention="none", dropout=0.3, freeze_encoder=False)
    recipe = PAPER_RECIPE.with_(**LOSS_WEIGHTS["BCE"])
    deep_supervision = False  # single-output network
    #: paper Table 1 row this trainer reproduces (None: not in the table)
    paper_model: Optional[int] = None

    @property
    def encoder_names(self) -> Tuple[str, ...]:
        return tuple(self.network_kwargs["encoders"])

    @classmethod
    def pretrained_sources(cls):
        encoders = cls.network_kwargs["encoders"]
        return [(part, ENCODER_ENV[part.slot]) for part in model_info(cls.network_name).pretrained
                if part.slot in encoders]

    def on_train_start(self):
        # before nnU-Net starts data loaders; a run continued from a checkpoint has its weights already
        if self.network_kwargs.get("freeze_encoder") and self.current_epoch == 0:
            check_frozen_encoders_pretrained(type(self).__name__, self.encoder_names)
        super().on_train_start()


def _make_trainer(encoders: str, attention: str, loss: str, frozen: bool, skips: bool = False) -> type:
    name = trainer_name(encoders, attention, loss, frozen, skips)
    rows = [] if skips else [row for row, cfg in PAPER_MODELS.items() if cfg[:4] == (encoders, attention, loss, frozen)]
    paper = (f"paper Model {rows[0]}" if rows else
             "the paper's text with U-Net encoder skips, not its Table 1" if skips else "not in the paper's table")
    doc = (f"Attention U-Net, encoders {'+'.join(ENCODER_SETS[encoders])}, attention {attention}, {loss} loss, "
           f"encoders {'frozen' if frozen else 'trainable'}{', encoder skips into the decoder' if skips else ''} "
           f"({paper}).")
    return type(name, (AttentionUNetTrainer,), {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc,
        "network_kwargs": dict(encoders=ENCODER_SETS[encoders], attention=attention, dropout=0.3,
                               freeze_encoder=frozen, **({"encoder_skips": True} if skips else {})),
        "recipe": PAPER_RECIPE.with_(**LOSS_WEIGHTS[loss]),
        "paper_model": rows[0] if rows else None,
        # skips are taken by forward hooks, which torch.compile is not tested with here
        "allow_compile": not skips,
    })


def _configurations():
    for attention in ATTENTION_TAGS:
        for loss in LOSS_WEIGHTS:
            for frozen in (False, True):
                yield "RDE", attention, loss, frozen
    for encoders in ("DE", "RE", "RD"):
        for loss in LOSS_WEIGHTS:
            for frozen in (False, True):
                yield encoders, "none", loss, frozen
    for attention in ATTENTION_TAGS:  # the skip-connection reading, trainable encoders
        for loss in LOSS_WEIGHTS:
            yield "RDE", attention, loss, False, True


__all__ = []
for _cfg in _configurations():
    _cls = _make_trainer(*_cfg)
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
del _cfg, _cls

#: paper Table 1 row -> trainer name
PAPER_MODEL_TRAINERS: Dict[int, str] = {row: trainer_name(*cfg[:4]) for row, cfg in PAPER_MODELS.items()}
