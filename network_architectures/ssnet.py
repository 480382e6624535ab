"""SS-Net: Semantic-aware and Spectrum-guided Network for breast-ultrasound tumour segmentation.

Yan, Li, Dong, Yang, "SS-Net: Semantic-aware and Spectrum-guided Network for Ultrasound Image Breast
Tumor Segmentation" (Pattern Recognition, submitted 2026); released code
``HvitAska-Eyjafjalla/SS-Net`` (class ``SS_UNet``), written from the paper and that code, layer by
layer:

* encoder: PVTv2-b2 stages 1-2 (partial ImageNet transfer, :data:`PVT_TRANSFER_PREFIXES`), then
  ``pwc2`` / ``encoder2`` (9 STA blocks) / ``pwc3`` / ``encoder3`` (3 STA blocks), each stage with a
  long residual;
* STA ("semantics tiles aggregation") = :class:`DTSBlock`: a bidirectional Mamba over tile
  descriptors scores the tiles, the pixels are scanned by one Mamba in ascending-score tile order
  and intra-tile (inverted) Hilbert order, channels are re-weighted ECA-style;
* SFR ("spectrum-guided feature recalibration") at each decoder level: :class:`DWTFusion` (Haar
  sub-bands, DCT channel attention, dynamic low/"high"-pass filters, vector-guided DySample) and
  :class:`HybridFrequencyAttention` (global + local DCT recalibration);
* decoder: three levels of 3 STA blocks, a x4 patch expansion and a 1x1 head.

Deviations from the released code, all deliberate: the head returns **raw logits** with
``num_classes`` channels (nnU-Net applies softmax; two classes are equivalent to the paper's sigmoid);
the Gumbel noise of the sub-band selection is sampled **only in training**, so eval is
deterministic; any number of input channels (a pretrained RGB stem is adapted with timm's ``adapt_input_conv``: summed
for one channel); rectangular
inputs are allowed (the DCT bases are built per axis); the DCT bases and index tables are
non-persistent buffers, so a state dict loads at any input size.  ``faithful_tiles=True`` (default)
keeps the released code's tile-scan index quirks (unfold memory read as tiles, Hilbert distance
map used as gather index); ``faithful_tiles=False`` scans real p x p tiles
in true Hilbert order.  Both variants have identical parameters.

Complexity at 1x3x256x256 (``num_classes=1``, checked by tests/test_ssnet.py): 17,535,538
trainable parameters (this module, as the released code); thop reports 16,210,955 "params" (this
module: identical) and 4,932,388,960 MACs for the released code -- the paper's 16.21 M / 4.93 G.
thop on this module gives 4,931,318,848 MACs: 1.07 M (0.02 %) fewer, because a few cheap ops
(bilinear upsampling, softmax, the tile-score mean) are functional calls here and modules there.
thop skips raw ``nn.Parameter`` tensors (SSM parameters, GroupNorm, DCT coefficients,
temperatures: 1,324,583 in all) and all einsums/scans.
"""
from __future__ import annotations

import math
import re
import warnings
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.network_architectures._pretrained import LoadReport, PretrainedPart, load_checkpoint
from bus_nnunet.network_architectures._registry import register_model
from bus_nnunet.network_architectures.selective_scan import selective_scan

__all__ = ["SSNet", "ssnet", "DTSBlock", "DynamicTilesScan", "SelectiveScan2D", "DWTFusion",
           "HybridFrequencyAttention", "PVTv2Stages12", "PVT_TRANSFER_PREFIXES", "load_imagenet_backbone"]


# ---------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------
def eca_kernel_size(channels: int) -> int:
    """ECA's adaptive 1-D kernel: int((log2 C + 1) / 2), made odd."""
    k = int((math.log2(channels) + 1) / 2)
    return k + 1 if k % 2 == 0 else k


class LearnableTemperature(nn.Module):
    """A scalar temperature clamped to ``[low, high]``."""

    def __init__(self, init: float, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self):
        return self.value.clamp(self.low, self.high)


class ECAGate(nn.Module):
    """Two stacked 1-D convolutions over the channel axis, then sigmoid: ``(B, C) -> (B, C)``."""

    def __init__(self, channels: int):
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv1 = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.conv2 = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, v):
        return torch.sigmoid(self.conv2(self.conv1(v.unsqueeze(1)))).squeeze(1)


def dct_basis(num_coeffs: int, height: int, width: int) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis ``(num_coeffs, num_coeffs, H, W)``: coefficient ``[v, u]`` of a
    plane is ``sum(basis[v, u] * plane)`` (computed for any ``num_coeffs``, also beyond H/W)."""

    def axis(n):
        pos = torch.arange(n, dtype=torch.float64)
        freq = torch.arange(num_coeffs, dtype=torch.float64)
        alpha = torch.where(freq == 0, 1 / math.sqrt(n), math.sqrt(2 / n))
        return alpha[:, None] * torch.cos((2 * pos[None, :] + 1) * freq[:, None] * math.pi / (2 * n))

    rows, cols = axis(height), axis(width)
    return torch.einsum("vh,uw->vuhw", rows, cols).float()


def dct_band_means(coeffs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Mean DCT magnitude-free band values of ``(..., P, P)`` coefficients: DC, [0:2]^2 ring,
    [2:4]^2 ring and the rest up to P."""
    p = coeffs.shape[-1]
    s2 = coeffs[..., :2, :2].sum((-1, -2))
    s4 = coeffs[..., :4, :4].sum((-1, -2))
    sp = coeffs.sum((-1, -2))
    dc = coeffs[..., 0, 0]
    return dc, (s2 - dc) / 3, (s4 - s2) / 12, (sp - s4) / (p * p - 16)


def hilbert_distance_table(p: int) -> torch.Tensor:
    """``h[y*p + x]`` = Hilbert-curve distance of pixel (x, y) on a p x p grid (``hilbertcurve``'s
    ``distances_from_points`` convention)."""
    table = []
    for y in range(p):
        for x in range(p):
            table.append(_hilbert_xy_to_d(p, x, y))
    return torch.tensor(table, dtype=torch.long)


def _hilbert_xy_to_d(p: int, x: int, y: int) -> int:
    # Skilling's transpose algorithm, as used by the `hilbertcurve` package (2 dims, log2(p) bits)
    bits = int(math.log2(p))
    coords = [x, y]
    m = 1 << (bits - 1)
    q = m
    while q > 1:
        pm = q - 1
        for i in range(2):
            if coords[i] & q:
                coords[0] ^= pm
            else:
                t = (coords[0] ^ coords[i]) & pm
                coords[0] ^= t
                coords[i] ^= t
        q >>= 1
    coords[1] ^= coords[0]
    t = 0
    q = m
    while q > 1:
        if coords[1] & q:
            t ^= q - 1
        q >>= 1
    coords[0] ^= t
    coords[1] ^= t
    d = 0
    for bit in range(bits - 1, -1, -1):
        for i in range(2):
            d = (d << 1) | ((coords[i] >> bit) & 1)
    return d


# ---------------------------------------------------------------------------------------------------
# PVTv2-b2, stages 1-2 (key names of the official whai362 checkpoint)
# ---------------------------------------------------------------------------------------------------
class OverlapPatchEmbed(nn.Module):
    def __init__(self, kernel: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PVTAttention(nn.Module):
    """Spatial-reduction attention."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, dim * 2, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class PVTDWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x, h, w):
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class PVTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = PVTDWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class PVTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: int, sr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PVTAttention(dim, num_heads, sr_ratio)
        from timm.layers import DropPath  # lazy: timm is heavy to import and only needed to build
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PVTMlp(dim, dim * mlp_ratio)

    def forward(self, x, h, w):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class PVTv2Stages12(nn.Module):
    """PVTv2-b2 truncated to stages 1-2 (``PyramidVisionTransformerImpr``): returns the 1/4 and 1/8
    feature maps (64 and 128 channels)."""

    def __init__(self, in_channels: int = 3, drop_path_rate: float = 0.1):
        super().__init__()
        dims, heads, depths, srs = (64, 128), (1, 2), (3, 4), (8, 4)
        rates = torch.linspace(0, drop_path_rate, 7).tolist()  # over b2's first 7 blocks
        self.patch_embed1 = OverlapPatchEmbed(7, 4, in_channels, dims[0])
        self.patch_embed2 = OverlapPatchEmbed(3, 2, dims[0], dims[1])
        self.block1 = nn.ModuleList(PVTBlock(dims[0], heads[0], 8, srs[0], rates[i]) for i in range(depths[0]))
        self.norm1 = nn.LayerNorm(dims[0], eps=1e-6)
        self.block2 = nn.ModuleList(PVTBlock(dims[1], heads[1], 8, srs[1], rates[3 + i]) for i in range(depths[1]))
        self.norm2 = nn.LayerNorm(dims[1], eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _stage(self, x, embed, blocks, norm):
        x, h, w = embed(x)
        for blk in blocks:
            x = blk(x, h, w)
        return norm(x).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, x):
        e0 = self._stage(x, self.patch_embed1, self.block1, self.norm1)
        e1 = self._stage(e0, self.patch_embed2, self.block2, self.norm2)
        return e0, e1


# ---------------------------------------------------------------------------------------------------
# STA: selective scan + dynamic tiles scan
# ---------------------------------------------------------------------------------------------------
class SelectiveScan2D(nn.Module):
    """Mamba S6 core with ``directions`` independent parameter sets: ``(B, K, D, L) -> (B, K, D, L)``.
    Runs in float32 with autocast off (CUDA kernel of ``mamba_ssm`` when available)."""

    def __init__(self, d_model: int, d_state: int = 8, directions: int = 1, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        self.d_model, self.d_state, self.directions = d_model, d_state, directions
        self.dt_rank = math.ceil(d_model / 16)
        k, d, r = directions, d_model, self.dt_rank
        x_proj = torch.empty(k, r + 2 * d_state, d)
        for i in range(k):  # PyTorch Linear default init
            nn.init.kaiming_uniform_(x_proj[i], a=math.sqrt(5))
        self.x_proj_weight = nn.Parameter(x_proj)
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-r ** -0.5, r ** -0.5))
        dt = torch.exp(torch.rand(k, d) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(k * d, 1))
        self.Ds = nn.Parameter(torch.ones(k * d))

    def forward(self, x):
        b, k, d, length = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            x_dbl = torch.einsum("bkdl,kcd->bkcl", x, self.x_proj_weight)
            dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
            dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
            y = selective_scan(x.reshape(b, k * d, length), dts.reshape(b, k * d, length), -torch.exp(self.A_logs),
                               bs.contiguous(), cs.contiguous(), self.Ds, delta_bias=self.dt_projs_bias.reshape(-1),
                               delta_softplus=True)
        return y.view(b, k, d, length)


class DynamicTilesScan(nn.Module):
    """STA token mixer on BHWC maps: tile scoring by a bidirectional Mamba over tile descriptors,
    score-ordered tile scan, ECA-style channel re-weighting (the paper's STA block)."""

    def __init__(self, dim: int, tile: int, d_state: int = 8, expand: int = 2, bottleneck: int = 4,
                 faithful_tiles: bool = True):
        super().__init__()
        self.tile, self.faithful_tiles = tile, faithful_tiles
        inner = dim * expand
        self.bottleneck = bottleneck
        squeezed = inner // bottleneck
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.dwconv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False)
        self.tiles_proj = nn.Sequential(nn.Conv2d(inner, inner, tile, tile, groups=inner, bias=False),
                                        nn.Conv2d(inner, squeezed, 1, bias=False))
        self.forward_core1 = SelectiveScan2D(squeezed, d_state, directions=2)
        self.forward_core0 = SelectiveScan2D(inner, d_state, directions=1)
        self.conv1d = ECAGate(squeezed)
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)
        hilbert = hilbert_distance_table(tile)
        if not faithful_tiles:  # true Hilbert traversal: the inverse of the distance map
            hilbert = torch.argsort(hilbert)
        self.register_buffer("intra_tiles_indices", hilbert, persistent=False)
        self.register_buffer("intra_tiles_indices_reverse", torch.argsort(hilbert), persistent=False)

    def tile_scan(self, feats: torch.Tensor, order: torch.Tensor, scan) -> torch.Tensor:
        """Reorder ``feats`` (B, d, H, W) into the tile sequence (tiles in ``order``, (B, d, N)),
        apply ``scan`` to (B, d, N*L) and fold the result back to (B, d, H, W)."""
        b, d, h, w = feats.shape
        p = self.tile
        unfolded = F.unfold(feats, p, stride=p)  # (B, d*L, N): [c*L + q, t]
        n_tiles, length = unfolded.shape[-1], p * p
        if self.faithful_tiles:  # released code: the (q, t) memory read as (tile, pixel)
            tiles = unfolded.reshape(b, d, n_tiles, length)
        else:
            tiles = unfolded.reshape(b, d, length, n_tiles).transpose(-1, -2)
        index = order.unsqueeze(-1).expand(-1, -1, -1, length)
        seq = tiles.gather(2, index)[..., self.intra_tiles_indices]
        out = scan(seq.reshape(b, d, n_tiles * length)).reshape(b, d, n_tiles, length)
        out = out[..., self.intra_tiles_indices_reverse]
        out = torch.zeros_like(out).scatter(2, index, out)
        # both variants write tile t, pixel q to fold's (q, t) slot; only the released read is scrambled
        return F.fold(out.transpose(-1, -2).reshape(b, d * length, n_tiles), (h, w), p, stride=p)

    def forward(self, x):
        b, h, w, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.dwconv(u.permute(0, 3, 1, 2).contiguous()))
        tiles = F.silu(self.tiles_proj(u)).flatten(2)  # (B, g, N), raster order
        y = self.forward_core1(torch.stack([tiles, tiles.flip(-1)], dim=1))
        scores = torch.sigmoid(y[:, 0] + y[:, 1].flip(-1))  # (B, g, N)
        channel_weight = self.conv1d(scores.mean(-1)).repeat_interleave(self.bottleneck, dim=1)  # (B, d)
        order = torch.argsort(scores.detach(), dim=-1).repeat_interleave(self.bottleneck, dim=1)  # ascending
        out = self.tile_scan(u, order, lambda seq: self.forward_core0(seq.unsqueeze(1)).squeeze(1))
        out = out.to(u.dtype) * (1 + channel_weight.to(u.dtype)[:, :, None, None])
        out = self.out_norm(out.permute(0, 2, 3, 1)) * F.silu(z)
        return self.out_proj(out)


class DTSBlock(nn.Module):
    """``x + DropPath(DTS(LayerNorm(x)))`` on BHWC maps."""

    def __init__(self, dim: int, tile: int, drop_path: float = 0.1, faithful_tiles: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = DynamicTilesScan(dim, tile, faithful_tiles=faithful_tiles)
        from timm.layers import DropPath  # lazy: timm is heavy to import and only needed to build
        self.drop_path = DropPath(drop_path)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
            if m.in_channels == m.out_channels:
                nn.init.orthogonal_(m.weight)

    def forward(self, x):
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class PatchEmbed2D(nn.Module):
    """Conv k=s=2 then LayerNorm, BCHW in, BHWC out."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 2, 2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


# ---------------------------------------------------------------------------------------------------
# SFR: DWT fusion and hybrid frequency attention
# ---------------------------------------------------------------------------------------------------
class DCTChannelAttention(nn.Module):
    """Low-pass DCT band statistics -> ECA gate -> ``sigmoid(BN(x + x*w))`` (first 7x7 coefficients)."""

    def __init__(self, channels: int, size: Tuple[int, int], num_coeffs: int = 7):
        super().__init__()
        self.register_buffer("dct", dct_basis(num_coeffs, *size), persistent=False)
        self.freq_weights = nn.Parameter(torch.rand(4))
        self.gate = ECAGate(channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        with torch.autocast(device_type=x.device.type, enabled=False):
            coeffs = torch.einsum("bchw,vuhw->bcvu", x.float(), self.dct)
            bands = torch.stack(dct_band_means(coeffs), dim=-1)  # (B, C, 4)
            w = self.gate((bands * self.freq_weights).sum(-1))
        w = w.to(x.dtype)[:, :, None, None]
        return torch.sigmoid(self.bn(x + x * w))


def haar_dwt(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """One-level Haar DWT (filters [1,1]/sqrt2 and [1,-1]/sqrt2, rows then columns): LL, LH, HL, HH."""
    s = 1 / math.sqrt(2)
    low_r, high_r = (x[:, :, 0::2] + x[:, :, 1::2]) * s, (x[:, :, 0::2] - x[:, :, 1::2]) * s
    ll = (low_r[..., 0::2] + low_r[..., 1::2]) * s
    hl = (low_r[..., 0::2] - low_r[..., 1::2]) * s
    lh = (high_r[..., 0::2] + high_r[..., 1::2]) * s
    hh = (high_r[..., 0::2] - high_r[..., 1::2]) * s
    return ll, lh, hl, hh


def sparsemax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sparsemax (Martins & Astudillo 2016) along ``dim``."""
    z = x.movedim(dim, -1)
    z = z - z.max(-1, keepdim=True).values
    z_sorted = torch.sort(z, dim=-1, descending=True).values
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(-1)
    support = (1 + k * z_sorted) > cumsum
    k_support = support.sum(-1, keepdim=True)
    tau = (cumsum.gather(-1, k_support - 1) - 1) / k_support.to(z.dtype)
    return torch.clamp(z - tau, min=0).movedim(-1, dim)


def apply_dynamic_filter(x: torch.Tensor, kernels: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """Per-pixel ``size x size`` filtering with reflect padding; ``kernels`` (B, G*size^2, H, W),
    channel c uses group ``c // (C/G)``."""
    b, c, h, w = x.shape
    taps = F.unfold(F.pad(x, [size // 2] * 4, mode="reflect"), size)  # (B, C*K^2, H*W), row-major taps
    taps = taps.view(b, groups, c // groups, size * size, h * w)
    return (taps * kernels.view(b, groups, 1, size * size, h * w)).sum(3).view(b, c, h, w)


class VectorSampling(nn.Module):
    """DySample-style x2 upsampling steered by a neighbourhood-similarity direction field."""

    #: the 8 neighbours (dy, dx), row-major
    NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

    def __init__(self, channels: int, groups: int = 4, scale: int = 2, top_k: int = 3):
        super().__init__()
        self.groups, self.scale, self.top_k = groups, scale, top_k
        self.norm = nn.GroupNorm(groups, channels)
        self.offset = nn.Conv2d(2 * groups, 2 * groups * scale * scale, 3, padding=1)
        self.scope = nn.Conv2d(channels, 2 * groups * scale * scale, 1, bias=False)
        self.temperature = LearnableTemperature(5.0, 1.0, 10.0)
        units = torch.tensor(self.NEIGHBOURS, dtype=torch.float32)
        self.register_buffer("unit_offsets", units / units.norm(dim=1, keepdim=True), persistent=False)
        half = (torch.arange(scale, dtype=torch.float32) + 0.5) / scale - 0.5  # (-0.25, 0.25)
        self.register_buffer("init_pos", half, persistent=False)

    def direction_field(self, x):
        b, c, h, w = x.shape
        g = self.groups
        unit = F.normalize(x.view(b, g, c // g, h, w), dim=2)
        padded = F.pad(unit, (1, 1, 1, 1))
        sims = torch.stack([(unit * padded[:, :, :, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]).sum(2)
                            for dy, dx in self.NEIGHBOURS], dim=2)  # (B, G, 8, H, W)
        kth = sims.topk(self.top_k, dim=2).values[:, :, -1:].detach()
        mask = torch.sigmoid(20 * (sims - kth) / self.temperature())
        weighted = sims * mask
        dirvec = torch.einsum("bgnhw,nd->bdghw", weighted, self.unit_offsets)  # d: (dy, dx)
        return dirvec.reshape(b, 2 * g, h, w)

    def forward(self, x):
        x = self.norm(x)
        b, c, h, w = x.shape
        g, s = self.groups, self.scale
        offset = self.offset(self.direction_field(x)) * torch.sigmoid(self.scope(x)) * 0.5
        offset = offset.view(b, 2, g, s, s, h, w).float()  # (coord x/y, group, i, j)
        col = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, 1, w) + 0.5
        row = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1, 1) + 0.5
        pos_x = offset[:, 0] + self.init_pos.view(1, 1, 1, s, 1, 1) + col.view(1, 1, 1, 1, 1, w)
        pos_y = offset[:, 1] + self.init_pos.view(1, 1, s, 1, 1, 1) + row.view(1, 1, 1, 1, h, 1)
        # (B, G, i, j, H, W) -> (B, G, H, i, W, j) -> (B*G, sH, sW)
        grid_x = (2 * pos_x / w - 1).permute(0, 1, 4, 2, 5, 3).reshape(b * g, s * h, s * w)
        grid_y = (2 * pos_y / h - 1).permute(0, 1, 4, 2, 5, 3).reshape(b * g, s * h, s * w)
        grid = torch.stack([grid_x, grid_y], dim=-1).to(x.dtype)
        out = F.grid_sample(x.reshape(b * g, c // g, h, w), grid, mode="bilinear", align_corners=False,
                            padding_mode="border")
        return out.view(b, c, s * h, s * w)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class DWTFusion(nn.Module):
    """Skip fusion: deep ``high`` (C_hr, H, W) + shallow ``low`` (C, 2H, 2W) ->
    (C, 2H, 2W).  Haar sub-bands of the merged map steer a dynamic "HPF" on the skip and a
    Hamming-windowed LPF on the deep feature, which is upsampled by :class:`VectorSampling`."""

    def __init__(self, high_channels: int, low_channels: int, high_size: Tuple[int, int], compress_ratio: int = 2,
                 groups: int = 4, lpf_kernel: int = 5, hpf_kernel: int = 3, dropout: float = 0.1):
        super().__init__()
        c = low_channels
        cc = c // compress_ratio
        self.groups, self.lpf_kernel, self.hpf_kernel = groups, lpf_kernel, hpf_kernel
        self.dct_attention = DCTChannelAttention(high_channels, high_size)
        self.high_proj = nn.Conv2d(high_channels, c, 1)
        self.compress_hpf = nn.Conv2d(c, cc, 1) if compress_ratio != 1 else nn.Identity()
        self.compress_lpf = nn.Conv2d(c, cc, 1) if compress_ratio != 1 else nn.Identity()
        self.mask_conv_HPF = nn.Sequential(
            nn.ReflectionPad2d(hpf_kernel // 2), nn.Conv2d(cc, cc, hpf_kernel, groups=cc),
            nn.Conv2d(cc, groups * hpf_kernel ** 2, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(groups * hpf_kernel ** 2))
        self.mask_conv_LPF = nn.Sequential(
            nn.ReflectionPad2d(lpf_kernel // 2), nn.Conv2d(cc, cc, lpf_kernel, groups=cc),
            nn.Conv2d(cc, groups * lpf_kernel ** 2, 1), nn.ReLU(inplace=True), nn.BatchNorm2d(groups * lpf_kernel ** 2))
        self.temperature = LearnableTemperature(1.0, 0.5, 2.0)
        self.upsample = VectorSampling(c, groups=groups)
        self.dropout = nn.Dropout(dropout)
        self.fuse_conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.fuse_bn = nn.BatchNorm2d(c)
        window = torch.hamming_window(lpf_kernel, periodic=False)
        self.register_buffer("hamming", torch.outer(window, window).flatten(), persistent=False)
        self._init_weights()

    def _init_weights(self):
        hpf_convs = {id(m) for m in self.mask_conv_HPF.modules()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if id(m) in hpf_convs:
                    nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
                    nn.init.normal_(m.bias, 0, 0.01)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                if m.in_channels == m.out_channels:
                    nn.init.orthogonal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _kernels(self, logits: torch.Tensor, size: int, window: Optional[torch.Tensor] = None):
        b, _, h, w = logits.shape
        k = logits.float().view(b, self.groups, size * size, h, w).softmax(2)
        if window is not None:
            k = k * window.view(1, 1, -1, 1, 1)
        return k / k.sum(2, keepdim=True)

    def subband_response(self, lh, hl, hh):
        """Sparse sub-band selection (Gumbel noise in training only) -> M_hf at 2x resolution."""
        subs = torch.stack([lh, hl, hh], dim=1).float()  # (B, 3, C, H, W)
        mag = subs.abs()
        response = mag / (mag.amax(dim=(-1, -2), keepdim=True) + 1e-8)
        if self.training:
            noise = torch.rand_like(response).clamp(1e-6, 1 - 1e-6)
            response = response - torch.log(-torch.log(noise))
        weights = sparsemax(response / self.temperature(), dim=1)
        dup = (weights * subs).sum(1)
        b, _, c, h, w = subs.shape
        stacked = torch.stack([(dup + subs.sum(1)) / 4, subs[:, 0], subs[:, 1], subs[:, 2]], dim=2)
        stacked = F.layer_norm(stacked.reshape(b, 4 * c, h, w), (h, w))
        return F.pixel_shuffle(stacked, 2).to(lh.dtype)

    def forward(self, high, low):
        h1 = self.high_proj(self.dct_attention(high))
        merged = F.interpolate(h1, scale_factor=2, mode="bilinear", align_corners=False) + low
        ll, lh, hl, hh = haar_dwt(merged)
        hf_map = self.subband_response(lh, hl, hh)
        hpf = self._kernels(self.mask_conv_HPF(self.compress_hpf(hf_map)), self.hpf_kernel)
        low_res = low + apply_dynamic_filter(low.float(), hpf, self.hpf_kernel, self.groups).to(low.dtype)
        lpf = self._kernels(self.mask_conv_LPF(self.compress_lpf(ll)), self.lpf_kernel, self.hamming)
        high_lpf = h1 + apply_dynamic_filter(h1.float(), lpf, self.lpf_kernel, self.groups).to(h1.dtype)
        up = self.upsample(self.dropout(high_lpf))
        y = channel_shuffle(up, self.groups) + channel_shuffle(self.dropout(low_res), self.groups)
        return self.fuse_bn(self.fuse_conv(y))


def hfa_patch_size(height: int, width: int) -> int:
    """HFA's DCT patch: 7 if both sides are multiples of 7, else 8 if both are multiples of 8."""
    for p in (7, 8):
        if height % p == 0 and width % p == 0:
            return p
    raise ValueError(f"HybridFrequencyAttention needs a {height}x{width} map with sides divisible by 7 or by 8")


class HybridFrequencyAttention(nn.Module):
    """Global + local (per P x P patch) DCT recalibration: ``sigmoid(BN(x + x*(w_g + o*l)))``."""

    def __init__(self, channels: int, size: Tuple[int, int]):
        super().__init__()
        h, w = size
        self.patch = p = hfa_patch_size(h, w)
        self.register_buffer("global_dct", dct_basis(p, h, w), persistent=False)
        self.register_buffer("local_dct", dct_basis(p, p, p), persistent=False)
        self.freq_weights = nn.Parameter(torch.rand(4))
        self.local_weights = nn.Parameter(torch.rand(2))
        self.local_scale = nn.Parameter(torch.rand(1))
        self.gate = ECAGate(channels)
        self.local_conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.patch
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            bands = torch.stack(dct_band_means(torch.einsum("bchw,vuhw->bcvu", xf, self.global_dct)), dim=-1)
            global_w = self.gate((bands * self.freq_weights).sum(-1))[:, :, None, None]
            patches = xf.view(b, c, h // p, p, w // p, p)
            local = torch.einsum("bcmhnw,vuhw->bcmnvu", patches, self.local_dct)
            _, _, mid, high = dct_band_means(local)
            local = torch.sigmoid(self.local_conv(self.local_weights[0] * mid + self.local_weights[1] * high))
            local = local.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
            gate = global_w + self.local_scale * local
        return torch.sigmoid(self.bn(x + x * gate.to(x.dtype)))


class FinalPatchExpand(nn.Module):
    """Linear C -> 16*C/4... x4 pixel expansion on BHWC maps, LayerNorm, to BCHW."""

    def __init__(self, dim: int, scale: int = 4):
        super().__init__()
        self.scale = scale
        self.out_dim = dim // scale
        self.expand = nn.Linear(dim, scale * scale * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x):
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, self.out_dim).permute(0, 1, 3, 2, 4, 5)
        return self.norm(x.reshape(b, h * s, w * s, self.out_dim)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------------
# SS-Net
# ---------------------------------------------------------------------------------------------------
def _as_size(input_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(s) for s in input_size)
    if len(size) != 2:
        raise ValueError(f"SS-Net is 2-D; got input_size {size}")
    return size


class SSNet(nn.Module):
    """SS-Net (released ``SS_UNet``) returning raw logits ``(B, num_classes, H, W)``.

    ``input_size`` must be the size of every input (DCT bases are fixed); sides that are multiples
    of 128 work as released; 224 runs degraded as in the released code (see :func:`check_input_size`).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, input_size: Union[int, Sequence[int]] = 256,
                 faithful_tiles: bool = True, drop_path_rate: float = 0.1, deep_supervision: bool = False):
        super().__init__()
        self.input_size = h, w = _as_size(input_size)
        check_input_size((h, w))
        self.deep_supervision = deep_supervision  # single-output network; kept for the trainer API
        self.in_channels, self.num_classes = in_channels, num_classes
        self.backbone = PVTv2Stages12(in_channels)

        def stage(dim, tile, depth):
            return nn.Sequential(*[DTSBlock(dim, tile, drop_path_rate, faithful_tiles) for _ in range(depth)])

        self.pwc2 = PatchEmbed2D(128, 256)
        self.encoder2 = stage(256, 2, 9)
        self.pwc3 = PatchEmbed2D(256, 512)
        self.encoder3 = stage(512, 2, 3)
        self.feature_fusion_2 = DWTFusion(512, 256, (h // 32, w // 32), compress_ratio=2)
        self.hfa2 = HybridFrequencyAttention(256, (h // 16, w // 16))
        self.decoder2 = stage(256, 4, 3)
        self.feature_fusion_1 = DWTFusion(256, 128, (h // 16, w // 16), compress_ratio=2)
        self.hfa1 = HybridFrequencyAttention(128, (h // 8, w // 8))
        self.decoder1 = stage(128, 4, 3)
        self.feature_fusion_0 = DWTFusion(128, 64, (h // 8, w // 8), compress_ratio=1)
        self.hfa0 = HybridFrequencyAttention(64, (h // 4, w // 4))
        self.decoder0 = stage(64, 8, 3)
        self.final_expanding = FinalPatchExpand(64, 4)
        self.final_conv = nn.Conv2d(16, num_classes, 1)

    def forward(self, x):
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"SSNet was built for input_size {self.input_size}, got {tuple(x.shape[-2:])}")
        e0, e1 = self.backbone(x)
        e1_p = self.pwc2(e1)
        e2 = (self.encoder2(e1_p) + e1_p).permute(0, 3, 1, 2)
        e2_p = self.pwc3(e2)
        e3 = (self.encoder3(e2_p) + e2_p).permute(0, 3, 1, 2)
        d2 = self.decoder2(self.hfa2(self.feature_fusion_2(e3, e2)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        d1 = self.decoder1(self.hfa1(self.feature_fusion_1(d2, e1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        d0 = self.decoder0(self.hfa0(self.feature_fusion_0(d1, e0)).permute(0, 2, 3, 1))
        return self.final_conv(self.final_expanding(d0))


def check_input_size(size: Sequence[int]) -> None:
    """Raise ValueError for sizes SS-Net cannot take; warn for those the released code runs degraded
    (tiles that do not divide the map: unfold drops, fold zero-fills the remainder, e.g. 224)."""
    h, w = size
    if h < 128 or w < 128:
        raise ValueError(f"SS-Net needs inputs of at least 128x128 (multiples of 128), got {h}x{w}")
    for stride in (16, 8, 4):
        if (h % stride) or (w % stride):
            raise ValueError(f"SS-Net needs input sides divisible by 32, got {h}x{w}")
        try:
            hfa_patch_size(h // stride, w // stride)
        except ValueError:
            raise ValueError(f"SS-Net cannot take {h}x{w}: the 1/{stride} map {h // stride}x{w // stride} has sides "
                             f"not divisible by 7 or 8 (use multiples of 128, e.g. 256)") from None
    for stride, tile in ((32, 2), (16, 4), (4, 8)):
        if (h // stride) % tile or (w // stride) % tile or h % 32 or w % 32:
            warnings.warn(f"SS-Net at {h}x{w}: the 1/{stride} map is not a multiple of its {tile}x{tile} tiles; the "
                          f"released code then drops / zero-fills the remainder (degraded). Prefer multiples of 128.")
            return


# ---------------------------------------------------------------------------------------------------
# partial transfer of PVTv2-b2 (stages 1-2)
# ---------------------------------------------------------------------------------------------------
#: prefixes of the official ``pvt_v2_b2.pth`` keys kept by the partial transfer
PVT_TRANSFER_PREFIXES = ("patch_embed1.", "block1.", "norm1.", "patch_embed2.", "block2.", "norm2.")


def _timm_to_official(key: str) -> Optional[str]:
    """Map a timm ``pvt_v2_*`` key to the official whai362 layout (None for keys with no counterpart)."""
    if key.startswith("patch_embed."):  # timm's stem is stage 1's patch embedding
        return "patch_embed1." + key[len("patch_embed."):]
    if key.startswith("head."):
        return key
    match = re.match(r"stages\.(\d)\.(downsample|blocks|norm)\.(.*)", key)
    if match is None:
        return None
    stage, part, rest = int(match.group(1)) + 1, match.group(2), match.group(3)
    if part == "downsample":
        return f"patch_embed{stage}.{rest}"
    if part == "norm":
        return f"norm{stage}.{rest}"
    rest = re.sub(r"^(\d+)\.mlp\.dwconv\.", r"\1.mlp.dwconv.dwconv.", rest)
    return f"block{stage}.{rest}"


def pvt_filter(state: Dict[str, torch.Tensor], module: nn.Module = None):
    """``filter_fn`` for the one pretrained path: the stage-1/2 tensors of a PVTv2-b2 checkpoint, in
    the official key layout. Accepts the official whai362 ``pvt_v2_b2.pth`` and timm's ``pvt_v2_b2``
    layout (detected by its ``stages.`` keys)."""
    timm_layout = any(k.startswith("stages.") for k in state)
    selected = {}
    for key, value in state.items():
        name = _timm_to_official(key) if timm_layout else key
        if name is not None and name.startswith(PVT_TRANSFER_PREFIXES):
            selected[name] = value
    return selected, []


def load_imagenet_backbone(model: SSNet, checkpoint) -> LoadReport:
    """Partial transfer: PVTv2-b2 stages 1-2 into ``model.backbone`` (all 152 tensors, stem adapted
    to ``model.in_channels``). Returns the :class:`LoadReport`; raises PretrainedMismatchError."""
    return load_checkpoint(model.backbone, checkpoint, "PVTv2-b2 stage-1/2", pvt_filter,
                           stem="patch_embed1.proj.weight",
                           hint="the official pvt_v2_b2.pth (whai362/PVT) or timm's pvt_v2_b2 state dict")


@register_model(size_divisor=128, min_size=128, deep_supervision_strides=None, takes_input_size=True,
                deepest_features="feature_fusion_2:input",  # e3, the 1/32 encoder output
                pretrained=[PretrainedPart("pvt_v2_b2.in1k", load_imagenet_backbone, probe_kwargs={"input_size": 128})],
                paper="Yan et al., SS-Net: Semantic-aware and Spectrum-guided Network for Ultrasound Image Breast "
                      "Tumor Segmentation (Pattern Recognition, submitted 2026)")
def ssnet(in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False,
          input_size: Union[int, Sequence[int]] = (256, 256), faithful_tiles: bool = True, **kwargs) -> SSNet:
    """SS-Net as released (``faithful_tiles=True``: tile-scan index quirks kept; False: real tiles in
    Hilbert order).  Single output; ``deep_supervision`` has no effect."""
    return SSNet(in_channels, num_classes, input_size, faithful_tiles=faithful_tiles,
                 deep_supervision=deep_supervision, **kwargs)
