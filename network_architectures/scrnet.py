"""SCRNet: Spatial-Channel Regulation Network (Xu & Wang, arXiv 2508.13899, 2025).

No official code exists; this is a reconstruction from the paper, SCConv (CVPR'23), ACmix (CVPR'22)
and simplified SKNet, following the paper's description.

Architecture (input B x in_channels x H x W, H and W multiples of 16, at least 64)::

    E1..E5   ConvBlock (2 x [conv3x3 + BN + ReLU]) -> SCRM      widths 64/128/256/512/1024
             (max-pool 2x2 between levels; the skip is taken after SCRM)
    D4..D1   TransConv3x3 s2 + BN + ReLU -> concat skip -> ConvBlock
    head     conv1x1 (64 -> num_classes), raw logits

    SCRM(X)  = FAM(ChannelRefinement(SpatialGate(X)))      (no outer residual, like SCConv)
    FAM      = FUSE(CCAPM(X_H, X_L), CCAPM(X_L, X_H))       (two CCAPMs, separate weights)
    CCAPM    = W_conv * conv path (ACmix shift conv) + W_cross * local cross-attention
    FUSE     = per-channel 2-way softmax of the GAPs of the two CCAPM outputs (no parameters)

Choices the paper leaves open (the spec's default reading; alternatives as keyword arguments):

1.  Widths 64-128-256-512-1024 (the CMU-Net benchmark UNet the paper compares against).
2.  SCRM on all 5 encoder levels, bottleneck included (``scrm_levels=4``: E1-E4 only).
3.  GroupNorm groups G = 16 (``gn_groups``).
4.  Channel informativeness weights ``softmax(gamma)`` (paper eq. 1; ``channel_weights="ratio"``
    gives SCConv's ``gamma / sum(gamma)``).  With softmax every weight is positive, so the gate
    mask is exactly ``GN(X) >= 0``.
5.  Gate weights ``W1 = M + (1 - M) R`` and ``W2 = (1 - M) R``, applied to the input X; then the
    SCConv cross reconstruction ``concat(A1 + B2, A2 + B1)``.
6.  Channel refinement: split ratio 1/2, squeeze ratio 2, group-wise conv 3x3 with 2 groups.
7.  Feature-initialise block: conv1x1 + one ConvMixer block (depthwise 7x7, GELU, BN).
8.  "Linear embedding": separate conv1x1 q/k/v embeddings on the FI outputs of the attention path.
9.  Cross-attention: ACmix's local 7x7 window attention, 4 heads, scale d^-1/2, relative
    position from a conv1x1 on a [-1, 1] coordinate grid, reflection padding.  Memory-light
    k and v are padded once and the 49 offsets are strided views of them (never
    unfolded into B x C x 49 x H x W tensors); a hand-written backward accumulates the key and
    value gradients in place into one padded buffer each, and with ``checkpoint_attention`` (the
    default) the attention weights are recomputed there instead of being stored.  Peak memory at
    batch 8, 256 x 256 is measured in ``benchmarks/results/scrnet_memory.md``.
    ACmix adds ``q . pe_p`` to every logit of a pixel; softmax cancels that constant, so it is left
    out (the result is identical).
10. ``W_conv`` and ``W_cross`` learnable scalars initialised to 0.5 (ACmix).
11. FUSE: per-channel 2-way softmax (paper eq. 10-12; eq. 12's ``W*G`` read as ``W*Y``).
12. Decoder up-sampling: ConvTranspose 3x3 stride 2 (padding 1, output padding 1) + BN + ReLU.
13. Ablation "w/o FAM" (``use_fam=False``): FAM replaced by ``X_H + X_L`` (the paper reports the
    better of sum and concatenation; sum has no parameters).

Parameter count (3 input channels, 1 output, as in the paper; derived from the layer shapes): 63,213,805.
With nnU-Net's 1 input channel and 2 output classes: 63,212,718.
"""
from __future__ import annotations

from typing import List

import math

import torch
import torch.nn.functional as F
from torch import nn

from bus_nnunet.network_architectures._layers import ConvBlock
from bus_nnunet.network_architectures._registry import register_model

__all__ = ["SCRNet", "SCRM", "SpatialGate", "ChannelRefinement", "FeatureAggregation", "CCAPM",
           "local_window_attention", "scrnet"]


class UpBlock(nn.Sequential):
    """Transposed conv 3x3 stride 2 (exact x2) + BN + ReLU (paper Fig. 3: kernel 3, stride 2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SpatialGate(nn.Module):
    """Spatial gate (SCConv's SRU as described by SCRNet, eq. 1-3).

    ``GN(X)`` weighted per channel by ``softmax(gamma)`` gives R = sigmoid(.) in (0, 1); entries with
    R >= 0.5 are informative.  Informative entries keep all of X in the first branch, the others
    are spread over both branches with weight R; the two branches are cross-added by halves.
    """

    def __init__(self, channels: int, groups: int = 16, threshold: float = 0.5, channel_weights: str = "softmax"):
        super().__init__()
        if channels % 2 or channels % groups:
            raise ValueError(f"SpatialGate: {channels} channels must be even and divisible by {groups} groups")
        if channel_weights not in ("softmax", "ratio"):
            raise ValueError(f"channel_weights must be 'softmax' or 'ratio', not {channel_weights!r}")
        self.gn = nn.GroupNorm(groups, channels)
        self.threshold = threshold
        self.threshold_logit = math.log(threshold / (1 - threshold))
        self.channel_weights = channel_weights

    def gate(self, x: torch.Tensor):
        """(R, M): the reweighting map sigmoid(GN(X) * w) and the informative mask 1[R >= threshold]."""
        gamma = self.gn.weight
        w = torch.softmax(gamma, 0) if self.channel_weights == "softmax" else gamma / gamma.sum()
        weighted = self.gn(x) * w.view(1, -1, 1, 1).to(x.dtype)
        reweight = torch.sigmoid(weighted)
        # R >= t  <=>  GN(X) * w >= logit(t); tested before the sigmoid, which rounds tiny values to 0.5
        mask = (weighted >= self.threshold_logit).to(reweight.dtype)
        return reweight, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reweight, mask = self.gate(x)
        w2 = (1 - mask) * reweight
        x1 = (mask + w2) * x  # W1 = M + (1 - M) R
        x2 = w2 * x
        a1, a2 = torch.chunk(x1, 2, dim=1)
        b1, b2 = torch.chunk(x2, 2, dim=1)
        return torch.cat([a1 + b2, a2 + b1], dim=1)


class ChannelRefinement(nn.Module):
    """SCConv's CRU split + transform (eq. 4-5); returns (X_H, X_L), each B x C x H x W."""

    def __init__(self, channels: int, alpha: float = 0.5, squeeze: int = 2, groups: int = 2, kernel: int = 3):
        super().__init__()
        self.up_ch = int(alpha * channels)
        low_ch = channels - self.up_ch
        up_s, low_s = self.up_ch // squeeze, low_ch // squeeze
        self.squeeze_up = nn.Conv2d(self.up_ch, up_s, 1, bias=False)
        self.squeeze_low = nn.Conv2d(low_ch, low_s, 1, bias=False)
        self.gwc = nn.Conv2d(up_s, channels, kernel, padding=kernel // 2, groups=groups)
        self.pwc1 = nn.Conv2d(up_s, channels, 1, bias=False)
        self.pwc2 = nn.Conv2d(low_s, channels - low_s, 1, bias=False)

    def forward(self, x: torch.Tensor):
        up = self.squeeze_up(x[:, :self.up_ch])
        low = self.squeeze_low(x[:, self.up_ch:])
        x_high = self.gwc(up) + self.pwc1(up)
        x_low = torch.cat([self.pwc2(low), low], dim=1)
        return x_high, x_low


class ConvMixerBlock(nn.Module):
    """CMU-Net's ConvMixer block: x + BN(GELU(DW conv k x k)), then BN(GELU(conv1x1))."""

    def __init__(self, channels: int, kernel: int = 7):
        super().__init__()
        self.depthwise = nn.Sequential(nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels),
                                       nn.GELU(), nn.BatchNorm2d(channels))
        self.pointwise = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), nn.BatchNorm2d(channels))

    def forward(self, x):
        return self.pointwise(x + self.depthwise(x))


class FeatureInit(nn.Sequential):
    """Feature-initialise block: conv1x1 + ConvMixer block."""

    def __init__(self, channels: int, kernel: int = 7):
        super().__init__(nn.Conv2d(channels, channels, 1), ConvMixerBlock(channels, kernel))


# Per-offset products below this many elements (batch x heads x H x W), and all of them off the
# CPU, reduce over the head dimension with one temporary (kernel launches dominate there); larger
# CPU planes accumulate channel by channel in place, without a temporary (large fresh CPU buffers
# are paid for in page faults): about 2x faster at 256 x 256.
_CHANNEL_LOOP_MIN_PLANE = 32768


def _window_offsets(window: int):
    return [(i, j) for i in range(window) for j in range(window)]


def _window_dots(a: torch.Tensor, padded: torch.Tensor, out: torch.Tensor, window: int,
                 loop_channels: bool) -> torch.Tensor:
    """``out[n] = sum_c a[:, c] * shift_n(padded)[:, c]`` for every window offset n.
    a: N x d x H x W; padded: N x d x (H + window - 1) x (W + window - 1); out: window^2 x N x H x W."""
    _, d, h, w = a.shape
    scratch = None if loop_channels else torch.empty_like(a)
    for n, (i, j) in enumerate(_window_offsets(window)):
        shifted = padded[:, :, i:i + h, j:j + w]
        if loop_channels:
            torch.mul(a[:, 0], shifted[:, 0], out=out[n])
            for c in range(1, d):
                out[n].addcmul_(a[:, c], shifted[:, c])
        else:
            torch.sum(torch.mul(a, shifted, out=scratch), dim=1, out=out[n])
    return out


class _WindowAttentionInputs:
    """Scaled queries and reflection-padded keys/values in the compute dtype (at least float32),
    head-split to (B * heads) x d x H x W, shared by the forward and the backward pass."""

    def __init__(self, q, k, v, heads: int, window: int):
        b, c, h, w = q.shape
        self.shape, self.heads, self.window, self.pad = (b, c, h, w), heads, window, window // 2
        self.dtype = torch.promote_types(q.dtype, torch.float32)
        self.head_shape = (b * heads, c // heads, h, w)
        self.scale = (c // heads) ** -0.5
        self.loop_channels = q.device.type == "cpu" and b * heads * h * w >= _CHANNEL_LOOP_MIN_PLANE
        self.q = q.reshape(self.head_shape).to(self.dtype) * self.scale
        self.k = self._padded(k)
        self.v = self._padded(v)

    def _padded(self, t):
        return F.pad(t.reshape(self.head_shape).to(self.dtype), (self.pad,) * 4, mode="reflect")

    def shifted(self, padded, n):
        i, j = divmod(n, self.window)
        return padded[:, :, i:i + self.head_shape[2], j:j + self.head_shape[3]]

    def weights(self) -> torch.Tensor:
        """Softmax over the window offsets of q . k_shifted: window^2 x (B * heads) x H x W."""
        logits = self.q.new_empty((self.window ** 2, *self.head_shape[:1], *self.head_shape[2:]))
        _window_dots(self.q, self.k, logits, self.window, self.loop_channels)
        logits.sub_(logits.amax(0, keepdim=True)).exp_()  # softmax in place
        return logits.div_(logits.sum(0, keepdim=True))

    def unpad(self, padded_grad):
        """Gradient w.r.t. the unpadded tensor (reflected border gradients folded back), B x C x H x W."""
        grad = torch.ops.aten.reflection_pad2d_backward(padded_grad, padded_grad.new_empty(self.head_shape),
                                                        [self.pad] * 4)
        return grad.reshape(self.shape)


def _window_attention_output(inputs: _WindowAttentionInputs, attn: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(inputs.q)
    for n in range(attn.shape[0]):
        out.addcmul_(attn[n].unsqueeze(1), inputs.shifted(inputs.v, n))
    return out.reshape(inputs.shape)


class _LocalWindowAttention(torch.autograd.Function):
    """Window attention with a hand-written backward: the gradients of the shifted keys and values
    are accumulated in place into one padded buffer each (autograd would allocate a padded
    zero tensor per offset).  With ``recompute_weights`` only q, k, v are kept for the backward
    pass and the attention weights are recomputed there (activation checkpointing of the logits)."""

    @staticmethod
    def forward(ctx, q, k, v, heads, window, recompute_weights):
        inputs = _WindowAttentionInputs(q, k, v, heads, window)
        attn = inputs.weights()
        out = _window_attention_output(inputs, attn).to(v.dtype)
        ctx.heads, ctx.window = heads, window
        ctx.save_for_backward(q, k, v, None if recompute_weights else attn)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, attn = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        inputs = _WindowAttentionInputs(q, k, v, ctx.heads, ctx.window)
        if attn is None:
            attn = inputs.weights()
        grad = grad_out.reshape(inputs.head_shape).to(inputs.dtype).contiguous()
        grad_q = grad_k = grad_v = None
        if need_v:  # out = sum_n attn_n * shift_n(v)
            padded = torch.zeros_like(inputs.v)
            for n in range(attn.shape[0]):
                inputs.shifted(padded, n).addcmul_(attn[n].unsqueeze(1), grad)
            grad_v = inputs.unpad(padded).to(v.dtype)
            del padded
        if need_q or need_k:
            # d out / d attn_n, then the softmax backward in place: attn * (g - sum(attn * g))
            grad_logits = _window_dots(grad, inputs.v, torch.empty_like(attn), ctx.window, inputs.loop_channels)
            inputs.v = None
            grad_logits.sub_((attn * grad_logits).sum(0, keepdim=True)).mul_(attn)
            del attn
            if need_q:  # logits_n = q_scaled . shift_n(k)
                grad_scaled_q = torch.zeros_like(inputs.q)
                for n in range(grad_logits.shape[0]):
                    grad_scaled_q.addcmul_(grad_logits[n].unsqueeze(1), inputs.shifted(inputs.k, n))
                grad_q = grad_scaled_q.mul_(inputs.scale).reshape(inputs.shape).to(q.dtype)
            if need_k:
                padded = torch.zeros_like(inputs.k)
                for n in range(grad_logits.shape[0]):
                    inputs.shifted(padded, n).addcmul_(grad_logits[n].unsqueeze(1), inputs.q)
                grad_k = inputs.unpad(padded).to(k.dtype)
        return grad_q, grad_k, grad_v, None, None, None


def local_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                           window: int = 7, recompute_weights: bool = True) -> torch.Tensor:
    """Multi-head attention of every pixel of ``q`` over the ``window x window`` neighbourhood of
    ``k``/``v`` (reflection padded).  q, k, v: B x C x H x W (relative position already folded
    into k); returns B x C x H x W in v's dtype.

    Memory-light: k and v are padded once and each of the window^2 offsets is a strided
    view of them, so nothing of size B x C x window^2 x H x W (ACmix's unfolded k and v) exists;
    the largest extra tensors are the B x heads x window^2 x H x W logits.  The products run in at
    least float32 (bfloat16/half inputs are upcast inside).  While gradients are needed, the
    backward pass is hand-written (see ``_LocalWindowAttention``) and, with ``recompute_weights``,
    the attention weights are recomputed there instead of being kept from the forward pass."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _LocalWindowAttention.apply(q, k, v, heads, window, recompute_weights)
    inputs = _WindowAttentionInputs(q, k, v, heads, window)
    return _window_attention_output(inputs, inputs.weights()).to(v.dtype)


def _coordinate_grid(h: int, w: int, device, dtype) -> torch.Tensor:
    """1 x 2 x h x w grid of normalised coordinates in [-1, 1] (x, then y), as in ACmix."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype) if h > 1 else torch.zeros(1, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype) if w > 1 else torch.zeros(1, device=device, dtype=dtype)
    return torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]).unsqueeze(0)


class CCAPM(nn.Module):
    """Convolution & Cross-Attention Parallel Module (ACmix with cross attention, paper eq. 7-9).

    Query from ``f1``, key and value from ``f2``; a shift-conv path on all three FI outputs runs in
    parallel and the two are mixed by learnable scalars.  ``checkpoint_attention``: recompute the
    attention weights in the backward pass instead of keeping them (B x heads x 49 x H x W per
    CCAPM); the results are the same either way.
    """

    def __init__(self, channels: int, heads: int = 4, window: int = 7, shift_kernel: int = 3,
                 mixer_kernel: int = 7, embeddings: bool = True, checkpoint_attention: bool = True):
        super().__init__()
        if channels % heads:
            raise ValueError(f"CCAPM: {channels} channels are not divisible by {heads} heads")
        self.heads, self.head_dim, self.window, self.shift_kernel = heads, channels // heads, window, shift_kernel
        self.checkpoint_attention = checkpoint_attention
        self.fi_q, self.fi_k, self.fi_v = (FeatureInit(channels, mixer_kernel) for _ in range(3))
        if embeddings:
            self.embed_q, self.embed_k, self.embed_v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        else:
            self.embed_q = self.embed_k = self.embed_v = nn.Identity()
        self.position = nn.Conv2d(2, self.head_dim, 1)
        # conv path: "FC" over the 3*heads axis -> k^2 maps per head-dim slot, then a grouped 3x3 conv
        # initialised as a bank of pure shifts
        self.fc = nn.Conv2d(3 * heads, shift_kernel ** 2, 1, bias=False)
        self.shift = nn.Conv2d(shift_kernel ** 2 * self.head_dim, channels, shift_kernel, padding=shift_kernel // 2,
                               groups=self.head_dim)
        self.weight_conv = nn.Parameter(torch.tensor(0.5))
        self.weight_cross = nn.Parameter(torch.tensor(0.5))
        self._init_shift()

    def _init_shift(self):
        k = self.shift_kernel
        kernel = torch.zeros(k * k, k, k)
        for i in range(k * k):
            kernel[i, i // k, i % k] = 1.0
        with torch.no_grad():
            self.shift.weight.copy_(kernel.unsqueeze(0).repeat(self.shift.out_channels, 1, 1, 1))
            self.shift.bias.zero_()

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        q0, k0, v0 = self.fi_q(f1), self.fi_k(f2), self.fi_v(f2)
        b, c, h, w = q0.shape
        heads, d = self.heads, self.head_dim

        # convolution path (ACmix): B x 3h x d x HW -> FC -> B x k^2 x d x HW -> B x (d k^2) x H x W -> shift
        stacked = torch.cat([t.reshape(b, heads, d, h * w) for t in (q0, k0, v0)], dim=1)
        maps = self.fc(stacked).permute(0, 2, 1, 3).reshape(b, d * self.shift_kernel ** 2, h, w)
        y_conv = self.shift(maps)
        return self.weight_conv * y_conv + self.weight_cross * self.cross_attention(q0, k0, v0)

    def cross_attention(self, q0: torch.Tensor, k0: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
        """The attention path on the FI outputs: q/k/v embeddings, relative position (k - pe, see
        the module docstring) and the local window attention."""
        b, c, h, w = q0.shape
        q, k, v = self.embed_q(q0), self.embed_k(k0), self.embed_v(v0)
        pe = self.position(_coordinate_grid(h, w, q.device, self.position.weight.dtype)).to(k.dtype)
        k = (k.reshape(b, self.heads, self.head_dim, h, w) - pe.unsqueeze(1)).reshape(b, c, h, w)
        return local_window_attention(q, k, v, self.heads, self.window, recompute_weights=self.checkpoint_attention)


class FeatureAggregation(nn.Module):
    """FAM (eq. 6, 10-12): two CCAPMs with swapped roles, fused by a per-channel 2-way softmax of their GAPs."""

    def __init__(self, channels: int, **ccapm_kwargs):
        super().__init__()
        self.high_queries_low = CCAPM(channels, **ccapm_kwargs)
        self.low_queries_high = CCAPM(channels, **ccapm_kwargs)

    def forward(self, x_high, x_low):
        y1 = self.high_queries_low(x_high, x_low)
        y2 = self.low_queries_high(x_low, x_high)
        pooled = torch.stack([y1.mean((2, 3)), y2.mean((2, 3))])  # 2 x B x C
        a1, a2 = torch.softmax(pooled, dim=0, dtype=torch.promote_types(pooled.dtype, torch.float32)).to(
            y1.dtype)[..., None, None]
        return a1 * y1 + a2 * y2


class SCRM(nn.Module):
    """Spatial-Channel Regulation Module: spatial gate -> channel refinement -> FAM (or X_H + X_L)."""

    def __init__(self, channels: int, gn_groups: int = 16, channel_weights: str = "softmax", use_fam: bool = True,
                 **ccapm_kwargs):
        super().__init__()
        self.spatial_gate = SpatialGate(channels, gn_groups, channel_weights=channel_weights)
        self.channel_refinement = ChannelRefinement(channels)
        self.fam = FeatureAggregation(channels, **ccapm_kwargs) if use_fam else None

    def forward(self, x):
        x_high, x_low = self.channel_refinement(self.spatial_gate(x))
        return self.fam(x_high, x_low) if self.fam is not None else x_high + x_low


class SCRNet(nn.Module):
    """UNet 64-1024 with an SCRM after each encoder conv block. Returns raw logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, widths=(64, 128, 256, 512, 1024),
                 scrm_levels: int = 5, use_fam: bool = True, gn_groups: int = 16, channel_weights: str = "softmax",
                 heads: int = 4, window: int = 7, embeddings: bool = True, checkpoint_attention: bool = True):
        super().__init__()
        if not 0 <= scrm_levels <= len(widths):
            raise ValueError(f"scrm_levels must be in 0..{len(widths)}")
        self.deep_supervision = False  # single output; attribute kept for the trainer
        ccapm = dict(heads=heads, window=window, embeddings=embeddings, checkpoint_attention=checkpoint_attention)
        self.encoder = nn.ModuleList()
        self.scrm = nn.ModuleList()
        prev = in_channels
        for level, width in enumerate(widths):
            self.encoder.append(ConvBlock(prev, width))
            self.scrm.append(SCRM(width, gn_groups, channel_weights, use_fam, **ccapm) if level < scrm_levels
                             else nn.Identity())
            prev = width
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(UpBlock(deep, shallow))
            self.decoder.append(ConvBlock(2 * shallow, shallow))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: List[torch.Tensor] = []
        for level, (block, scrm) in enumerate(zip(self.encoder, self.scrm)):
            if level:
                x = self.pool(x)
            x = scrm(block(x))
            skips.append(x)
        skips.pop()
        for up, block in zip(self.up, self.decoder):
            x = block(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


@register_model(size_divisor=16, min_size=64, deep_supervision_strides=None,
                deepest_features="up.0:input",  # the bottleneck after its SCRM
                paper="Xu & Wang, SCRNet: Spatial-Channel Regulation Network for medical ultrasound image "
                      "segmentation, arXiv 2508.13899 (2025)")
def scrnet(in_channels: int = 1, num_classes: int = 2, deep_supervision: bool = False, **kwargs) -> nn.Module:
    """SCRNet (the default reading of the paper; see the module docstring). ``use_fam=False`` is the paper's
    "w/o FAM" ablation. Inputs: sides multiples of 16, at least 64 (the 7x7 reflection-padded
    window attention needs 4 pixels at the bottleneck)."""
    return SCRNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
