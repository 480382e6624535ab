"""bus-nnunet's nnU-Net trainers.

Every public module in this folder lists its trainer classes in ``__all__``; this package
imports them all, adds nnU-Net-style schedule variants (``<Trainer>_1epoch``, ``_5epochs``,
``_100epochs``, ``_250epochs``) and the classifying variants (``<Trainer>_Cls``, ``_ClsUW``,
``_ClsBalanced``, each with the schedule variants; :mod:`bus_nnunet.trainers.classification`), also
of nnU-Net's own ``nnUNetTrainer``, and re-exports everything, which is what nnU-Net's trainer
lookup sees (through ``bus_nnunet/_nnunet_ext``).  A module that fails to import is reported
in :data:`UNAVAILABLE` (and by ``bus-nnunet doctor``) instead of hiding the other trainers.
"""
import importlib
import pkgutil
import warnings

from bus_nnunet.recipes import Classification

SCHEDULE_VARIANT_EPOCHS = (1, 5, 100, 250)
#: suffix -> the classification task of the classifying variants ``<Trainer>_<suffix>``
CLASSIFYING_VARIANTS = {
    "Cls": Classification(),                                # segmentation + 1 x cross-entropy
    "ClsUW": Classification(weighting="uncertainty"),       # ACSNet's learnable uncertainty weights
    "ClsBalanced": Classification(class_weights="balanced"),  # class-weighted cross-entropy
}
#: modules of this package that define no trainers
_INFRASTRUCTURE = ("base", "classification")

#: trainer name -> class, base trainers only (no schedule or classifying variants)
TRAINERS = {}
#: classifying variant name -> class (no schedule variants), nnUNetTrainer's included
CLASSIFYING = {}
#: module name -> "ExceptionType: message" for trainer modules that failed to import
UNAVAILABLE = {}
__all__ = []


def _variant_name(base: str, epochs: int) -> str:
    return f"{base}_{epochs}epoch" + ("" if epochs == 1 else "s")


def _schedule_variants(cls):
    return [type(_variant_name(cls.__name__, epochs), (cls,), {
        "variant_num_epochs": epochs,
        "__module__": __name__,
        "__qualname__": _variant_name(cls.__name__, epochs),
        "__doc__": f"{cls.__name__} with a {epochs}-epoch schedule.",
    }) for epochs in SCHEDULE_VARIANT_EPOCHS]


def _classifying_variants(cls, extra_bases=(), attrs=None):
    """``<cls>_<suffix>`` for every :data:`CLASSIFYING_VARIANTS` entry; none for a trainer that
    classifies already or whose network registers no deepest features."""
    from bus_nnunet.recipes import NNUNET_RECIPE
    from bus_nnunet.trainers.classification import classifying_mixin_for
    mixin = classifying_mixin_for(cls)
    if mixin is None:
        return []
    return [type(f"{cls.__name__}_{suffix}", (mixin, *extra_bases, cls), {
        **(attrs or {}),
        "recipe": getattr(cls, "recipe", NNUNET_RECIPE).with_(classification=task),
        "__module__": __name__,
        "__qualname__": f"{cls.__name__}_{suffix}",
        "__doc__": f"{cls.__name__} that also classifies each image: {task.describe()}.",
    }) for suffix, task in CLASSIFYING_VARIANTS.items()]


def _register(trainers, classifying):
    """Export ``trainers`` (base trainers) and ``classifying`` variants, each with its schedule variants."""
    for group, table in ((trainers, TRAINERS), (classifying, CLASSIFYING)):
        for cls in group:
            table[cls.__name__] = cls
            for c in [cls, *_schedule_variants(cls)]:
                globals()[c.__name__] = c
                __all__.append(c.__name__)


def _discover():
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name in _INFRASTRUCTURE:
            continue
        full = f"{__name__}.{module_info.name}"
        try:
            module = importlib.import_module(full)
            trainers = [getattr(module, name) for name in getattr(module, "__all__", [])]
            classifying = [v for cls in trainers for v in _classifying_variants(cls)]
        except Exception as e:  # keep every other trainer findable
            UNAVAILABLE[full] = f"{type(e).__name__}: {e}"
            warnings.warn(f"bus-nnunet trainers in {full} are unavailable: {type(e).__name__}: {e}")
            continue
        _register(trainers, classifying)


def _add_nnunet_trainer_variants():
    """nnU-Net's own ``nnUNetTrainer`` (its augmentation and recipe) with a class head."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from bus_nnunet.trainers.base import UltrasoundAugmentationMixin
    _register([], _classifying_variants(nnUNetTrainer, (UltrasoundAugmentationMixin,),
                                        {"ultrasound_augmentation": False}))


_discover()
_add_nnunet_trainer_variants()
