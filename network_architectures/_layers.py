"""Small building blocks shared by several networks (like ``timm.layers``)."""
from typing import List

import torch
from torch import nn

__all__ = ["ConvBlock", "TorchvisionResNetEncoder"]


class ConvBlock(nn.Sequential):
    """The U-Net double convolution: two [conv3x3 (bias) + BatchNorm + ReLU] layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


#: torchvision's block type and blocks per stage of each ResNet depth
_RESNET_LAYOUTS = {18: ("BasicBlock", [2, 2, 2, 2]), 34: ("BasicBlock", [3, 4, 6, 3]),
                   50: ("Bottleneck", [3, 4, 6, 3]), 101: ("Bottleneck", [3, 4, 23, 3])}


class TorchvisionResNetEncoder(nn.Module):
    """torchvision ResNet-``depth`` without avgpool/fc, with an ``in_channels`` stem; parameter names
    match torchvision's and timm's ``resnet<depth>``, so their state dicts load directly
    (:func:`bus_nnunet.network_architectures._pretrained.load_resnet_encoder`).

    ``stem_init`` says how the stem convolution starts: ``"torchvision"`` keeps torchvision's for
    RGB and uses PyTorch's default initialisation for a new stem of other channel counts
    (AnatoSegNet); ``"kaiming"`` always makes a new stem, He-normal (fan_out) as torchvision
    initialises its other convolutions (ACSNet's released ``MyModel.py``).  Either way the random
    stream is drawn as those networks always drew it, so a seed gives the same weights as before."""

    def __init__(self, depth: int, in_channels: int = 3, stem_init: str = "torchvision"):
        super().__init__()
        from torchvision.models import resnet  # lazy: keeps the registry import cheap
        if depth not in _RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNET_LAYOUTS)}, got {depth}")
        if stem_init not in ("torchvision", "kaiming"):
            raise ValueError(f"stem_init must be 'torchvision' or 'kaiming', got {stem_init!r}")
        block, layers = _RESNET_LAYOUTS[depth]
        net = resnet.ResNet(getattr(resnet, block), layers)
        self.conv1 = net.conv1
        if stem_init == "kaiming" or in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        if stem_init == "kaiming":
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1, self.relu, self.maxpool = net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The stem (1/2) and the four stages (1/4 to 1/32)."""
        e0 = self.relu(self.bn1(self.conv1(x)))
        e1 = self.layer1(self.maxpool(e0))
        e2 = self.layer2(e1)
        e3 = self.layer3(e2)
        return [e0, e1, e2, e3, self.layer4(e3)]
