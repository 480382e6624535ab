"""AnatoSegNet (Huang et al., ISBI 2025): a ResNet-50 U-Net with anatomical attention.

Reference code: ``kuanhuang0624/AnatoSegNet`` @ 7292d02 (``models/AnatoNet.py``,
``UResNetWithAttention``).  Layout (256 x 256 input)::

    stem   conv1 + bn1 + relu                        64 x 128 x 128   (skip 1)
    down1  maxpool + layer1                         256 x  64 x  64   (skip 2)
    down2  layer2                                   512 x  32 x  32   (skip 3)
    down3  layer3 -> AnatomicalAttention(1024, 8)   1024 x 16 x  16   (skip 4, and layer4's input)
    down4  layer4 -> AnatomicalAttention(2048, 8)   2048 x  8 x   8   (bottleneck)
    up4..up1  ConvTranspose 2x2 s2, cat[skip, up], 2 x (conv3x3 + BN + ReLU)
    head   ConvTranspose 64->64 2x2 s2, conv1x1 64->num_classes (raw logits)

The anatomical attention module is multi-head self-attention over the feature map's tokens whose
logits add three terms and a fixed prior (no residual, norm or FFN: its output replaces the map)::

    S = (Q K^T + Q_h K_h^T + Q_v K_v^T) / sqrt(d) - gamma * |i - j|

Q, K, V come from the tokens, Q_h/K_h and Q_v/K_v from their horizontal and vertical forward
differences, all through one shared bias-free projection.  ``i, j`` are raster token indices, so
same-row neighbours are favoured (the "layer structure" prior of B-mode images).  beta of the
paper's ``beta - gamma |i - j|`` is a constant shift, which softmax ignores.

Token layout (``token_layout``): the released code turns the (N, C) token tensor into the
(C, H, W) map with a plain reshape, no transpose, so its "differences" are taken between
scrambled elements (mostly adjacent channels of the same token), not between neighbouring pixels.
``"released"`` (default) reproduces that bit for bit; ``"intended"`` takes the differences between
horizontally / vertically adjacent pixels as the paper describes.  Both have the same parameters,
so weights load into either.  The two coincide only when a reshape and a transpose agree (one
channel or one token).

Deviations from the reference, on purpose: the unused ResNet ``fc``/``avgpool`` are not
registered (92,857,282 parameters for 3 input channels, as counted in use); any number of input
channels; non-square inputs work (token positions are computed from the actual H, W); the
[-1, 1] input scaling is left to nnU-Net's normalisation.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.network_architectures._layers import ConvBlock, TorchvisionResNetEncoder
from bus_nnunet.network_architectures._pretrained import LoadReport, PretrainedPart, load_resnet_encoder
from bus_nnunet.network_architectures._registry import register_model

__all__ = ["AnatomicalAttention", "AnatoSegNet", "anatosegnet", "load_imagenet_encoder",
           "TOKEN_LAYOUTS", "POSITION_BIASES"]

TOKEN_LAYOUTS = ("released", "intended")
POSITION_BIASES = ("raster", "row")


def _forward_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x[i + 1] - x[i] along ``dim``, 0 at the last index (the reference's torch.diff with the
    last slice appended)."""
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    return torch.diff(x, dim=dim, append=last)


class AnatomicalAttention(nn.Module):
    """Anatomical attention over a (B, C, H, W) feature map; returns a map of the same shape.

    Args:
        dim: channels C (divisible by ``num_heads``).
        num_heads: attention heads (8 in the paper).
        gamma: weight of the distance prior ``-gamma * |i - j|`` (1.0 in the paper, fixed).
        beta: constant added to every logit (3.5 in the paper's training); no effect under
            softmax, kept for fidelity.
        token_layout: ``"released"`` (reshape without transpose, as the published code) or
            ``"intended"`` (spatial differences); see the module docstring.
        position_bias: ``"raster"`` (|i - j| over the raster token order, as the published code)
            or ``"row"`` (|row_i - row_j|, a depth-only prior; an ablation).
    """

    def __init__(self, dim: int, num_heads: int = 8, gamma: float = 1.0, beta: float = 0.0,
                 token_layout: str = "released", position_bias: str = "raster"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if token_layout not in TOKEN_LAYOUTS:
            raise ValueError(f"token_layout must be one of {TOKEN_LAYOUTS}, got {token_layout!r}")
        if position_bias not in POSITION_BIASES:
            raise ValueError(f"position_bias must be one of {POSITION_BIASES}, got {position_bias!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.gamma, self.beta = float(gamma), float(beta)
        self.token_layout, self.position_bias = token_layout, position_bias
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, gamma={self.gamma}, beta={self.beta}, "
                f"token_layout={self.token_layout!r}, position_bias={self.position_bias!r}")

    # -- pieces (public so that tests and analyses can look at them) --------------------------------
    def differences(self, tokens: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Horizontal and vertical difference tokens, each (B, N, C), of tokens (B, N, C)."""
        b, n, c = tokens.shape
        if self.token_layout == "released":
            grid = tokens.reshape(b, c, height, width)  # no transpose: the reference's layout
        else:
            grid = tokens.transpose(1, 2).reshape(b, c, height, width)
        d_h = _forward_difference(grid, dim=3).flatten(2).transpose(1, 2)
        d_v = _forward_difference(grid, dim=2).flatten(2).transpose(1, 2)
        return d_h, d_v

    def position_logits(self, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """The fixed (N, N) prior ``beta - gamma * distance`` for an H x W token grid."""
        index = torch.arange(height * width, device=device)
        pos = index if self.position_bias == "raster" else torch.div(index, width, rounding_mode="floor")
        distance = (pos[:, None] - pos[None, :]).abs().to(dtype)
        return self.beta - self.gamma * distance

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), raster order
        d_h, d_v = self.differences(tokens, h, w)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        q_h, k_h, _ = self.qkv(d_h).chunk(3, dim=-1)
        q_v, k_v, _ = self.qkv(d_v).chunk(3, dim=-1)
        # The three logit terms are one dot product of concatenated queries and keys; scale by the
        # head width d (not 3d), as the reference does.  Logits and softmax in float32 under AMP.
        with torch.autocast(device_type=x.device.type, enabled=False):
            query = torch.cat([self._heads(q), self._heads(q_h), self._heads(q_v)], dim=-1).float()
            key = torch.cat([self._heads(k), self._heads(k_h), self._heads(k_v)], dim=-1).float()
            value = self._heads(v).float()
            bias = self.position_logits(h, w, device=x.device)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias,
                                                 scale=1.0 / math.sqrt(self.head_dim))
        out = out.transpose(1, 2).reshape(b, h * w, c).to(v.dtype)
        out = self.proj(out)
        return out.transpose(1, 2).reshape(b, c, h, w)


class UpBlock(nn.Module):
    """ConvTranspose 2x2 stride 2, zero-pad to the skip's size, cat[skip, up], ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = ConvBlock(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class AnatoSegNet(nn.Module):
    """ResNet-50 U-Net with anatomical attention after layer3 and layer4; returns raw logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, num_heads: int = 8, gamma: float = 1.0,
                 beta: float = 3.5, token_layout: str = "released", position_bias: str = "raster"):
        super().__init__()
        self.encoder = TorchvisionResNetEncoder(50, in_channels)
        attn = dict(num_heads=num_heads, gamma=gamma, beta=beta, token_layout=token_layout,
                    position_bias=position_bias)
        self.attention3 = AnatomicalAttention(1024, **attn)  # reference: attention4
        self.attention4 = AnatomicalAttention(2048, **attn)  # reference: center_attention
        self.up4 = UpBlock(2048, 1024)
        self.up3 = UpBlock(1024, 512)
        self.up2 = UpBlock(512, 256)
        self.up1 = UpBlock(256, 64)
        self.final_up = nn.ConvTranspose2d(64, 64, 2, stride=2)
        self.head = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        skip1 = e.relu(e.bn1(e.conv1(x)))
        skip2 = e.layer1(e.maxpool(skip1))
        skip3 = e.layer2(skip2)
        skip4 = self.attention3(e.layer3(skip3))
        center = self.attention4(e.layer4(skip4))
        y = self.up4(center, skip4)
        y = self.up3(y, skip3)
        y = self.up2(y, skip2)
        y = self.up1(y, skip1)
        return self.head(self.final_up(y))


# -- pretrained encoder ------------------------------------------------------------------------------
def load_imagenet_encoder(network: AnatoSegNet, source) -> LoadReport:
    """ImageNet ResNet-50 (torchvision or timm layout) into AnatoSegNet's encoder."""
    return load_resnet_encoder(network.encoder, source, "ResNet-50")


@register_model(size_divisor=32, min_size=64, deep_supervision_strides=None, deepest_features="attention4",
                pretrained=[PretrainedPart("resnet50.tv_in1k", load_imagenet_encoder)],
                paper="Huang et al., AnatoSegNet: anatomy-aware breast ultrasound segmentation, ISBI 2025")
def anatosegnet(in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False,
                **kwargs) -> AnatoSegNet:
    """AnatoSegNet (92.86 M parameters with 3 input channels; single output, so
    ``deep_supervision`` has no effect).  kwargs: ``token_layout`` ("released" | "intended"),
    ``position_bias`` ("raster" | "row"), ``gamma``, ``beta``, ``num_heads``."""
    return AnatoSegNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
