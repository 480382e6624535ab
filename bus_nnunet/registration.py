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
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _autoregister_hook.ENTRY_FOLDER_NAME)


def entry_folder_registered(environ=os.environ) -> bool:
    folder = os.path.normpath(trainer_entry_folder())
    return folder in {os.path.normpath(p) for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p}


def ensure_registered(environ=os.environ) -> None:
    """Make this process (and its children) able to find our trainers, hook or not."""
    if not entry_folder_registered(environ):
        parts = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
        environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [trainer_entry_folder()])


def hook_installed() -> bool:
    """True if the start-up hook module is importable (installed next to the package)."""
    import importlib.util
    return importlib.util.find_spec("_bus_nnunet_hook") is not None


def lookup_trainer(name: str) -> Dict[str, Optional[str]]:
    """Resolve ``name`` with nnU-Net's own lookup; returns {'module': ..., 'error': ...}."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cls = recursive_find_trainer_class_by_name(name)
        return {"module": cls.__module__, "error": None}
    except Exception as e:  # nnU-Net raises RuntimeError when not found; imports may fail too
        return {"module": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
