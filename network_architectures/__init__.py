"""Pure-PyTorch networks (no nnU-Net import), registered by name like timm's models.

Every public module of this package is imported on the first registry lookup and registers its
entry points with :func:`register_model`; adding a network is adding a module (docs/extending.md).

>>> from bus_nnunet.network_architectures import create_model, list_models
>>> net = create_model("ssnet", in_channels=1, num_classes=2)
"""
from ._registry import UNAVAILABLE, ModelInfo, create_model, list_models, model_info, register_model, snap_patch_size  # noqa: F401
