"""bus-nnunet's nnU-Net trainers.

Every public module in this folder lists its trainer classes in ``__all__``; this package
imports them all, adds nnU-Net-style schedule variants (``<Trainer>_1epoch``, ``_5epochs``,
``_100epochs``, ``_250epochs``) and re-exports everything, which is what nnU-Net's trainer
lookup sees (through ``bus_nnunet/_nnunet_ext``).  A module that fails to import is reported
in :data:`UNAVAILABLE` (and by ``bus-nnunet doctor``) instead of hiding the other trainers.
"""
import importlib
import pkgutil
import warnings

SCHEDULE_VARIANT_EPOCHS = (1, 5, 100, 250)

#: trainer name -> class, base trainers only (no schedule variants)
TRAINERS = {}
#: module name -> "ExceptionType: message" for trainer modules that failed to import
UNAVAILABLE = {}
__all__ = []


def _variant_name(base: str, epochs: int) -> str:
    return f"{base}_{epochs}epoch" + ("" if epochs == 1 else "s")


def _add_schedule_variants(cls):
    for epochs in SCHEDULE_VARIANT_EPOCHS:
        name = _variant_name(cls.__name__, epochs)
        variant = type(name, (cls,), {
            "variant_num_epochs": epochs,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"{cls.__name__} with a {epochs}-epoch schedule.",
        })
        globals()[name] = variant
        __all__.append(name)


def _discover():
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_") or module_info.name == "base":
            continue
        full = f"{__name__}.{module_info.name}"
        try:
            module = importlib.import_module(full)
        except Exception as e:  # keep every other trainer findable
            UNAVAILABLE[full] = f"{type(e).__name__}: {e}"
            warnings.warn(f"bus-nnunet trainers in {full} are unavailable: {type(e).__name__}: {e}")
            continue
        for name in getattr(module, "__all__", []):
            cls = getattr(module, name)
            TRAINERS[name] = cls
            globals()[name] = cls
            __all__.append(name)
            _add_schedule_variants(cls)


_discover()
