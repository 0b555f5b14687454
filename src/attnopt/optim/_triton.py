r"""The ``fused=True`` path: one Triton kernel launch per device/dtype batch of parameters.

Each program handles one block of ``BLOCK`` elements of one tensor; small device tables
give, per block, its tensor and offset, and, per tensor, the addresses of w, g, θ (and the
momentum buffer) and the normalisation scale.  Per element the kernel reads g and θ once and
writes θ and w once (plus the momentum buffer when on) — the minimum traffic of the update.

The general power uses libdevice's ``powf`` and p = 3 the IEEE square root, so the result
matches the eager path to a few ulp.  Under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter,
used by the tests on machines without a GPU) libdevice is unavailable and ``exp(e·log|θ|)``
stands in for the power; everything else is the same code.

Triton is optional: importing this module without it raises a clear ImportError, and
:class:`~attnopt.optim.MirrorDescent` only imports it when ``fused=True``.
"""

from __future__ import annotations

import functools
import os
import struct

import torch
from torch import Tensor

from attnopt.optim._math import dual_decay_factor, inverse_exponent, lq_scale

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "MirrorDescent(fused=True) needs Triton: pip install 'attnopt[triton]' (CUDA only)"
    ) from exc

__all__ = ["fused_mirror_descent", "BLOCK"]

#: Elements per program.
BLOCK = 1024

_KINDS = {1.0: 0, 0.5: 1, 2.0: 2}  # identity, sqrt, square; anything else: 3 (general power)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


if not _interpreting():  # pragma: no cover - needs a GPU
    from triton.language.extra import libdevice as _libdevice
else:
    _libdevice = None


@triton.jit
def _md_kernel(
    block_tensor, block_start, numels,
    w_ptrs, g_ptrs, t_ptrs, b_ptrs, s_ptrs, scalars,
    W_TY: tl.constexpr, G_TY: tl.constexpr, T_TY: tl.constexpr,
    KIND: tl.constexpr, OWN: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, HAS_DECAY: tl.constexpr, PRECISE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    # scalars arrive as float64 bit patterns so that float64 parameters keep full precision
    alpha = tl.load(scalars + 0).to(tl.float64, bitcast=True).to(T_TY)
    decay = tl.load(scalars + 1).to(tl.float64, bitcast=True).to(T_TY)
    e = tl.load(scalars + 2).to(tl.float64, bitcast=True).to(T_TY)
    mu = tl.load(scalars + 3).to(tl.float64, bitcast=True).to(T_TY)
    omax = tl.load(scalars + 4).to(tl.float64, bitcast=True).to(T_TY)
    dmax = tl.load(scalars + 5).to(tl.float64, bitcast=True).to(T_TY)
    t = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    n = tl.load(numels + t)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    w_ptr = tl.load(w_ptrs + t).to(tl.pointer_type(W_TY))
    g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(G_TY))
    t_ptr = tl.load(t_ptrs + t).to(tl.pointer_type(T_TY))

    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(T_TY)
    if HAS_SCALE:
        s_ptr = tl.load(s_ptrs + t).to(tl.pointer_type(T_TY))
        g = g * tl.load(s_ptr)
    if HAS_MOMENTUM:
        b_ptr = tl.load(b_ptrs + t).to(tl.pointer_type(T_TY))
        b = tl.load(b_ptr + offs, mask=mask, other=0.0) * mu + g
        tl.store(b_ptr + offs, b, mask=mask)
        g = b
    th = tl.load(t_ptr + offs, mask=mask, other=0.0)
    if HAS_DECAY:
        th = th * decay
    th = th + alpha * g
    if OWN:
        tl.store(t_ptr + offs, th, mask=mask)
    else:
        th = tl.minimum(tl.maximum(th, -dmax), dmax)
        tl.store(t_ptr + offs, th, mask=mask)
        a = tl.abs(th)
        if KIND == 0:
            mag = a
        elif KIND == 1:
            if T_TY == tl.float64:
                mag = tl.sqrt(a)  # float64 sqrt is correctly rounded
            else:
                mag = tl.sqrt_rn(a)
        elif KIND == 2:
            mag = a * a
        else:
            if PRECISE:
                mag = _libdevice.pow(a, e)  # (T_TY, T_TY) overload
            else:
                mag = tl.exp(e * tl.log(a))
        mag = tl.minimum(mag, omax)
        w = tl.where(th < 0, -mag, mag)
        tl.store(w_ptr + offs, w.to(W_TY), mask=mask)


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


_TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@functools.lru_cache(maxsize=64)
def _block_tables(counts: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per program: which tensor it works on and where its block starts (cached per shapes)."""
    block_tensor, block_start = [], []
    for k, n in enumerate(counts):
        nb = triton.cdiv(n, BLOCK)
        block_tensor += [k] * nb
        block_start += [j * BLOCK for j in range(nb)]
    tab = torch.tensor(block_tensor + block_start, dtype=torch.int64, device=device)
    return tab[: len(block_tensor)], tab[len(block_tensor):]


def check_fused_supported(params: list[Tensor]) -> None:
    """Raise a clear error unless the fused kernel can run on these parameters."""
    if not _interpreting() and not torch.cuda.is_available():
        raise RuntimeError("MirrorDescent(fused=True) needs CUDA (the fused path is a Triton GPU kernel); "
                           "use compiled=True on CPU")
    for param in params:
        if param.dtype not in _TL_DTYPES:
            raise RuntimeError(f"MirrorDescent(fused=True) does not support {param.dtype} parameters")
        if not _interpreting() and param.device.type != "cuda":
            raise RuntimeError(f"MirrorDescent(fused=True) needs CUDA parameters, got one on {param.device}")


def fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                         momentum, weight_decay, maximize) -> None:
    check_fused_supported(params)
    e = inverse_exponent(p)
    kind = _KINDS.get(e, 3)
    decay = dual_decay_factor(lr, weight_decay, p) if weight_decay != 0.0 else 1.0
    alpha = lr if maximize else -lr
    batches: dict[tuple, list[int]] = {}
    for i, (param, grad, theta) in enumerate(zip(params, grads, duals)):
        t = param if theta is None else theta
        batches.setdefault((param.device, param.dtype, t.dtype, grad.dtype, theta is None), []).append(i)
    for (device, pdtype, ddtype, gdtype, own), idx in batches.items():
        ws = [params[i] for i in idx]
        gs = [grads[i] if grads[i].is_contiguous() else grads[i].contiguous() for i in idx]
        ts = [params[i] if own else duals[i] for i in idx]
        for x in ws + ts:
            if not x.is_contiguous():
                raise RuntimeError("MirrorDescent(fused=True) needs contiguous parameters")
        bs = [momentum_buffers[i] for i in idx] if momentum != 0.0 else ts
        scales = [lq_scale(g, p, eps, ddtype) for g in gs] if normalize else None
        counts = tuple(x.numel() for x in ws)
        bt, bst = _block_tables(counts, device)
        nblocks, ntensors = bt.numel(), len(ws)
        if nblocks == 0:
            continue
        # per-step tables in one host-to-device copy: numels, addresses, then the scalars
        tables = list(counts)
        for xs in (ws, gs, ts, bs, scales if scales is not None else ts):
            tables += [x.data_ptr() for x in xs]
        # omax: the parameter's largest finite value, capped at the dual's (a narrower dual
        # cannot exceed its own range anyway)
        omax = min(float(torch.finfo(pdtype).max), float(torch.finfo(ddtype).max))
        tables += [_f64_bits(v) for v in (alpha, decay, e, momentum, omax, float(torch.finfo(ddtype).max))]
        tab = torch.tensor(tables, dtype=torch.int64).to(device, non_blocking=True)
        nt, wp, gp, tp, bp, sp, sc = torch.split(tab, [ntensors] * 6 + [6])
        _md_kernel[(nblocks,)](
            bt, bst, nt, wp, gp, tp, bp, sp, sc,
            W_TY=_TL_DTYPES[pdtype], G_TY=_TL_DTYPES[gdtype], T_TY=_TL_DTYPES[ddtype],
            KIND=kind, OWN=own, HAS_SCALE=scales is not None, HAS_MOMENTUM=momentum != 0.0,
            HAS_DECAY=decay != 1.0, PRECISE=not _interpreting(), BLOCK=BLOCK,
        )
