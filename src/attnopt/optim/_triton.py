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

import struct

import torch
from torch import Tensor

from attnopt.optim._math import TRITON_INTERPRETING, lq_scale, step_constants

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


#: Triton's CPU interpreter (``TRITON_INTERPRET=1``, read once at import, as Triton does).
INTERPRETING = TRITON_INTERPRETING

if not INTERPRETING:  # pragma: no cover - needs a GPU
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


def _block_tables(counts: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Per program: which tensor it works on and where its block starts."""
    block_tensor, block_start = [], []
    for k, n in enumerate(counts):
        nb = triton.cdiv(n, BLOCK)
        block_tensor += [k] * nb
        block_start += range(0, nb * BLOCK, BLOCK)
    return block_tensor, block_start


def check_fused_supported(params: list[Tensor]) -> None:
    """Raise a clear error unless the fused kernel can run on these parameters."""
    if not INTERPRETING and not torch.cuda.is_available():
        raise RuntimeError("MirrorDescent(fused=True) needs CUDA (the fused path is a Triton GPU kernel); "
                           "use compiled=True on CPU")
    for param in params:
        _check_batch(param.device, param.dtype)


def _check_batch(device: torch.device, dtype: torch.dtype) -> None:
    if dtype not in _TL_DTYPES:
        raise RuntimeError(f"MirrorDescent(fused=True) does not support {dtype} parameters")
    if not INTERPRETING and device.type != "cuda":
        raise RuntimeError(f"MirrorDescent(fused=True) needs CUDA parameters, got one on {device}")


class FusedPlan:
    """The step-invariant part of a fused step over one parameter list: the device/dtype
    batches and, per batch, the sizes, block tables and addresses of w, θ and the momentum
    buffers, uploaded to the device once.

    :class:`~attnopt.optim.MirrorDescent` keeps one per parameter group and rebuilds it when
    a parameter or its θ was replaced; a step then only uploads the gradient addresses (and
    the scalars), and not even those when they equal the last step's.
    ``fused_mirror_descent`` without a plan builds a throw-away one.
    """

    __slots__ = ("ids", "momentum", "batches", "source", "step_tables")

    def __init__(self, params: list[Tensor], grads: list[Tensor], duals: list[Tensor | None],
                 momentum_buffers: list[Tensor | None], momentum: bool) -> None:
        self.ids = tuple(map(id, params))
        self.source = params  # the optimizer passes the same list object while nothing changed
        # batch index -> (host rows, device table) of the last step: reused while the gradient
        # addresses and the scalars repeat (the caching allocator usually hands the gradients
        # the same blocks every step), which saves the per-step host-to-device copy
        self.step_tables: dict[int, tuple[list[int], Tensor]] = {}
        self.momentum = momentum
        groups: dict[tuple, list[int]] = {}
        for i, (param, grad, theta) in enumerate(zip(params, grads, duals)):
            own = theta is None
            groups.setdefault((param.device, param.dtype, param.dtype if own else theta.dtype, grad.dtype, own),
                              []).append(i)
        self.batches = []
        for (device, pdtype, ddtype, gdtype, own), idx in groups.items():
            _check_batch(device, pdtype)
            ws = [params[i] for i in idx]
            ts = ws if own else [duals[i] for i in idx]
            bs = [momentum_buffers[i] for i in idx] if momentum else None
            for x in ws + ts + (bs or []):
                if not x.is_contiguous():
                    raise RuntimeError("MirrorDescent(fused=True) needs contiguous parameters")
            counts = [x.numel() for x in ws]
            block_tensor, block_start = _block_tables(tuple(counts))
            tp = [x.data_ptr() for x in ts]
            rows = block_tensor + block_start + counts + [x.data_ptr() for x in ws] + tp
            rows += [x.data_ptr() for x in bs] if bs is not None else tp
            tables = torch.tensor(rows, dtype=torch.int64, device=device)
            nb, n = len(block_tensor), len(ws)
            self.batches.append(((pdtype, ddtype, gdtype, own), idx, torch.split(tables, [nb, nb, n, n, n, n]),
                                 device))

    def matches(self, params: list[Tensor], momentum: bool) -> bool:
        if self.momentum != momentum:
            return False
        if params is self.source:
            return True
        if self.ids == tuple(map(id, params)):
            self.source = params  # the same parameters in a new list: recognise it by identity next time
            return True
        return False


def fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                         momentum, weight_decay, maximize, plan: FusedPlan | None = None) -> None:
    if not INTERPRETING and not torch.cuda.is_available():
        check_fused_supported(params)
    if plan is None:
        plan = FusedPlan(params, grads, duals, momentum_buffers, momentum != 0.0)
    e, _, _, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    kind = _KINDS.get(e, 3)
    for bi, ((pdtype, ddtype, gdtype, own), idx, (bt, bst, nt, wp, tp, bp), device) in enumerate(plan.batches):
        n, nb = nt.numel(), bt.numel()
        if nb == 0:
            continue
        gs = grads if len(idx) == len(grads) else [grads[i] for i in idx]
        if not all(map(Tensor.is_contiguous, gs)):
            gs = [g if g.is_contiguous() else g.contiguous() for g in gs]
        # per step, one small host-to-device copy: gradient addresses, scale addresses, scalars
        # omax: the parameter's largest finite value, capped at the dual's (a narrower dual
        # cannot exceed its own range anyway)
        omax = min(float(torch.finfo(pdtype).max), float(torch.finfo(ddtype).max))
        rows = [g.data_ptr() for g in gs]
        if normalize:
            scales = [lq_scale(g, p, eps, ddtype) for g in gs]
            rows += [x.data_ptr() for x in scales]
        rows += [_f64_bits(v) for v in (alpha, decay, e, momentum, omax, float(torch.finfo(ddtype).max))]
        cached = plan.step_tables.get(bi)
        if cached is not None and cached[0] == rows:
            step_tab = cached[1]
        else:
            step_tab = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
            if not normalize:  # the scales are new tensors every step: nothing to reuse
                plan.step_tables[bi] = (rows, step_tab)
        gp = step_tab[:n]
        sp = step_tab[n:2 * n] if normalize else gp
        _md_kernel[(nb,)](
            bt, bst, nt, wp, gp, tp, bp, sp, step_tab[-6:],
            W_TY=_TL_DTYPES[pdtype], G_TY=_TL_DTYPES[gdtype], T_TY=_TL_DTYPES[ddtype],
            KIND=kind, OWN=own, HAS_SCALE=normalize, HAS_MOMENTUM=momentum != 0.0,
            HAS_DECAY=decay != 1.0, PRECISE=not INTERPRETING, BLOCK=BLOCK,
        )
