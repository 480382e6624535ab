"""Multi-encoder attention U-Net (Anari et al., "Explainable attention based breast tumor
segmentation using a combination of UNet, ResNet, DenseNet, and EfficientNet models",
Scientific Reports 2025, doi:10.1038/s41598-024-84504-y).

Architecture, as pinned by the paper's parameter table:

* up to three timm encoders run on the same input -- ResNet-18 (512 ch), DenseNet-121 with norm5
  (1024 ch), EfficientNet-B0 with its 1×1 conv head (1280 ch) -- each taken at stride 32
  (``forward_features`` of the classifier-less model), concatenated along channels;
* Dropout(0.3) on the concatenated bottleneck;
* a decoder of four stages ``Upsample×2 -> depthwise-separable block -> attention`` with widths
  512, 256, 128, 64 (ReLU6 activations), attention being CBAM (reduction 8, 7×7 spatial conv,
  bias-free), an embedded-Gaussian Non-local block, or nothing;
* a final ``Upsample×2`` and a 1×1 head with ``num_classes`` outputs (raw logits).

No encoder skip features enter the decoder: the paper's parameter counts leave no room for them.
With three encoders, 3 input channels and a 1-channel head (the paper's sigmoid output) the
network has exactly 23,794,557 parameters (plain), 23,881,989 (CBAM) and 24,493,277 (Non-local).

The paper's text nevertheless describes a U-Net with skip connections.  ``encoder_skips=True``
builds that reading: every decoder stage also receives, concatenated after its upsampling, the
features of every encoder at the same stride (16, 8, 4, 2; timm's ``feature_info`` levels), so
the decoder sees more than the 1/32-resolution bottleneck.  The default stays Table-1-exact.
"""
from __future__ import annotations

from typing import Dict, Iterable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.network_architectures._pretrained import LoadReport, PretrainedPart, load_timm_model
from bus_nnunet.network_architectures._registry import register_model

__all__ = ["ENCODERS", "ATTENTIONS", "DepthwiseSeparableBlock", "CBAM", "NonLocalBlock", "AttentionUNet",
           "attention_unet"]

#: timm model name -> channels of its stride-32 feature map (``forward_features``)
ENCODERS: Dict[str, int] = {"resnet18": 512, "densenet121": 1024, "efficientnet_b0": 1280}
ATTENTIONS = ("none", "cbam", "nonlocal")
DECODER_WIDTHS = (512, 256, 128, 64)


class DepthwiseSeparableBlock(nn.Sequential):
    """Depthwise 3×3 conv -> BN -> ReLU6 -> pointwise 1×1 conv -> BN -> ReLU6 (convs bias-free)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class ChannelAttention(nn.Module):
    """CBAM channel gate: sigmoid(MLP(avg-pool) + MLP(max-pool)), a shared bias-free MLP."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial gate: sigmoid(conv7×7([mean over channels, max over channels])), bias-free."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel gate, then spatial gate,
    no residual. ``2*C*C/reduction + 7*7*2`` parameters."""

    def __init__(self, channels: int, reduction: int = 8, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian Non-local block (Wang et al. 2018) with C/2 inner channels.

    ``z = x + W(softmax_j(theta_i . phi_j) g_j)``; theta, phi, g and W are 1×1 convs with bias, no
    BN (``2*C*C + 2.5*C`` parameters). W starts at zero, so the block starts as the identity. The
    attention runs through ``scaled_dot_product_attention`` with scale 1 (the embedded Gaussian
    has no 1/sqrt(d)), which uses memory-efficient kernels instead of an N×N matrix where it can.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 2)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, 1, N, C/2) token layout: one "head" holding all inner channels
        q = self.theta(x).flatten(2).transpose(1, 2).unsqueeze(1)
        k = self.phi(x).flatten(2).transpose(1, 2).unsqueeze(1)
        v = self.g(x).flatten(2).transpose(1, 2).unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        y = y.squeeze(1).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


def _attention_block(kind: str, channels: int) -> nn.Module:
    if kind == "cbam":
        return CBAM(channels)
    if kind == "nonlocal":
        return NonLocalBlock(channels)
    return nn.Identity()


class DecoderStage(nn.Module):
    """Upsample×2 (bilinear) [-> concatenate encoder skips] -> depthwise-separable block -> attention."""

    def __init__(self, in_channels: int, out_channels: int, attention: str, skip_channels: int = 0):
        super().__init__()
        self.block = DepthwiseSeparableBlock(in_channels + skip_channels, out_channels)
        self.attention = _attention_block(attention, out_channels)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skips:
            x = torch.cat([x] + [_match_size(s, x.shape[-2:]) for s in skips], dim=1)
        return self.attention(self.block(x))


def _match_size(t: torch.Tensor, size) -> torch.Tensor:
    """A skip feature at the decoder's size (they differ only when H, W are not multiples of 32)."""
    return t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=False)


#: strides whose encoder features feed the decoder stages with ``encoder_skips=True`` (stage order)
SKIP_STRIDES = (16, 8, 4, 2)


def _keep_output(module: nn.Module, inputs, output) -> None:
    """Forward hook: keep the output on the module itself (so a deep copy of the network keeps
    working: the hook refers to no particular network)."""
    module.kept_output = output


def _skip_modules(encoder: nn.Module) -> Dict[int, Tuple[str, int]]:
    """stride -> (module name, channels) of a timm encoder's last feature level at that stride."""
    levels = {}
    for info in encoder.feature_info:
        if info["reduction"] in SKIP_STRIDES:
            levels[info["reduction"]] = (info["module"], info["num_chs"])
    missing = [s for s in SKIP_STRIDES if s not in levels]
    if missing:
        raise ValueError(f"{type(encoder).__name__} has no feature level at stride {missing}")
    return levels


def _normalise_encoders(encoders: Iterable[str]) -> Tuple[str, ...]:
    names = tuple(encoders)
    unknown = [n for n in names if n not in ENCODERS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"encoders={names!r}: choose a non-empty subset of {list(ENCODERS)} without repeats")
    return names


class AttentionUNet(nn.Module):
    """Parallel timm encoders fused at stride 32, depthwise-separable decoder with optional
    CBAM / Non-local attention. Returns raw logits of shape (B, num_classes, H, W).

    ``freeze_encoder=True`` sets ``requires_grad=False`` on every encoder parameter and keeps the
    encoders in eval mode (BatchNorm running statistics stay the pretrained ones) whatever
    ``train()`` is called with.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 encoders: Sequence[str] = ("resnet18", "densenet121", "efficientnet_b0"),
                 attention: str = "none", dropout: float = 0.3, freeze_encoder: bool = False,
                 encoder_skips: bool = False):
        super().__init__()
        import timm  # heavy; only when a network is built

        self.encoder_names = _normalise_encoders(encoders)
        attention = attention.lower().replace("-", "").replace("_", "")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r}: choose one of {ATTENTIONS}")
        self.attention = attention
        self.in_channels = in_channels
        self.freeze_encoder = bool(freeze_encoder)
        # num_classes=0 + global_pool='' keeps everything up to the stride-32 features (incl.
        # DenseNet's norm5 and EfficientNet's 1280-channel conv head), which the paper's counts need
        self.encoders = nn.ModuleDict({
            name: timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=in_channels)
            for name in self.encoder_names})
        fused = sum(ENCODERS[n] for n in self.encoder_names)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        widths = (fused,) + DECODER_WIDTHS
        self.encoder_skips = bool(encoder_skips)
        skip_channels = [0] * len(DECODER_WIDTHS)
        #: per decoder stage, the (encoder, module name) pairs whose outputs it receives
        self.skip_layers = [[] for _ in DECODER_WIDTHS]
        if self.encoder_skips:
            for name, enc in self.encoders.items():
                for stride, (module, channels) in _skip_modules(enc).items():
                    stage = SKIP_STRIDES.index(stride)
                    skip_channels[stage] += channels
                    self.skip_layers[stage].append((name, module))
                    enc.get_submodule(module).register_forward_hook(_keep_output)
        self.decoder = nn.ModuleList([DecoderStage(widths[i], widths[i + 1], attention, skip_channels[i])
                                      for i in range(len(DECODER_WIDTHS))])
        self.head = nn.Conv2d(DECODER_WIDTHS[-1], num_classes, 1)
        if self.freeze_encoder:
            for p in self.encoders.parameters():
                p.requires_grad_(False)
            self.encoders.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoders.eval()  # frozen encoders keep their BatchNorm statistics
        return self

    def _take_skips(self, stage: int):
        skips = []
        for encoder, module in self.skip_layers[stage]:
            layer = self.encoders[encoder].get_submodule(module)
            skips.append(layer.kept_output)
            layer.kept_output = None  # no reference to activations between calls
        return skips

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = torch.cat([enc.forward_features(x) for enc in self.encoders.values()], dim=1)
        y = self.dropout(features)
        for i, stage in enumerate(self.decoder):
            y = stage(y, self._take_skips(i))
        y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        if y.shape[-2:] != size:  # only if H, W are not multiples of 32
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.head(y)


def _encoder_loader(encoder: str):
    def load(network: AttentionUNet, source) -> LoadReport:
        return load_timm_model(network.encoders[encoder], source)
    load.__name__ = load.__qualname__ = f"load_{encoder}_encoder"
    return load


#: the timm ImageNet weights of each encoder (the paper's Keras ImageNet encoders have no exact timm
#: counterpart: torchvision's ResNet-18 / DenseNet-121 and timm's own EfficientNet-B0)
ENCODER_WEIGHTS = {"resnet18": "resnet18.tv_in1k", "densenet121": "densenet121.tv_in1k",
                   "efficientnet_b0": "efficientnet_b0.ra_in1k"}


@register_model(size_divisor=32, min_size=32, deep_supervision_strides=None,
                deepest_features="dropout",  # the encoders' fused stride-32 features
                pretrained=[PretrainedPart(w, _encoder_loader(e), slot=e, probe_kwargs={"encoders": (e,)})
                            for e, w in ENCODER_WEIGHTS.items()],
                paper="Anari et al., Sci. Rep. 2025 (UNet + CBAM/Non-local, ResNet/DenseNet/EfficientNet encoders)")
def attention_unet(in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False,
                   encoders: Sequence[str] = ("resnet18", "densenet121", "efficientnet_b0"),
                   attention: str = "none", dropout: float = 0.3, freeze_encoder: bool = False,
                   encoder_skips: bool = False, **kwargs) -> AttentionUNet:
    """Multi-encoder attention U-Net. ``attention``: 'none' | 'cbam' | 'nonlocal'; ``encoders``: any
    subset of resnet18, densenet121, efficientnet_b0; ``encoder_skips``: the reading with U-Net skip
    connections (not Table-1-exact). Single output (no deep supervision)."""
    if kwargs:
        raise TypeError(f"attention_unet: unexpected arguments {sorted(kwargs)}")
    return AttentionUNet(in_channels, num_classes, encoders, attention, dropout, freeze_encoder, encoder_skips)
