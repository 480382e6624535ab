"""Small building blocks shared by several networks (like ``timm.layers``)."""
from torch import nn

__all__ = ["ConvBlock"]


class ConvBlock(nn.Sequential):
    """The U-Net double convolution: two [conv3x3 (bias) + BatchNorm + ReLU] layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
