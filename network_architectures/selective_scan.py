"""Mamba's selective scan (S6) for any device: ``mamba_ssm``'s CUDA kernel when it is available,
otherwise an exact pure-PyTorch chunked scan with a hand-written backward.

The recurrence (per batch ``b``, channel ``i``, state index ``n``; all in float32)::

    delta_l = softplus(delta_l + delta_bias)          (if delta_softplus)
    h_l     = exp(delta_l * A[i, n]) * h_{l-1} + delta_l * u_l * B_l[n]      (h_0 = 0)
    y_l     = sum_n C_l[n] * h_l[n] + D[i] * u_l

``B`` and ``C`` have shape ``(batch, groups, d_state, L)``; channel ``i`` of ``groups * channels_per_group``
uses group ``i // channels_per_group`` (mamba_ssm's convention).

Two exact pure-PyTorch formulations (``backend="steps"`` / ``"chunked"``), both with hand-written
backward passes and equal to the step-by-step recurrence within 1e-5 (``tests/test_ssnet.py``):

* **steps** (the default on CPU): the recurrence itself, one ``addcmul`` per time step on a
  time-major ``(L, b, d_state, channels)`` copy, so each step touches one contiguous slab; the
  decays ``exp(delta * A)`` (as ``exp2``, 3x faster than ``exp`` on CPU) and inputs
  ``delta * u * B`` are computed for all steps at once, and ``y``, the transposed scan and all
  gradient reductions are whole-tensor passes.  No division, so any decay (even below float32's
  range) is exact.  Its big ``(L, b, N, channels)`` buffers come from a small workspace: glibc
  serves allocations above 32 MiB by ``mmap`` and unmaps them on free, and first-touch page faults
  of such a fresh buffer cost ~8x the arithmetic done in it.
* **chunked** (the default on CUDA without ``mamba_ssm``: a few dozen kernels per call instead of
  one per time step): chunks of ``T`` steps in closed form ``h_t = E_t * cumsum_s(x_s / E_s)``
  with ``E_t = exp(cumsum(delta * A))`` the decay since the chunk start.  ``T`` (at most 32) is
  chosen per call so that no chunk decays by more than ``exp(-40)``, so ``1 / E_s <= e^40`` stays
  far from float32 overflow.  Chunk-end states are carried across chunks by one small step per
  chunk; the backward is the transposed scan (a reverse cumsum as a triangular matmul).

``benchmarks/bench_selective_scan.py`` times both against the step loop, mamba.py's ``pscan`` and a
memory-traffic bound at SS-Net's 42 scan shapes.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_reference", "linear_scan", "mamba_kernel_available",
           "clear_workspace", "BACKENDS"]

BACKENDS = ("auto", "torch", "steps", "chunked", "mamba")

MAX_CHUNK_DECAY = 40.0  # a chunk may decay by at most exp(-40): 1/E <= 2.4e17, far from float32 overflow
MAX_CHUNK = 32  # the backward's reverse cumsum is a (T x T) matmul: cost grows with T
LOG2E = 1.0 / math.log(2.0)  # exp(x) = exp2(x * log2(e))


def mamba_kernel_available() -> bool:
    """Whether ``mamba_ssm``'s CUDA selective-scan kernel can be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA extension build
        return False
    return True


def _chunk_size(step_decay: torch.Tensor) -> int:
    """Largest power of two ``T <= MAX_CHUNK`` whose chunks of ``step_decay`` (``-log`` of each
    step's decay factor, ``(..., L)``, >= 0) all sum to at most ``MAX_CHUNK_DECAY``; 1 when even
    two steps decay more (chunks of one step need no division)."""
    length = step_decay.shape[-1]
    t = min(MAX_CHUNK, 1 << max(0, math.ceil(math.log2(max(length, 1)))))
    while t > 1:
        chunk_sums = F.pad(step_decay, (0, -length % t)).unflatten(-1, (-1, t)).sum(-1)
        if chunk_sums.numel() == 0 or float(chunk_sums.max()) <= MAX_CHUNK_DECAY:  # nan -> shorter chunks
            return t
        t //= 2
    return 1


def _selective_chunk_size(delta: torch.Tensor, A: torch.Tensor) -> int:
    """Chunk length of a selective scan: -log decay of one step is delta * |A[i, n]|, bounded by
    delta * max_n |A[i, n]|."""
    return _chunk_size(delta * A.abs().amax(-1, keepdim=True))


def _carry(local_end: torch.Tensor, chunk_decay: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """State entering each chunk, ``carried[k] = local_end[k-1] + chunk_decay[k-1] * carried[k-1]``
    (from the right when ``reverse``).  Inputs ``(..., n_chunks)``; one small step per chunk."""
    ends = local_end.movedim(-1, 0).contiguous()
    decay = chunk_decay.movedim(-1, 0).contiguous()
    carried = torch.zeros_like(ends)
    source = 1 if reverse else -1
    for k in (range(len(ends) - 2, -1, -1) if reverse else range(1, len(ends))):
        torch.addcmul(ends[k + source], decay[k + source], carried[k + source], out=carried[k])
    return carried.movedim(0, -1)


def _scan_chunks_(log_decay: torch.Tensor, inputs: torch.Tensor, chunk: int, reverse: bool = False) -> torch.Tensor:
    """Linear scan along the last dim of ``(..., n_chunks * chunk)`` tensors, overwriting both.

    Forward: ``h_t = exp(log_decay_t) * h_{t-1} + inputs_t``.  Reverse (the transposed scan used by
    backward): ``g_t = inputs_t + exp(log_decay_{t+1}) * g_{t+1}``.  Unless ``chunk == 1``, every
    chunk's ``-sum(log_decay)`` must be <= MAX_CHUNK_DECAY (what :func:`_chunk_size` picks).  Returns the states (``inputs``' storage when forward).
    """
    *lead, length = inputs.shape
    n_chunks = length // chunk
    cum = log_decay.view(*lead, n_chunks, chunk).cumsum_(-1)  # log decay since the chunk start
    x = inputs.view(*lead, n_chunks, chunk)
    if not reverse:
        decay = cum.exp_()  # E_t in [e^-40, 1]
        states = x if chunk == 1 else x.div_(decay).cumsum_(-1).mul_(decay)
        if n_chunks > 1:
            states.addcmul_(decay, _carry(states[..., -1], decay[..., -1]).unsqueeze(-1))
        return inputs
    chunk_total = cum[..., -1:].clone()
    to_end = cum.neg_().add_(chunk_total).exp_()  # decay from step t to the chunk end, in [e^-40, 1]
    if chunk == 1:
        states = x
    else:  # reverse cumsum within each chunk: z @ lower-triangular ones
        ones = torch.ones(chunk, chunk, dtype=x.dtype, device=x.device).tril_()
        states = torch.matmul(x.div_(to_end), ones).mul_(to_end)
    if n_chunks > 1:
        chunk_decay = chunk_total.squeeze(-1).exp_()
        start_total = states[..., 0] * (chunk_decay / to_end[..., 0])  # decay of the first step times g_0
        states.addcmul_(to_end, _carry(start_total, chunk_decay, reverse=True).unsqueeze(-1))
    return states.view(*lead, length)


def linear_scan(log_decay: torch.Tensor, inputs: torch.Tensor, chunk: Optional[int] = None,
                reverse: bool = False) -> torch.Tensor:
    """All states of ``h_l = exp(log_decay_l) * h_{l-1} + inputs_l`` (``h_0 = 0``) along the last dim.

    ``log_decay`` must be <= 0 (it is ``delta * A``); shapes ``(..., L)``.  ``reverse=True`` runs the
    transposed scan ``g_l = inputs_l + exp(log_decay_{l+1}) * g_{l+1}`` from the end.  ``chunk``
    overrides the automatic chunk length (every chunk's ``-sum(log_decay)`` must stay <= 40).
    """
    length = inputs.shape[-1]
    t = chunk or _chunk_size(log_decay.detach().neg())
    pad = -length % t  # trailing zero decay/input never changes earlier states (and adds 0 in reverse)

    def working_copy(x):  # the scan overwrites its arguments, never the caller's tensors
        x = x.detach().float()
        return F.pad(x, (0, pad)).contiguous() if pad else x.clone(memory_format=torch.contiguous_format)

    return _scan_chunks_(working_copy(log_decay), working_copy(inputs), t, reverse)[..., :length]


def _padded_empty(like: torch.Tensor, shape, length: int, padded: int) -> torch.Tensor:
    """A ``(*shape, padded)`` buffer whose padding (beyond ``length``) is zero."""
    return like.new_zeros(*shape, padded) if padded > length else like.new_empty(*shape, padded)


class _ChunkedScanFunction(torch.autograd.Function):
    """Chunked closed-form scan on already-softplus'ed ``delta`` with an explicit (transposed-scan) backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D):
        batch, channels, length = u.shape
        groups, n = B.shape[1], B.shape[2]
        per_group = channels // groups
        chunk = _selective_chunk_size(delta, A)
        padded = length + (-length % chunk)
        grouped = (batch, groups, per_group, n, length)  # channel i = group * per_group + p

        decay = _padded_empty(u, (batch, channels, n), length, padded)
        h = _padded_empty(u, (batch, channels, n), length, padded)
        torch.mul(delta.unsqueeze(2), A.unsqueeze(-1), out=decay[..., :length])
        torch.mul((delta * u).view(batch, groups, per_group, 1, length), B.unsqueeze(2),
                  out=h[..., :length].view(grouped))
        h = _scan_chunks_(decay, h, chunk)[..., :length]
        terms = torch.mul(h.view(grouped), C.unsqueeze(2), out=decay[..., :length].view(grouped))  # reuse
        y = terms.sum(3).view(batch, channels, length)
        if D is not None:
            y = y + D.unsqueeze(-1) * u
        ctx.save_for_backward(u, delta, A, B, C, D, h)
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, h = ctx.saved_tensors
        batch, channels, length = u.shape
        groups, n = B.shape[1], B.shape[2]
        per_group = channels // groups
        padded = length + (-length % ctx.chunk)
        grouped = (batch, groups, per_group, n, length)
        grad_y = grad_y.contiguous()

        # dL/dh_l = C_l * grad_y_l + exp(delta_{l+1} A) * dL/dh_{l+1}: the transposed scan
        work = _padded_empty(u, (batch, channels, n), length, padded)
        grad_h = _padded_empty(u, (batch, channels, n), length, padded)
        torch.mul(delta.unsqueeze(2), A.unsqueeze(-1), out=work[..., :length])
        torch.mul(grad_y.view(batch, groups, per_group, 1, length), C.unsqueeze(2),
                  out=grad_h[..., :length].view(grouped))
        grad_h = _scan_chunks_(work, grad_h, ctx.chunk, reverse=True)[..., :length]

        # through the decay exp(delta * A): dL/d(delta A)_l = dL/dh_l * h_{l-1} * exp(delta_l A)
        work = work[..., :length]
        grad_log_decay = torch.mul(delta.unsqueeze(2), A.unsqueeze(-1), out=work).exp_()
        grad_log_decay[..., 1:].mul_(grad_h[..., 1:]).mul_(h[..., :-1])
        grad_log_decay[..., 0] = 0  # h_0 = 0
        grad_A = torch.matmul(grad_log_decay, delta.unsqueeze(-1)).sum(0).squeeze(-1)
        grad_delta = torch.matmul(A.unsqueeze(1), grad_log_decay).squeeze(2)

        # through the input delta * u * B and the readout C . h (``work`` reused as scratch)
        scratch = work.view(grouped)
        grad_drive = torch.mul(grad_h.view(grouped), B.unsqueeze(2), out=scratch).sum(3).view(batch, channels, length)
        grad_delta += grad_drive * u
        grad_u = grad_drive * delta
        drive = (delta * u).view(batch, groups, per_group, 1, length)
        grad_B = torch.mul(grad_h.view(grouped), drive, out=scratch).sum(2)
        grad_C = torch.mul(h.view(grouped), grad_y.view(batch, groups, per_group, 1, length), out=scratch).sum(2)
        grad_D = None
        if D is not None:
            grad_u = grad_u + D.unsqueeze(-1) * grad_y
            grad_D = (grad_y * u).sum(dim=(0, 2))
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D



# -- the time-major step scan ("steps") ---------------------------------------------------------------
class _Workspace:
    """Reused CPU buffers for the step scan's ``(L, b, N, channels)`` tensors, keyed by element count.

    A buffer goes back in when the scan is done with it (after backward for the saved decays and
    states); a second backward through a retained graph after another scan reused them fails in
    autograd's saved-tensor version check instead of reading someone else's data.  At most
    ``max_idle_bytes`` wait idle; CUDA tensors never come here (its caching allocator does this).
    """

    def __init__(self, max_idle_bytes: int = 2 ** 31):
        self.max_idle_bytes = max_idle_bytes
        self._free, self._idle_bytes, self._lock = {}, 0, threading.Lock()

    def take(self, shape, like: torch.Tensor) -> torch.Tensor:
        if like.device.type == "cpu":
            with self._lock:
                free = self._free.get(math.prod(shape))
                if free:
                    buffer = free.pop()
                    self._idle_bytes -= buffer.numel() * 4
                    return buffer.view(shape)
        return like.new_empty(shape, dtype=torch.float32)

    def give(self, *buffers: torch.Tensor) -> None:
        with self._lock:
            for buffer in buffers:
                size = buffer.numel() * 4
                if buffer.device.type == "cpu" and self._idle_bytes + size <= self.max_idle_bytes:
                    self._free.setdefault(buffer.numel(), []).append(buffer)
                    self._idle_bytes += size

    def clear(self) -> None:
        with self._lock:
            self._free, self._idle_bytes = {}, 0


_WORKSPACE = _Workspace()


def clear_workspace() -> None:
    """Free the step scan's idle CPU buffers (they are otherwise kept for the next call)."""
    _WORKSPACE.clear()


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``F.softplus(x)`` (threshold 20) as ``max(x, 0) + log1p(exp(-|x|))``, with ``log1p(z)`` as
    ``log(w) * z / (w - 1)``, ``w = 1 + z`` (Goldberg's exact correction): torch's CPU ``log1p``
    is not vectorised and made softplus cost more than the whole scan of a short sequence."""
    z = torch.exp2(x.abs() * -LOG2E)
    w = 1 + z
    log1p = torch.where(w == 1, z, torch.log(w) * (z / (w - 1)))
    return torch.where(x > 20, x, x.clamp(min=0) + log1p)


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """``(..., L)`` -> contiguous ``(L, ...)`` by one 2-D transpose (torch's blocked 2-D transpose is
    ~5x faster than a general permuted copy)."""
    return x.reshape(-1, x.shape[-1]).t().contiguous().view(x.shape[-1], *x.shape[:-1])


def _from_time_major(x: torch.Tensor) -> torch.Tensor:
    """``(L, ...)`` -> contiguous ``(..., L)``."""
    return x.reshape(x.shape[0], -1).t().contiguous().view(*x.shape[1:], x.shape[0])


class _StepScanFunction(torch.autograd.Function):
    """Step-by-step scan in time-major layout with delta's bias and softplus folded in.

    Layout ``(L, b, N, groups, channels_per_group)``: ``h[l]`` is one contiguous slab, B/C broadcast
    over a group's channels without copies, and the sums over ``N`` run over an outer dimension
    (vectorised across channels).  Saves the decays and states; the backward is the transposed
    scan ``g_l = C_l y'_l + a_{l+1} g_{l+1}`` and ``dL/dlog a_l = g_l a_l h_{l-1}``.
    """

    @staticmethod
    def forward(ctx, u, delta_raw, A, B, C, D, delta_bias, delta_softplus):
        pre = delta_raw if delta_bias is None else delta_raw + delta_bias.unsqueeze(-1)
        delta = _softplus(pre) if delta_softplus else pre
        y, decay, h, small = _step_scan_forward(u, delta, A, B, C, D)
        ctx.save_for_backward(u, pre, delta, A, B, C, D, decay, h, *small)
        ctx.has_bias, ctx.delta_softplus = delta_bias is not None, delta_softplus
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, pre, delta, A, B, C, D, decay, h, delta_t, du_t, B_t, C_t = ctx.saved_tensors
        batch, channels, length = u.shape
        groups, n = B.shape[1], B.shape[2]
        split = (length, batch, n, groups, channels // groups)
        gy_t = _time_major(grad_y.float())  # (L, b, ch)
        grad_h = _WORKSPACE.take(decay.shape, u)
        torch.mul(gy_t.view(length, batch, 1, groups, -1), C_t.unsqueeze(-1), out=grad_h.view(split))
        gs, decays = grad_h.unbind(0), decay.unbind(0)
        for l in range(length - 2, -1, -1):  # the transposed scan, from the end
            torch.addcmul(gs[l], decays[l + 1], gs[l + 1], out=gs[l])

        work = _WORKSPACE.take(decay.shape, u)
        w = work.view(split)
        grad_C = torch.mul(h.view(split), gy_t.view(length, batch, 1, groups, -1), out=w).sum(-1)  # (L, b, N, g)
        grad_B = torch.mul(grad_h.view(split), du_t.view(length, batch, 1, groups, -1), out=w).sum(-1)
        grad_drive = torch.mul(grad_h.view(split), B_t.unsqueeze(-1), out=w).sum(2).view(length, batch, channels)
        # through the decay: dL/d(delta A)_l = g_l * a_l * h_{l-1} (h_0 = 0)
        grad_log_decay = work
        grad_log_decay[0] = 0
        torch.mul(decay[1:], h[:-1], out=grad_log_decay[1:]).mul_(grad_h[1:])
        grad_delta_t = torch.mul(grad_log_decay, A.t(), out=grad_h).sum(2)
        grad_A = grad_log_decay.mul_(delta_t.unsqueeze(2)).sum((0, 1)).t()
        _WORKSPACE.give(grad_h, work, decay, h)

        grad_delta_t.addcmul_(grad_drive, _time_major(u))
        grad_u = _from_time_major(grad_drive.mul_(delta_t))
        grad_delta = _from_time_major(grad_delta_t)
        if ctx.delta_softplus:
            grad_delta.mul_(torch.sigmoid(pre))
        grad_D = None
        if D is not None:
            grad_u.addcmul_(D.unsqueeze(-1), grad_y)
            grad_D = (grad_y * u).sum((0, 2))
        grad_bias = grad_delta.sum((0, 2)) if ctx.has_bias else None
        return (grad_u, grad_delta, grad_A, _from_time_major(grad_B).transpose(1, 2),
                _from_time_major(grad_C).transpose(1, 2), grad_D, grad_bias, None)


def _step_scan_forward(u, delta, A, B, C, D):
    """The step scan's forward: ``(y, decays, states, time-major inputs)``; decays and states are
    workspace buffers the caller gives back."""
    batch, channels, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    split = (length, batch, n, groups, channels // groups)
    delta_t, du_t = _time_major(delta), _time_major(delta * u)  # (L, b, ch)
    B_t = _time_major(B).transpose(-1, -2).contiguous()  # (L, b, N, g)
    C_t = _time_major(C).transpose(-1, -2).contiguous()
    shape = (length, batch, n, channels)
    decay = _WORKSPACE.take(shape, u)
    torch.mul(delta_t.unsqueeze(2), (A * LOG2E).t(), out=decay).exp2_()
    h = _WORKSPACE.take(shape, u)
    torch.mul(du_t.view(length, batch, 1, groups, -1), B_t.unsqueeze(-1), out=h.view(split))
    hs, decays = h.unbind(0), decay.unbind(0)  # views made once: indexing per step costs as much as the step
    for l in range(1, length):
        torch.addcmul(hs[l], decays[l], hs[l - 1], out=hs[l])
    work = _WORKSPACE.take(shape, u)
    y = torch.mul(h.view(split), C_t.unsqueeze(-1), out=work.view(split)).sum(2)
    _WORKSPACE.give(work)
    y = _from_time_major(y.view(length, batch, channels))
    if D is not None:
        y.addcmul_(D.unsqueeze(-1), u)
    return y, decay, h, (delta_t, du_t, B_t, C_t)


def _step_scan(u, delta, A, B, C, D, delta_bias, delta_softplus):
    u, delta, A = u.float(), delta.float(), A.float()
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B, C = B.float(), C.float()
    _check_groups(u, B, C)
    D = None if D is None else D.float()
    delta_bias = None if delta_bias is None else delta_bias.float()
    tensors = (u, delta, A, B, C, D, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _StepScanFunction.apply(*tensors, delta_softplus)
    pre = delta if delta_bias is None else delta + delta_bias.unsqueeze(-1)
    y, decay, h, _ = _step_scan_forward(u, _softplus(pre) if delta_softplus else pre, A, B, C, D)
    _WORKSPACE.give(decay, h)  # inference: nothing is saved
    return y


def _check_groups(u, B, C):
    if u.shape[1] % B.shape[1] or C.shape != B.shape:
        raise ValueError(f"selective_scan: B/C {tuple(B.shape)}/{tuple(C.shape)} do not split {u.shape[1]} channels "
                         f"into groups")


def _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus):
    u, delta, A = u.float(), delta.float(), A.float()
    if B.dim() == 3:  # (b, N, L): one group
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B, C = B.float(), C.float()
    _check_groups(u, B, C)
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
    (the CUDA kernel for CUDA tensors when ``mamba_ssm`` imports, else ``"torch"``), ``"torch"`` (the
    faster pure-PyTorch form for the device: ``"steps"`` on CPU, ``"chunked"`` on other devices),
    ``"steps"``, ``"chunked"`` or ``"mamba"``.  Always computed in float32 with autocast off.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {backend!r}")
    if backend == "auto":
        backend = "mamba" if u.is_cuda and mamba_kernel_available() else "torch"
    if backend == "torch":
        backend = "steps" if u.device.type == "cpu" else "chunked"
    with torch.autocast(device_type=u.device.type, enabled=False):
        if backend == "mamba":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
            if B.dim() == 3:
                B, C = B.unsqueeze(1), C.unsqueeze(1)
            return selective_scan_fn(u.float().contiguous(), delta.float().contiguous(), A.float().contiguous(),
                                     B.float().contiguous(), C.float().contiguous(),
                                     None if D is None else D.float().contiguous(), z=None,
                                     delta_bias=None if delta_bias is None else delta_bias.float().contiguous(),
                                     delta_softplus=delta_softplus, return_last_state=False)
        if backend == "steps":
            return _step_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
        return _ChunkedScanFunction.apply(*_prepare(u, delta, A, B, C, D, delta_bias, delta_softplus))


def selective_scan_reference(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True) -> torch.Tensor:
    """The plain step-by-step recurrence (autograd through every step): the ground truth for tests
    and the "loop" of the benchmark.  Slices are taken once (``unbind``) to keep backward linear."""
    u, delta, A, B, C, D = _prepare(u, delta, A, B, C, D, delta_bias, delta_softplus)
    channels = u.shape[1]
    group_of_channel = torch.arange(channels, device=u.device) // (channels // B.shape[1])
    b_full = B[:, group_of_channel].transpose(-1, -2)  # (b, ch, L, N)
    c_full = C[:, group_of_channel].transpose(-1, -2)
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1))
    drive = (delta * u).unsqueeze(-1) * b_full
    h = u.new_zeros(u.shape[0], channels, A.shape[1])
    ys = []
    for a_l, x_l, c_l in zip(decay.unbind(2), drive.unbind(2), c_full.unbind(2)):
        h = a_l * h + x_l
        ys.append((h * c_l).sum(-1))
    y = torch.stack(ys, dim=-1)
    return y + D.unsqueeze(-1) * u if D is not None else y
