"""One path for pretrained weights: read a checkpoint, map its keys, adapt the stem, load, report.

Every network loads ImageNet weights through :func:`load_checkpoint`, in the pattern of timm's
``build_model_with_cfg`` + per-family ``checkpoint_filter_fn``:

1. :func:`read_state_dict` reads ``.pth`` / ``.bin`` / ``.safetensors``, unwraps training
   checkpoints (``state_dict``, ``model``, ``state_dict_ema``, ...) and strips wrapper prefixes
   (``module.`` from DDP, ``_orig_mod.`` from torch.compile);
2. the network's ``filter_fn(state, module)`` maps foreign key layouts onto the module's and drops
   what the module does not have (classifier heads), returning the names it dropped;
3. the stem (first conv) is adapted to the module's input channels with timm's ``adapt_input_conv``
   (summed for one channel, repeated and rescaled for any other count);
4. the result must match the module exactly (every tensor, every shape, apart from BatchNorm's
   ``num_batches_tracked``); otherwise :class:`PretrainedMismatchError` names the file and the
   first mismatching keys, and the module is left untouched.

A registered network declares what it loads with :class:`PretrainedPart` (``register_model(...,
pretrained=...)``); ``bus_nnunet.weights`` finds, caches and verifies the files.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from bus_nnunet.errors import UserError

__all__ = ["PretrainedMismatchError", "LoadReport", "PretrainedPart", "read_state_dict", "load_checkpoint",
           "resnet_filter", "timm_filter", "load_resnet_encoder", "load_timm_model"]

#: wrappers of training checkpoints, outermost first
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "network_weights")
#: prefixes added by DDP and torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
Source = Union[str, os.PathLike, Mapping[str, torch.Tensor]]
FilterFn = Callable[[Dict[str, torch.Tensor], nn.Module], Tuple[Dict[str, torch.Tensor], List[str]]]


class PretrainedMismatchError(UserError, ValueError):
    """A checkpoint that does not fit the module it is loaded into."""


@dataclass(frozen=True)
class LoadReport:
    what: str
    file: str
    tensors: int  # loaded, num_batches_tracked not counted
    expected: int  # the module's (equal to tensors: loading is all or nothing)
    parameters: int  # elements of the loaded nn.Parameters (buffers such as running stats not counted)
    notes: Tuple[str, ...] = ()

    def __str__(self):
        return (f"loaded {self.tensors}/{self.expected} {self.what} tensors ({self.parameters:,} parameters) "
                f"from {self.file}" + "".join(f"; {n}" for n in self.notes))


@dataclass(frozen=True)
class PretrainedPart:
    """The ImageNet weights one part of a registered network is initialised from."""

    weights: str  # timm ``name.tag``, e.g. "resnet18.tv_in1k"
    load: Callable[[nn.Module, Source], LoadReport]  # loads a checkpoint into the whole network
    slot: Optional[str] = None  # which encoder, for networks with several
    #: ``create_model`` kwargs of the smallest network holding this part (for checking a file)
    probe_kwargs: Mapping[str, object] = field(default_factory=dict)


def _counted(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def read_state_dict(source: Source) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (or mapping), unwrapped and without wrapper prefixes."""
    name = _name(source)
    if isinstance(source, Mapping):
        state = source
    elif str(source).endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(str(source))
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainedMismatchError(f"{name}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") \
                from None
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise PretrainedMismatchError(f"{name}: not a state dict (expected a dict of tensors, got "
                                      f"{type(state).__name__})")
    out = {}
    for key, value in state.items():
        if not torch.is_tensor(value):
            continue
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _name(source: Source) -> str:
    return "checkpoint" if isinstance(source, Mapping) else str(source)


def load_checkpoint(module: nn.Module, source: Source, what: str, filter_fn: Optional[FilterFn] = None,
                    stem: Optional[str] = None, hint: str = "") -> LoadReport:
    """Load ``source`` into ``module`` (steps 1-4 of the module docstring); returns the report.

    ``stem``: key of the first conv's weight, adapted to the module's input channels.
    ``hint``: what a fitting checkpoint is, appended to the error.
    """
    name = _name(source)
    state = read_state_dict(source)
    dropped: List[str] = []
    if filter_fn is not None:
        state, dropped = filter_fn(state, module)
    target = module.state_dict()
    notes = []
    if stem and stem in state and stem in target and state[stem].shape[1] != target[stem].shape[1]:
        from timm.models import adapt_input_conv
        have, want = state[stem].shape[1], target[stem].shape[1]
        try:
            state[stem] = adapt_input_conv(want, state[stem])
        except (NotImplementedError, AssertionError):
            raise PretrainedMismatchError(f"{name}: cannot adapt the {have}-channel stem {stem} to {want} input "
                                          f"channels") from None
        notes.append(f"{stem.rsplit('.', 1)[0]} folded from {have} to {want} input channels (timm adapt_input_conv)")
    expected = [k for k in target if _counted(k)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [f"{k}: checkpoint shape {tuple(state[k].shape)}, expected {tuple(target[k].shape)}"
             for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"it lacks {len(missing)} of the {len(expected)} tensors (first: {', '.join(missing[:5])})")
        problems += wrong[:5]
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
        raise PretrainedMismatchError(f"{name} does not fit: not a {what} checkpoint for this network. "
                                      + "; ".join(problems) + (f". Expected {hint}" if hint else ""))
    loaded = {k: state[k].detach().to(target[k].dtype) for k in target if k in state}
    module.load_state_dict(loaded, strict=False)
    parameters = dict(module.named_parameters())
    if dropped:
        notes.append(f"classifier dropped ({', '.join(dropped)})")
    return LoadReport(what, os.path.basename(name), len(expected), len(expected),
                      sum(v.numel() for k, v in loaded.items() if k in parameters), tuple(notes))


# -- filters -----------------------------------------------------------------------------------------
def resnet_filter(state: Dict[str, torch.Tensor], module: nn.Module):
    """torchvision / timm ResNet classifiers -> a headless ResNet encoder: ``fc.*`` dropped,
    ``encoder.`` / ``backbone.`` prefixes of segmentation checkpoints stripped."""
    out, dropped = {}, []
    for key, value in state.items():
        key = re.sub(r"^(encoder|backbone)\.", "", key)
        (dropped.append(key) if key.startswith("fc.") else out.__setitem__(key, value))
    return out, dropped


def timm_filter(state: Dict[str, torch.Tensor], module: nn.Module):
    """A timm classifier checkpoint -> the same model built with ``num_classes=0``: the model family's
    own ``checkpoint_filter_fn`` (if timm has one), then the classifier of its pretrained_cfg dropped."""
    import importlib
    family_filter = getattr(importlib.import_module(type(module).__module__), "checkpoint_filter_fn", None)
    if family_filter is not None:
        state = family_filter(state, module)
    classifier = (getattr(module, "pretrained_cfg", None) or {}).get("classifier", "fc")
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    dropped = [k for k in state if k.startswith(tuple(c + "." for c in classifiers))]
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_resnet_encoder(encoder: nn.Module, source: Source, arch: str) -> LoadReport:
    """Load a torchvision or timm ResNet classifier checkpoint into a headless ResNet ``encoder``
    whose keys are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``)."""
    return load_checkpoint(encoder, source, arch, resnet_filter, stem="conv1.weight",
                           hint=f"a torchvision or timm {arch} state dict (e.g. timm's "
                                f"{arch.lower().replace('-', '')}.tv_in1k, torchvision's IMAGENET1K_V1)")


def load_timm_model(model: nn.Module, source: Source, what: Optional[str] = None) -> LoadReport:
    """Load a timm checkpoint into a classifier-less timm ``model`` (stem from its pretrained_cfg)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first_conv = cfg.get("first_conv")
    first_conv = first_conv[0] if isinstance(first_conv, (list, tuple)) else first_conv
    arch = cfg.get("architecture") or type(model).__name__
    return load_checkpoint(model, source, what or f"timm {arch}", timm_filter,
                           stem=f"{first_conv}.weight" if first_conv else None,
                           hint=f"timm's {arch} (timm.create_model({arch!r}, pretrained=True).state_dict())")

