r"""The ``fused=True`` path: one Triton kernel launch per device/dtype batch of parameters.

Each program handles one block of ``BLOCK`` elements of one tensor; small device tables
give, per block, its tensor and offset, and, per tensor, the addresses of w, g, θ (and the
momentum buffer) and the normalisation scale.  Per element the kernel reads g and θ once and
writes θ and w once (plus the momentum buffer when on) — the minimum traffic of the update.
A whole block (all but each tensor's last) runs unmasked, and when every address of the
batch is a multiple of 16 bytes (as the caching allocator hands them out) the kernel is told
so, and its loads and stores become 16-byte vector accesses.

The inverse map's power takes the cheap routes of the eager paths: a square (p = 1.5), the
IEEE square root (p = 3), binary powering for integer exponents (p = 1.1: four
multiplications) and a square root times binary powering for half-integer ones (p = 1.4);
any other exponent uses libdevice's ``powf``.  The result matches the eager path to a few
ulp.  Under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter, used by the tests on machines
without a GPU) libdevice is unavailable and ``exp(e·log|θ|)`` stands in for ``powf``;
everything else is the same code.

The NaN/inf check of ``nonfinite="raise"/"skip"`` is a second kernel over the same tables:
it reads the gradients once and raises a one-element flag, which the optimizer reads back
(one host synchronisation per device) before it launches the update.

Triton is optional: importing this module without it raises a clear ImportError, and
:class:`~attnopt.optim.MirrorDescent` only imports it when ``fused=True``.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

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

__all__ = ["fused_mirror_descent", "FusedPlan", "prepare_step", "launch_step", "launch_nonfinite_check", "BLOCK"]

#: Elements per program.
BLOCK = 1024

#: Let the compiler contract a·b + c into one fused multiply-add (one rounding instead of
#: two).  Passed at every launch, so the numerics do not depend on Triton's default, which
#: turns off with Triton 3.10 (``TRITON_DEFAULT_FP_FUSION``); the kernel's accuracy tests and
#: timings were taken with fusion on.
FP_FUSION = True

#: How the kernel computes |θ|^e, by :func:`~attnopt.optim._math.classify_exponent`'s kind:
#: integer and half-integer exponents (p = 1.1, 1.25, 1.4, 5/3, ...) by binary powering.
_KINDS = {"identity": 0, "sqrt": 1, "square": 2, "general": 3, "int": 4, "halfint": 5}


#: Triton's CPU interpreter (``TRITON_INTERPRET=1``, read once at import, as Triton does).
INTERPRETING = TRITON_INTERPRETING

if not INTERPRETING:  # pragma: no cover - needs a GPU
    from triton.language.extra import libdevice as _libdevice
else:
    _libdevice = None


@triton.jit
def _int_power(a, N: tl.constexpr):
    """``a**N`` for a constexpr 0 <= N < 256 by binary powering, in the order of
    :func:`~attnopt.optim._math.int_power` (so the result is the eager path's, bit for bit)."""
    result = tl.full(a.shape, 1.0, a.dtype)
    base = a
    for i in tl.static_range(8):
        if (N >> i) & 1:
            result = result * base  # the first product, 1·base, is exact
        if (N >> (i + 1)) != 0:
            base = base * base
    return result


@triton.jit
def _md_kernel(
    block_tensor, block_start, numels,
    w_ptrs, g_ptrs, t_ptrs, b_ptrs, s_ptrs, scalars,
    W_TY: tl.constexpr, G_TY: tl.constexpr, T_TY: tl.constexpr,
    KIND: tl.constexpr, N: tl.constexpr, OWN: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, HAS_DECAY: tl.constexpr, PRECISE: tl.constexpr,
    ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
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
    start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
    n = tl.load(numels + t)
    w_ptr = tl.load(w_ptrs + t).to(tl.pointer_type(W_TY))
    g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(G_TY))
    t_ptr = tl.load(t_ptrs + t).to(tl.pointer_type(T_TY))
    b_ptr = tl.load(b_ptrs + t).to(tl.pointer_type(T_TY))
    if ALIGNED:  # every address is a multiple of 16 bytes: vector loads and stores
        w_ptr = tl.multiple_of(w_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        t_ptr = tl.multiple_of(t_ptr, 16)
        b_ptr = tl.multiple_of(b_ptr, 16)
    scale = 1.0
    if HAS_SCALE:
        scale = tl.load(tl.load(s_ptrs + t).to(tl.pointer_type(T_TY)))
    offs = start + tl.arange(0, BLOCK)
    if start + BLOCK <= n:  # a whole block: no mask, so the accesses can be vectorised
        _md_block(offs, tl.full([BLOCK], 1, tl.int1), w_ptr, g_ptr, t_ptr, b_ptr, scale, alpha, decay, e, mu,
                  omax, dmax, W_TY, T_TY, KIND, N, OWN, HAS_SCALE, HAS_MOMENTUM, HAS_DECAY, PRECISE)
    else:
        _md_block(offs, offs < n, w_ptr, g_ptr, t_ptr, b_ptr, scale, alpha, decay, e, mu,
                  omax, dmax, W_TY, T_TY, KIND, N, OWN, HAS_SCALE, HAS_MOMENTUM, HAS_DECAY, PRECISE)


@triton.jit
def _md_block(offs, mask, w_ptr, g_ptr, t_ptr, b_ptr, scale, alpha, decay, e, mu, omax, dmax,
              W_TY: tl.constexpr, T_TY: tl.constexpr, KIND: tl.constexpr, N: tl.constexpr, OWN: tl.constexpr,
              HAS_SCALE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, HAS_DECAY: tl.constexpr,
              PRECISE: tl.constexpr):
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(T_TY)
    if HAS_SCALE:
        g = g * scale
    if HAS_MOMENTUM:
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
        elif KIND == 4:
            mag = _int_power(a, N)
        elif KIND == 5:
            if T_TY == tl.float64:
                mag = _int_power(a, N) * tl.sqrt(a)
            else:
                mag = _int_power(a, N) * tl.sqrt_rn(a)
        else:
            if PRECISE:
                mag = _libdevice.pow(a, e)  # (T_TY, T_TY) overload
            else:
                mag = tl.exp(e * tl.log(a))
        mag = tl.minimum(mag, omax)
        w = tl.where(th < 0, -mag, mag)
        tl.store(w_ptr + offs, w.to(W_TY), mask=mask)


@triton.jit
def _nonfinite_kernel(block_tensor, block_start, numels, g_ptrs, flag, G_TY: tl.constexpr,
                      ALIGNED: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    start = tl.multiple_of(tl.load(block_start + pid), BLOCK)
    n = tl.load(numels + t)
    offs = start + tl.arange(0, BLOCK)
    g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(G_TY))
    if ALIGNED:
        g_ptr = tl.multiple_of(g_ptr, 16)
    if start + BLOCK <= n:  # a whole block: vector loads when aligned
        g = tl.load(g_ptr + offs)
    else:
        g = tl.load(g_ptr + offs, mask=offs < n, other=0.0)
    if G_TY != tl.float64:
        g = g.to(tl.float32)  # exact; 16-bit arithmetic is not IEEE in Triton's interpreter
    d = g - g  # NaN exactly where g is NaN or ±inf
    if tl.max((d != d).to(tl.int32), axis=0) != 0:
        tl.store(flag, 1)  # every writer writes the same value: no atomic needed


def _aligned(addresses: list[int]) -> bool:
    """Whether every address is a multiple of 16 bytes (then the kernel uses vector accesses)."""
    return not any(a & 15 for a in addresses)


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
        # batch index -> (host rows, device table, its slices) of the last step: reused while the gradient
        # addresses and the scalars repeat (the caching allocator usually hands the gradients
        # the same blocks every step), which saves the per-step host-to-device copy
        self.step_tables: dict[int, tuple[list[int], Tensor, tuple[Tensor, ...]]] = {}
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
            addresses = [x.data_ptr() for x in ws] + tp
            addresses += [x.data_ptr() for x in bs] if bs is not None else tp
            tables = torch.tensor(block_tensor + block_start + counts + addresses, dtype=torch.int64, device=device)
            nb, n = len(block_tensor), len(ws)
            self.batches.append(((pdtype, ddtype, gdtype, own), idx, torch.split(tables, [nb, nb, n, n, n, n]),
                                 device, _aligned(addresses)))

    def matches(self, params: list[Tensor], momentum: bool) -> bool:
        if self.momentum != momentum:
            return False
        if params is self.source:
            return True
        if self.ids == tuple(map(id, params)):
            self.source = params  # the same parameters in a new list: recognise it by identity next time
            return True
        return False


class _Launch(NamedTuple):
    """One batch's kernel launch of a prepared step."""

    grid: int
    tables: tuple[Tensor, ...]  # block tensor, block start, numels, w, g, θ, buffer, scale addresses; scalars
    consts: dict[str, Any]  # the kernel's constexpr arguments
    device: torch.device
    keep: tuple  # tensors whose addresses are in the tables (contiguous copies, scales): alive until launched


def prepare_step(plan: FusedPlan, grads: list[Tensor], *, lr, p, normalize, eps, momentum, weight_decay,
                 maximize, grads_contiguous: bool = False) -> list[_Launch]:
    """The launches of one step over ``plan``'s parameters with these gradients: per batch,
    the device table of gradient addresses (and normalisation scales) and scalars, uploaded
    only when it differs from the last step's.  ``grads_contiguous`` skips the contiguity
    check when the caller has made it."""
    e, kind, npow, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    launches = []
    for bi, (dtypes, idx, (bt, bst, nt, wp, tp, bp), device, aligned) in enumerate(plan.batches):
        pdtype, ddtype, gdtype, own = dtypes
        n, nb = nt.numel(), bt.numel()
        if nb == 0:
            continue
        gs = grads if len(idx) == len(grads) else [grads[i] for i in idx]
        if not grads_contiguous and not all(map(Tensor.is_contiguous, gs)):
            gs = [g if g.is_contiguous() else g.contiguous() for g in gs]
        # omax: the parameter's largest finite value, capped at the dual's (a narrower dual
        # cannot exceed its own range anyway)
        dmax = float(torch.finfo(ddtype).max)
        omax = min(float(torch.finfo(pdtype).max), dmax)
        rows = list(map(Tensor.data_ptr, gs))
        scales = None
        if normalize:
            scales = [lq_scale(g, p, eps, ddtype) for g in gs]
            rows += map(Tensor.data_ptr, scales)
        rows += map(_f64_bits, (alpha, decay, e, momentum, omax, dmax))
        cached = plan.step_tables.get(bi)
        if cached is not None and cached[0] == rows:
            step = cached[2]
        else:
            table = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
            gp = table[:n]
            step = (gp, table[n:2 * n] if normalize else gp, table[-6:], aligned and _aligned(rows[:n]))
            if not normalize:  # the scales are new tensors every step: nothing to reuse
                plan.step_tables[bi] = (rows, table, step)
        gp, sp, scalars, vector = step
        consts = dict(W_TY=_TL_DTYPES[pdtype], G_TY=_TL_DTYPES[gdtype], T_TY=_TL_DTYPES[ddtype],
                      KIND=_KINDS[kind], N=npow, OWN=own, HAS_SCALE=normalize, HAS_MOMENTUM=momentum != 0.0,
                      HAS_DECAY=decay != 1.0, PRECISE=not INTERPRETING, ALIGNED=vector, BLOCK=BLOCK)
        launches.append(_Launch(nb, (bt, bst, nt, wp, gp, tp, bp, sp, scalars), consts, device, (gs, scales)))
    return launches


def launch_step(launches: list[_Launch]) -> None:
    """Run a prepared step (asynchronously, on the parameters' devices)."""
    for launch in launches:
        _md_kernel[(launch.grid,)](*launch.tables, **launch.consts, enable_fp_fusion=FP_FUSION)


def launch_nonfinite_check(launches: list[_Launch], flags: dict[torch.device, Tensor]) -> None:
    """Set ``flags[device]`` (a 1-element int32 tensor, left as is otherwise) to 1 if any
    gradient of the prepared step is NaN or ±inf: one read of the gradients, no host
    synchronisation.  Exact, so a raised flag always has a bad gradient behind it."""
    for launch in launches:
        bt, bst, nt, _, gp = launch.tables[:5]
        flag = flags.get(launch.device)
        if flag is None:
            flag = flags[launch.device] = torch.zeros(1, dtype=torch.int32, device=launch.device)
        _nonfinite_kernel[(launch.grid,)](bt, bst, nt, gp, flag, G_TY=launch.consts["G_TY"],
                                          ALIGNED=launch.consts["ALIGNED"], BLOCK=BLOCK,
                                          enable_fp_fusion=FP_FUSION)


def fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                         momentum, weight_decay, maximize, plan: FusedPlan | None = None) -> None:
    if not INTERPRETING and not torch.cuda.is_available():
        check_fused_supported(params)
    if plan is None:
        plan = FusedPlan(params, grads, duals, momentum_buffers, momentum != 0.0)
    launch_step(prepare_step(plan, grads, lr=lr, p=p, normalize=normalize, eps=eps, momentum=momentum,
                             weight_decay=weight_decay, maximize=maximize))
