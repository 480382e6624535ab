"""Mamba's selective scan (S6) for any device: ``mamba_ssm``'s CUDA kernel when it is available,
otherwise an exact pure-PyTorch chunked scan with a hand-written backward.

The recurrence (per batch ``b``, channel ``i``, state index ``n``; all in float32)::

    delta_l = softplus(delta_l + delta_bias)          (if delta_softplus)
    h_l     = exp(delta_l * A[i, n]) * h_{l-1} + delta_l * u_l * B_l[n]      (h_0 = 0)
    y_l     = sum_n C_l[n] * h_l[n] + D[i] * u_l

``B`` and ``C`` have shape ``(batch, groups, d_state, L)``; channel ``i`` of ``groups * channels_per_group``
uses group ``i // channels_per_group`` (mamba_ssm's convention).

The pure-PyTorch path splits the sequence into chunks of ``T ~ sqrt(L)`` steps: it scans every chunk
in parallel from a zero state (``T`` vectorised steps, also accumulating the in-chunk decay products),
carries the chunk-end states across chunks (``L/T`` small steps) and adds the accumulated decay times
the carried state back in.  All decays are products of ``exp(delta*A) <= 1``, so nothing overflows.  The backward pass is the same
linear scan run in reverse, so autograd never stores per-step graphs.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_reference", "linear_scan", "mamba_kernel_available"]


def mamba_kernel_available() -> bool:
    """Whether ``mamba_ssm``'s CUDA selective-scan kernel can be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension build
        return False
    return True


def _chunk_size(length: int) -> int:
    """Power of two near sqrt(L): balances in-chunk steps against cross-chunk steps."""
    return max(1, 2 ** round(math.log2(max(1.0, math.sqrt(length)))))


def linear_scan(log_decay: torch.Tensor, inputs: torch.Tensor, chunk: Optional[int] = None) -> torch.Tensor:
    """All states of ``h_l = exp(log_decay_l) * h_{l-1} + inputs_l`` (``h_0 = 0``) along dim -2.

    ``log_decay`` must be <= 0 (it is ``delta * A``); shapes ``(..., L, N)``.  Exact up to float
    rounding: chunk-local scans plus a carried state scaled by the in-chunk decay product.
    """
    *lead, length, n = inputs.shape
    t = chunk or _chunk_size(length)
    n_chunks = -(-length // t)
    pad = n_chunks * t - length
    if pad:  # trailing padding never influences earlier states
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        inputs = F.pad(inputs, (0, 0, 0, pad))
    # step index first, so every step of the in-chunk loop touches contiguous memory
    decay = log_decay.reshape(*lead, n_chunks, t, n).movedim(-2, 0).exp().contiguous()  # (T, ..., chunks, N)
    inputs = inputs.reshape(*lead, n_chunks, t, n).movedim(-2, 0).contiguous()

    state, running = inputs[0], decay[0]
    states, products = [state], [running]  # products: decay from the chunk start to each step
    for step in range(1, t):  # every chunk at once, from a zero state
        state = torch.addcmul(inputs[step], decay[step], state)
        running = running * decay[step]
        states.append(state)
        products.append(running)
    local = torch.stack(states)

    if n_chunks > 1:
        cumulative = torch.stack(products)
        carried = torch.zeros_like(local[0])  # state entering each chunk, (..., chunks, N)
        for c in range(1, n_chunks):
            carried[..., c, :] = torch.addcmul(local[t - 1, ..., c - 1, :], cumulative[t - 1, ..., c - 1, :],
                                               carried[..., c - 1, :])
        local = torch.addcmul(local, cumulative, carried.unsqueeze(0))
    return local.movedim(0, -2).reshape(*lead, n_chunks * t, n)[..., :length, :]


def _expand_groups(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``(b, G, N, L)`` -> ``(b, channels, L, N)``: each group's values repeated to its channels."""
    b, groups, n, length = x.shape
    per_group = channels // groups
    return x.transpose(-1, -2).unsqueeze(2).expand(b, groups, per_group, length, n).reshape(b, channels, length, n)


def _sum_groups(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of :func:`_expand_groups` for gradients: ``(b, channels, L, N)`` -> ``(b, G, N, L)``."""
    b, channels, length, n = x.shape
    return x.reshape(b, groups, channels // groups, length, n).sum(2).transpose(-1, -2)


class _SelectiveScanFunction(torch.autograd.Function):
    """Selective scan on already-softplus'ed ``delta`` with an explicit (reverse-scan) backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        channels, groups = u.shape[1], B.shape[1]
        b_full = _expand_groups(B, channels)
        c_full = _expand_groups(C, channels)
        log_decay = delta.unsqueeze(-1) * A.unsqueeze(1)  # (b, ch, L, N), <= 0
        h = linear_scan(log_decay, (delta * u).unsqueeze(-1) * b_full)
        y = torch.einsum("bcln,bcln->bcl", h, c_full)
        if D is not None:
            y = y + D.unsqueeze(-1) * u
        ctx.save_for_backward(u, delta, A, B, C, D, h)
        ctx.groups = groups
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, h = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        channels = u.shape[1]
        b_full = _expand_groups(B, channels)
        c_full = _expand_groups(C, channels)
        log_decay = delta.unsqueeze(-1) * A.unsqueeze(1)
        decay = log_decay.exp()
        # dL/dh_l = grad_y_l * C_l + exp(delta_{l+1} A) * dL/dh_{l+1}: a linear scan run backwards
        next_log_decay = torch.zeros_like(log_decay)
        next_log_decay[:, :, :-1] = log_decay[:, :, 1:]
        grad_h = linear_scan(next_log_decay.flip(2), (grad_y.unsqueeze(-1) * c_full).flip(2)).flip(2)
        h_prev = torch.zeros_like(h)
        h_prev[:, :, 1:] = h[:, :, :-1]
        grad_log_decay = grad_h * h_prev * decay  # through exp(delta * A)
        grad_delta = torch.einsum("bcln,cn->bcl", grad_log_decay, A)
        grad_bu = torch.einsum("bcln,bcln->bcl", grad_h, b_full)  # d/d(delta * u)
        grad_delta = grad_delta + grad_bu * u
        grad_u = grad_bu * delta
        grad_A = torch.einsum("bcln,bcl->cn", grad_log_decay, delta)
        grad_B = _sum_groups(grad_h * (delta * u).unsqueeze(-1), ctx.groups)
        grad_C = _sum_groups(grad_y.unsqueeze(-1) * h, ctx.groups)
        grad_D = None
        if D is not None:
            grad_u = grad_u + D.unsqueeze(-1) * grad_y
            grad_D = (grad_y * u).sum(dim=(0, 2))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    u, delta, A = u.float(), delta.float(), A.float()
    if B.dim() == 3:  # (b, N, L): one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B, C = B.float(), C.float()
    if u.shape[1] % B.shape[1] or C.shape != B.shape:
        raise ValueError(f"selective_scan: B/C {tuple(B.shape)}/{tuple(C.shape)} do not split {u.shape[1]} channels "
                         f"into groups")
    if delta_bias is not None:
        delta = delta + delta_bias.float().unsqueeze(-1)
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, like the kernel
    return u, delta, A, B, C, (D.float() if D is not None else None)


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                   delta_softplus: bool = True, backend: str = "auto") -> torch.Tensor:
    """``mamba_ssm``'s ``selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias, delta_softplus)``.

    u, delta: ``(b, channels, L)``; A: ``(channels, N)``; B, C: ``(b, groups, N, L)`` or ``(b, N, L)``;
    D, delta_bias: ``(channels,)``.  Returns float32 ``(b, channels, L)``.  ``backend``: ``"auto"``
    (the CUDA kernel for CUDA tensors when ``mamba_ssm`` imports, else PyTorch), ``"torch"`` or
    ``"mamba"``.  Always computed in float32 with autocast off.
    """
    if backend not in ("auto", "torch", "mamba"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'mamba', not {backend!r}")
    use_kernel = backend == "mamba" or (backend == "auto" and u.is_cuda and mamba_kernel_available())
    with torch.autocast(device_type=u.device.type, enabled=False):
        if use_kernel:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            if B.dim() == 3:
                B, C = B.unsqueeze(1), C.unsqueeze(1)
            return selective_scan_fn(u.float().contiguous(), delta.float().contiguous(), A.float().contiguous(),
                                     B.float().contiguous(), C.float().contiguous(),
                                     None if D is None else D.float().contiguous(), z=None,
                                     delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
                                     delta_softplus=delta_softplus, return_last_state=False)
        args = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
        return _SelectiveScanFunction.apply(*args)


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True) -> torch.Tensor:
    """The plain step-by-step recurrence (autograd through every step): the ground truth for tests
    and the "loop" of the benchmark.  Slices are taken once (``unbind``) to keep backward linear."""
    u, delta, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    channels = u.shape[1]
    b_full = _expand_groups(B, channels)  # (b, ch, L, N)
    c_full = _expand_groups(C, channels)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))
    drive = (delta * u).unsqueeze(-1) * b_full
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    for a_l, x_l, c_l in zip(decay.unbind(2), drive.unbind(2), c_full.unbind(2)):
        h = a_l * h + x_l
        ys.append((h * c_l).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y + D.unsqueeze(-1) * u if D is not None else y
