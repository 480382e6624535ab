"""Pure-PyTorch networks (no nnU-Net import), registered by name like timm's models.

>>> from bus_nnunet.network_architectures import create_model, list_models
>>> net = create_model("ssnet", in_channels=1, num_classes=2)
"""
from ._registry import (ModelInfo, _MODEL_MODULES, create_model, list_models, model_info,  # noqa: F401
                        register_model, snap_patch_size)

# One module per network; each registers its entry points when imported (lazily, on first lookup).
_MODEL_MODULES.extend([
    "ssnet",
    "acsnet",
    "anatosegnet",
    "scrnet",
    "attention_unet",
])
