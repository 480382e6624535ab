"""Model registry, in the style of timm's: every network module registers its entry points.

An entry point is a function ``fn(in_channels=1, num_classes=2, deep_supervision=False, **kwargs)
-> nn.Module`` returning raw logits (no softmax/sigmoid).  Registration records what a trainer
needs to know about the network without building it:

* ``size_divisor`` -- every spatial input size must be a multiple of it (the trainer snaps the
  nnU-Net plan's patch size to it);
* ``min_size`` -- smallest spatial size the network accepts;
* ``fixed_sizes`` -- if the network only accepts a few sizes (e.g. position tables), the list of
  them; the trainer snaps the patch to the nearest one;
* ``deep_supervision_strides`` -- downsampling factor of each output (highest resolution first)
  when the network is built with ``deep_supervision=True``; ``None`` if it has a single output;
* ``paper`` / ``requires`` -- for ``bus-nnunet trainers`` listings (``requires``: optional
  importable packages the network cannot run without; packages that only speed it up are not
  listed);
* ``takes_input_size`` -- the entry point accepts ``input_size=(H, W)``, the patch it will see;
* ``pretrained`` -- the ImageNet weights the paper initialised parts of the network from, each a
  ``_pretrained.PretrainedPart`` (timm weights name, loader, encoder slot); every loader goes
  through ``_pretrained.load_checkpoint``;
* ``deepest_features`` -- the submodule whose output is the encoder's deepest feature map
  ``(B, C, H, W)`` (``"name:input"``: its first input): the classifying trainer variants
  (``<Trainer>_Cls``, ``bus_nnunet.trainers.classification``) pool it for their class head, through a
  forward hook; ``None``: the network gets no classifying variant.

Network modules must not import nnU-Net, and must import optional heavy packages lazily.  A module
that fails to import is listed in :data:`UNAVAILABLE` with its error (and by ``bus-nnunet doctor``)
instead of hiding every other network, as the trainers package does.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["ModelInfo", "UNAVAILABLE", "register_model", "create_model", "list_models", "model_info",
           "snap_patch_size"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    fn: Callable
    size_divisor: int = 32
    min_size: int = 32
    fixed_sizes: Optional[Tuple[int, ...]] = None
    deep_supervision_strides: Optional[Tuple[int, ...]] = None
    paper: str = ""
    requires: Tuple[str, ...] = field(default_factory=tuple)
    takes_input_size: bool = False  # entry point wants input_size=(H, W) (the trainer's patch size)
    pretrained: Tuple = ()  # _pretrained.PretrainedPart per pretrained part
    deepest_features: Optional[str] = None  # submodule[:input] holding the deepest encoder features


_MODELS: Dict[str, ModelInfo] = {}
#: module name -> "ExceptionType: message" for network modules that failed to import
UNAVAILABLE: Dict[str, str] = {}


def register_model(fn: Callable = None, *, name: str = None, size_divisor: int = 32, min_size: int = 32,
                   fixed_sizes: Sequence[int] = None, deep_supervision_strides: Sequence[int] = None,
                   paper: str = "", requires: Sequence[str] = (), takes_input_size: bool = False,
                   pretrained: Sequence = (), deepest_features: Optional[str] = None):
    """Decorator registering a network entry point under ``name`` (default: the function name)."""

    def wrap(f):
        key = name or f.__name__
        if key in _MODELS and _MODELS[key].fn is not f:
            raise ValueError(f"network {key!r} is registered twice ({_MODELS[key].fn.__module__} and {f.__module__})")
        _MODELS[key] = ModelInfo(key, f, size_divisor, min_size,
                                 tuple(fixed_sizes) if fixed_sizes else None,
                                 tuple(deep_supervision_strides) if deep_supervision_strides else None,
                                 paper, tuple(requires), takes_input_size, tuple(pretrained), deepest_features)
        return f

    return wrap(fn) if fn is not None else wrap


def _load_all():
    """Import every public module of the package, so each registers its networks (on the first
    registry lookup, not at package import: importing the package stays cheap).  A module that
    fails goes to :data:`UNAVAILABLE` (tried once) and the others still register."""
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        full = f"{__package__}.{module.name}"
        if module.name.startswith("_") or full in UNAVAILABLE:
            continue
        try:
            importlib.import_module(full)
        except Exception as e:  # keep every other network findable
            UNAVAILABLE[full] = f"{type(e).__name__}: {e}"
            warnings.warn(f"bus-nnunet networks in {full} are unavailable: {UNAVAILABLE[full]}")


def list_models() -> List[str]:
    _load_all()
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    if name not in _MODELS:
        _load_all()
    if name not in _MODELS:
        broken = "".join(f"; {m} failed to import ({e})" for m, e in UNAVAILABLE.items())
        raise KeyError(f"unknown network {name!r}; available: {', '.join(sorted(_MODELS))}{broken}")
    return _MODELS[name]


def create_model(name: str, in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False, **kwargs):
    """Build a registered network. ``num_classes`` counts background (nnU-Net's segmentation heads)."""
    return model_info(name).fn(in_channels=in_channels, num_classes=num_classes,
                               deep_supervision=deep_supervision, **kwargs)


def snap_patch_size(name: str, patch_size: Sequence[int]) -> Tuple[int, ...]:
    """Nearest patch size the network accepts: each side a multiple of ``size_divisor`` (rounded to
    the nearest multiple, never below ``min_size``), or the nearest of ``fixed_sizes``."""
    info = model_info(name)
    snapped = []
    for s in patch_size:
        s = int(s)
        if info.fixed_sizes:
            snapped.append(min(info.fixed_sizes, key=lambda f: (abs(f - s), -f)))
            continue
        d = info.size_divisor
        nearest = int(round(s / d)) * d  # ties (exact halves) go to the even multiple, like round()
        smallest = -(-info.min_size // d) * d
        snapped.append(max(nearest, smallest))
    return tuple(snapped)
