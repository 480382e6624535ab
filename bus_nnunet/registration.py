"""How nnU-Net finds bus-nnunet's trainers, and checks that it does.

nnU-Net (>= 2.8) resolves ``-tr NAME`` -- for training, ``--c``, ``--val`` and prediction alike --
by scanning its own trainer folder and then the folders in ``nnUNet_extTrainer``.  bus-nnunet
installs a start-up hook (``bus_nnunet_autoregister.pth`` -> ``_bus_nnunet_hook``) that appends
:func:`trainer_entry_folder` to that variable in every Python process, keeping the user's
entries.  Because the hook belongs to our distribution, reinstalling nnunetv2 does not remove
it.  Without the hook (e.g. ``BUS_NNUNET_NO_AUTOREGISTER=1`` or a split site-packages), set::

    export nnUNet_extTrainer="$(bus-nnunet trainers --entry-folder)"
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Dict, Optional

from bus_nnunet import _autoregister_hook


def trainer_entry_folder() -> str:
    return _autoregister_hook.trainer_entry_folder()


def entry_folder_registered(environ=os.environ) -> bool:
    return _autoregister_hook.is_listed(trainer_entry_folder(), environ)


def ensure_registered(environ=os.environ) -> None:
    """Make this process (and its children) able to find our trainers, hook or not (also with
    ``BUS_NNUNET_NO_AUTOREGISTER``, which only switches the start-up hook off)."""
    _autoregister_hook.append_folder(trainer_entry_folder(), environ)


def hook_installed() -> bool:
    """True if the start-up hook module is importable (installed next to the package)."""
    import importlib.util
    return importlib.util.find_spec("_bus_nnunet_hook") is not None


def trainer_class(name: str):
    """A trainer class by name: bus-nnunet's (schedule variants included) and nnU-Net's default
    ``nnUNetTrainer`` directly, any other through nnU-Net's own search (its trainer folder, then
    ``nnUNet_extTrainer``).  An unknown name is a :class:`UserError` with the close matches."""
    from bus_nnunet import trainers
    if name in trainers.__all__:
        return getattr(trainers, name)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    if name == nnUNetTrainer.__name__:
        return nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    except RuntimeError:  # nnU-Net's "could not find" (it prints its search, silenced above)
        from bus_nnunet.errors import UserError, did_you_mean
        hint = f"; unavailable modules: {trainers.UNAVAILABLE}" if trainers.UNAVAILABLE else ""
        raise UserError(f"unknown trainer {name!r}: neither bus-nnunet nor nnU-Net's trainer search has it; "
                        f"{did_you_mean(name, ['nnUNetTrainer', *trainers.TRAINERS])}"
                        f"`bus-nnunet trainers` lists bus-nnunet's{hint}") from None


def lookup_trainer(name: str) -> Dict[str, Optional[str]]:
    """Resolve ``name`` with nnU-Net's own lookup; returns {'module': ..., 'error': ...}."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cls = recursive_find_trainer_class_by_name(name)
        return {"module": cls.__module__, "error": None}
    except Exception as e:  # nnU-Net raises RuntimeError when not found; imports may fail too
        return {"module": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
