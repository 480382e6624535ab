"""Start-up hook installed by bus-nnunet as ``_bus_nnunet_hook`` (run from a ``.pth`` file).

nnU-Net >= 2.8 looks for trainers it does not ship in the folders listed in the environment
variable ``nnUNet_extTrainer``.  This hook appends bus-nnunet's trainer entry folder to that
variable at every interpreter start, keeping what the user already set, so that
``nnUNetv2_train ... -tr SSNetTrainer`` and ``nnUNetv2_predict ... -tr SSNetTrainer`` work right
after ``pip install``.  It imports nothing heavy (no torch) and never raises.
Set ``BUS_NNUNET_NO_AUTOREGISTER=1`` to switch it off.
"""
import importlib.util
import os

ENTRY_FOLDER_NAME = "_nnunet_ext"


def trainer_entry_folder():
    """Folder holding the one module nnU-Net's external-trainer scan imports, or None."""
    spec = importlib.util.find_spec("bus_nnunet")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], ENTRY_FOLDER_NAME)


def is_listed(folder, environ=os.environ):
    """Whether ``folder`` is one of the folders in ``environ['nnUNet_extTrainer']``."""
    parts = environ.get("nnUNet_extTrainer", "").split(os.pathsep)
    return os.path.normpath(folder) in {os.path.normpath(p) for p in parts if p}


def append_folder(folder, environ=os.environ):
    """Append ``folder`` to ``environ['nnUNet_extTrainer']`` unless listed, keeping the user's entries."""
    if not is_listed(folder, environ):
        parts = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
        environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [folder])


def register(environ=os.environ):
    """Append the entry folder to ``environ['nnUNet_extTrainer']``; returns the folder or None."""
    if environ.get("BUS_NNUNET_NO_AUTOREGISTER"):
        return None
    folder = trainer_entry_folder()
    if folder is None or not os.path.isdir(folder):
        return None
    append_folder(folder, environ)
    return folder


try:
    register()
except Exception:  # a start-up hook must never break the interpreter
    pass
