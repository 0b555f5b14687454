r"""The ``fused=True`` path: one Triton kernel launch per device/dtype batch of parameters.

Each program handles one block of ``BLOCK`` elements of one tensor; small device tables
give, per block, its tensor and offset, and, per tensor, the addresses of w, g, θ (and the
momentum buffer) and the normalisation scale.  Per element the kernel reads g and θ once and
writes θ and w once (plus the momentum buffer when on) — the minimum traffic of the update.
w is stored only where θ moved (a masked store: no read of w), since ∇ψ*(∇ψ(w)) is not
exactly w and a zero gradient must leave w's bits alone.
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

The NaN/inf check of ``nonfinite="raise"/"skip"`` is a second kernel over the same tables: it
reads the gradients once and raises a one-element device flag to ``BIG − i`` for the first bad
parameter ``i``; the update kernels read the flag first and write nothing when it is set, and a
one-program kernel then records the step (see :class:`~attnopt.optim._nonfinite.DeviceRecord`).
No host synchronisation: the host learns of a skipped step later.

With ``capturable=True`` a tensor ``lr`` is read by the kernel (``alpha = ∓lr`` and the weight
decay factor are computed on the device), and every table uploaded while a CUDA graph is
captured comes from pinned memory kept alive with the plan, so that replays read it again.

Triton is optional: importing this module without it raises a clear ImportError, and
:class:`~attnopt.optim.MirrorDescent` only imports it for CUDA parameters (or ``fused=True``).
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

import torch
from torch import Tensor

from torch.optim.optimizer import Optimizer

from attnopt.optim._math import BIG, TRITON_INTERPRETING, lq_scale, round_trip_exact, step_constants

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - exercised only without triton
    raise ImportError(
        "MirrorDescent(fused=True) needs Triton: pip install 'attnopt[triton]' (CUDA only)"
    ) from exc

__all__ = ["fused_mirror_descent", "FusedPlan", "plan_for", "prepare_step", "prepared", "launch_step",
           "launch_nonfinite_check", "launch_finalize", "BLOCK"]

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
    w_ptrs, g_ptrs, t_ptrs, b_ptrs, s_ptrs, scalars, flag, lr_ptr,
    W_TY: tl.constexpr, G_TY: tl.constexpr, T_TY: tl.constexpr,
    KIND: tl.constexpr, N: tl.constexpr, OWN: tl.constexpr, HAS_SCALE: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr, HAS_DECAY: tl.constexpr, PRECISE: tl.constexpr,
    ALIGNED: tl.constexpr, HAS_FLAG: tl.constexpr, LR_TENSOR: tl.constexpr, BLOCK: tl.constexpr,
    MASKED: tl.constexpr,
):
    if HAS_FLAG:
        if tl.load(flag) != 0:  # the step's check found a NaN/inf gradient: write nothing
            return
    pid = tl.program_id(0)
    # scalars arrive as float64 bit patterns so that float64 parameters keep full precision
    e = tl.load(scalars + 2).to(tl.float64, bitcast=True).to(T_TY)
    mu = tl.load(scalars + 3).to(tl.float64, bitcast=True).to(T_TY)
    omax = tl.load(scalars + 4).to(tl.float64, bitcast=True).to(T_TY)
    dmax = tl.load(scalars + 5).to(tl.float64, bitcast=True).to(T_TY)
    if LR_TENSOR:  # lr read on the device (capturable): alpha = ∓lr, decay = sign(c)|c|^(p-1), c = 1 - lr·wd
        lr = tl.load(lr_ptr).to(tl.float64)
        wd = tl.load(scalars + 6).to(tl.float64, bitcast=True)
        pm1 = tl.load(scalars + 7).to(tl.float64, bitcast=True)
        sign = tl.load(scalars + 8).to(tl.float64, bitcast=True)
        alpha = (sign * lr).to(T_TY)
        c = 1.0 - lr * wd
        if PRECISE:
            mag = _libdevice.pow(tl.abs(c), pm1)
        else:
            mag = tl.exp(tl.log(tl.abs(c)) * pm1)
        decay = tl.where(c < 0, -mag, mag)
        decay = tl.where(c == 0, 0.0, decay).to(T_TY)
    else:
        alpha = tl.load(scalars + 0).to(tl.float64, bitcast=True).to(T_TY)
        decay = tl.load(scalars + 1).to(tl.float64, bitcast=True).to(T_TY)
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
                  omax, dmax, W_TY, T_TY, KIND, N, OWN, HAS_SCALE, HAS_MOMENTUM, HAS_DECAY, PRECISE, MASKED)
    else:
        _md_block(offs, offs < n, w_ptr, g_ptr, t_ptr, b_ptr, scale, alpha, decay, e, mu,
                  omax, dmax, W_TY, T_TY, KIND, N, OWN, HAS_SCALE, HAS_MOMENTUM, HAS_DECAY, PRECISE, MASKED)


@triton.jit
def _md_block(offs, mask, w_ptr, g_ptr, t_ptr, b_ptr, scale, alpha, decay, e, mu, omax, dmax,
              W_TY: tl.constexpr, T_TY: tl.constexpr, KIND: tl.constexpr, N: tl.constexpr, OWN: tl.constexpr,
              HAS_SCALE: tl.constexpr, HAS_MOMENTUM: tl.constexpr, HAS_DECAY: tl.constexpr,
              PRECISE: tl.constexpr, MASKED: tl.constexpr):
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(T_TY)
    if HAS_SCALE:
        g = g * scale
    if HAS_MOMENTUM:
        b = tl.load(b_ptr + offs, mask=mask, other=0.0) * mu + g
        tl.store(b_ptr + offs, b, mask=mask)
        g = b
    th0 = tl.load(t_ptr + offs, mask=mask, other=0.0)
    th = th0
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
        if MASKED:  # the weights move only where θ did: ∇ψ*(∇ψ(w)) is not exactly w
            tl.store(w_ptr + offs, w.to(W_TY), mask=mask & (th != th0))
        else:
            tl.store(w_ptr + offs, w.to(W_TY), mask=mask)


@triton.jit
def _nonfinite_kernel(block_tensor, block_start, numels, g_ptrs, codes, flag, G_TY: tl.constexpr,
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
        # the parameter's code, BIG - its index: the maximum names the first bad one
        tl.atomic_max(flag, tl.load(codes + t).to(tl.int32))


@triton.jit
def _finalize_kernel(flag, rec, STICKY: tl.constexpr):
    """One program: count the step in ``rec`` (see :class:`~attnopt.optim._nonfinite.DeviceRecord`)."""
    f = tl.load(flag).to(tl.int64)
    steps = tl.load(rec + 3) + 1
    tl.store(rec + 3, steps)
    if f != 0:
        tl.store(rec, tl.load(rec) + 1)
        if tl.load(rec + 1) == 0:
            tl.store(rec + 1, f)
            tl.store(rec + 2, steps)
        if not STICKY:
            tl.store(flag, 0)


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


def _upload(rows: list[int], device: torch.device) -> tuple[Tensor, Tensor | None]:
    """``rows`` as an int64 tensor on ``device``, and the host tensor it came from when that
    must stay alive: under CUDA graph capture the copy is from pinned memory, which a replay
    reads again."""
    host = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        host = host.pin_memory()
        return host.to(device, non_blocking=True), host
    return host.to(device, non_blocking=True), None


def check_fused_supported(params: list[Tensor]) -> None:
    """Raise a clear error unless the fused kernel can run on these parameters."""
    if not INTERPRETING and not torch.cuda.is_available():
        raise RuntimeError("MirrorDescent(fused=True) needs CUDA (the fused path is a Triton GPU kernel); "
                           "on CPU it is a C kernel")
    for param in params:
        _check_batch(param.device, param.dtype)


def _check_batch(device: torch.device, dtype: torch.dtype) -> None:
    if dtype not in _TL_DTYPES:
        raise TypeError(f"MirrorDescent(fused=True) does not support {dtype} parameters")
    if not INTERPRETING and device.type != "cuda":
        raise RuntimeError(f"MirrorDescent(fused=True) needs CUDA parameters, got one on {device}")


class FusedPlan:
    """The step-invariant part of a fused step over one parameter list: the device/dtype
    batches and, per batch, the sizes, block tables, parameter indices and addresses of w, θ
    and the momentum buffers, uploaded to the device once.

    :func:`plan_for` keeps one per parameter group (in the dict the caller passes each step)
    and rebuilds it when a parameter or its θ was replaced; a step then only uploads the
    gradient addresses (and the scalars), and not even those when they equal the last step's.
    """

    __slots__ = ("identities", "momentum", "batches", "source", "step_tables", "keep", "index")

    def __init__(self, params: list[Tensor], grads: list[Tensor], duals: list[Tensor | None],
                 momentum_buffers: list[Tensor | None], momentum: bool, ids: list[int] | None = None) -> None:
        # ids: the parameters' global indices in the optimizer (named by the non-finite check)
        self.identities = tuple(map(id, params))
        self.source = params  # the optimizer passes the same list object while nothing changed
        # batch index -> (host rows, device table, its slices, pinned source) of the last step: reused
        # while the gradient addresses and the scalars repeat (the caching allocator usually hands
        # the gradients the same blocks every step), which saves the per-step host-to-device copy
        self.step_tables: dict[int, tuple] = {}
        self.momentum = momentum
        self.keep = []
        ids = list(range(len(params))) if ids is None else ids
        self.index = ids
        thetas = [w if t is None else t for w, t in zip(params, duals)]
        bufs = momentum_buffers if momentum else [None] * len(params)
        grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, thetas, bufs, duals], with_indices=True)
        self.batches = []
        for (device, pdtype), ((ws, gs, ts, bs, ds), idx) in grouped.items():
            kinds: dict[tuple, list[int]] = {}
            for k, (t, g, d) in enumerate(zip(ts, gs, ds)):
                kinds.setdefault((t.dtype, g.dtype, d is None), []).append(k)
            for (ddtype, gdtype, own), ks in kinds.items():
                self._add_batch(device, (pdtype, ddtype, gdtype, own), [idx[k] for k in ks], [ws[k] for k in ks],
                                [ts[k] for k in ks], [bs[k] for k in ks] if momentum else None,
                                [ids[idx[k]] for k in ks])

    def _add_batch(self, device, dtypes, idx, ws, ts, bs, ids) -> None:
        _check_batch(device, dtypes[0])
        for x in ws + ts + (bs or []):
            if not x.is_contiguous():
                raise RuntimeError("MirrorDescent(fused=True) needs contiguous parameters")
        counts = [x.numel() for x in ws]
        block_tensor, block_start = _block_tables(tuple(counts))
        tp = [x.data_ptr() for x in ts]
        addresses = [x.data_ptr() for x in ws] + tp
        addresses += [x.data_ptr() for x in bs] if bs is not None else tp
        codes = [BIG - i for i in ids]  # the non-finite check's flag value per tensor
        tables, host = _upload(block_tensor + block_start + counts + addresses + codes, device)
        self.keep.append(host)
        nb, n = len(block_tensor), len(ws)
        self.batches.append((dtypes, idx, torch.split(tables, [nb, nb, n, n, n, n, n]), device, _aligned(addresses)))

    def matches(self, params: list[Tensor], momentum: bool) -> bool:
        if self.momentum != momentum:
            return False
        if params is self.source:
            return True
        if self.identities == tuple(map(id, params)):
            self.source = params  # the same parameters in a new list: recognise it by identity next time
            return True
        return False


def plan_for(cache: dict, params, grads, duals, momentum_buffers, momentum: bool, ids=None,
             rebuild: bool = False) -> FusedPlan:
    """The plan kept in ``cache`` (a dict the caller keeps per parameter group), rebuilt when
    the parameters changed or ``rebuild`` says θ or a buffer was replaced."""
    plan = cache.get("plan")
    if (rebuild or plan is None or not plan.matches(params, momentum)
            or (ids is not None and plan.index is not ids and plan.index != ids)):
        plan = cache["plan"] = FusedPlan(params, grads, duals, momentum_buffers, momentum, ids)
        cache.pop("prepared", None)
    return plan


class _Launch(NamedTuple):
    """One batch's kernel launch of a prepared step."""

    grid: int
    tables: tuple[Tensor, ...]  # block tensor, block start, numels, w, g, θ, buffer, scale addresses; scalars
    codes: Tensor  # the batch's parameters' flag codes, BIG − index (for the non-finite check)
    consts: dict[str, Any]  # the kernel's constexpr arguments
    device: torch.device
    keep: tuple  # tensors whose addresses are in the tables (contiguous copies, scales): alive until launched


def prepare_step(plan: FusedPlan, grads: list[Tensor], *, lr, p, normalize, eps, momentum, weight_decay,
                 maximize, grads_contiguous: bool = False) -> list[_Launch]:
    """The launches of one step over ``plan``'s parameters with these gradients: per batch,
    the device table of gradient addresses (and normalisation scales) and scalars, uploaded
    only when it differs from the last step's.  ``grads_contiguous`` skips the contiguity
    check when the caller has made it.  A tensor ``lr`` on the parameters' device is read by
    the kernel (nothing of it is uploaded, so the table is the same every step)."""
    lr_tensor = isinstance(lr, Tensor)
    e, kind, npow, decay, alpha = step_constants(0.0 if lr_tensor else lr, p, weight_decay, maximize)
    if lr_tensor:
        decay = 0.5 if weight_decay != 0.0 else 1.0  # computed by the kernel; only "≠ 1" matters here
    launches = []
    for bi, (dtypes, idx, (bt, bst, nt, wp, tp, bp, codes), device, aligned) in enumerate(plan.batches):
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
        rows += map(_f64_bits, (0.0 if lr_tensor else alpha, 0.0 if lr_tensor else decay, e, momentum, omax, dmax,
                                weight_decay, p - 1.0, 1.0 if maximize else -1.0))
        cached = plan.step_tables.get(bi)
        if cached is not None and cached[0] == rows:
            step = cached[2]
        else:
            table, host = _upload(rows, device)
            if host is not None:  # captured in a CUDA graph, whose replays read both again: keep them
                plan.keep.append((host, table))
            gp = table[:n]
            step = (gp, table[n:2 * n] if normalize else gp, table[-9:], aligned and _aligned(rows[:n]))
            if not normalize:  # the scales are new tensors every step: nothing to reuse
                plan.step_tables[bi] = (rows, table, step, host)
        gp, sp, scalars, vector = step
        lr_ptr = lr.detach().reshape(1) if lr_tensor else scalars
        consts = dict(W_TY=_TL_DTYPES[pdtype], G_TY=_TL_DTYPES[gdtype], T_TY=_TL_DTYPES[ddtype],
                      KIND=_KINDS[kind], N=npow, OWN=own, HAS_SCALE=normalize, HAS_MOMENTUM=momentum != 0.0,
                      HAS_DECAY=decay != 1.0, PRECISE=not INTERPRETING, ALIGNED=vector, LR_TENSOR=lr_tensor,
                      BLOCK=BLOCK, MASKED=not own and not round_trip_exact(e, pdtype, ddtype))
        launches.append(_Launch(nb, (bt, bst, nt, wp, gp, tp, bp, sp, scalars, lr_ptr), codes, consts, device,
                                (gs, scales)))
    return launches


def prepared(cache: dict, params, grads, duals, momentum_buffers, *, ids=None, rebuild=False,
             grads_contiguous=False, **hyper) -> list[_Launch]:
    """The step's launches for this parameter group, prepared once per step: the non-finite
    check and the update share them (the same gradient list and hyper-parameters)."""
    memo = cache.get("prepared")
    key = tuple(sorted((k, id(v) if isinstance(v, Tensor) else v) for k, v in hyper.items()))
    if not rebuild and memo is not None and memo[0] is grads and memo[1] == key:
        return memo[2]
    plan = plan_for(cache, params, grads, duals, momentum_buffers, hyper["momentum"] != 0.0, ids, rebuild)
    launches = prepare_step(plan, grads, grads_contiguous=grads_contiguous, **hyper)
    cache["prepared"] = (grads, key, launches)
    return launches


def launch_step(launches: list[_Launch], found_inf: Tensor | None = None) -> None:
    """Run a prepared step (asynchronously, on the parameters' devices); a batch whose device
    flag ``found_inf`` is set at run time writes nothing."""
    for launch in launches:
        flag = found_inf if found_inf is not None else launch.tables[8]
        _md_kernel[(launch.grid,)](*launch.tables[:9], flag, launch.tables[9], **launch.consts,
                                   HAS_FLAG=found_inf is not None, enable_fp_fusion=FP_FUSION)


def launch_nonfinite_check(launches: list[_Launch], flag: Tensor) -> None:
    """Raise ``flag`` (int32[1] on the launches' device, left as is otherwise) to ``BIG − i``
    for the first parameter ``i`` whose gradient holds a NaN or ±inf: one read of the
    gradients, no host synchronisation, exact."""
    for launch in launches:
        bt, bst, nt, _, gp = launch.tables[:5]
        _nonfinite_kernel[(launch.grid,)](bt, bst, nt, gp, launch.codes, flag, G_TY=launch.consts["G_TY"],
                                          ALIGNED=launch.consts["ALIGNED"], BLOCK=BLOCK,
                                          enable_fp_fusion=FP_FUSION)


def launch_finalize(flag: Tensor, rec: Tensor, sticky: bool) -> None:
    """The end-of-step bookkeeping of :class:`~attnopt.optim._nonfinite.DeviceRecord`, one program."""
    _finalize_kernel[(1,)](flag, rec, STICKY=sticky)


def fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps, momentum,
                         weight_decay, maximize, found_inf: Tensor | None = None, fused_plan: dict | None = None,
                         ids=None, rebuild: bool = False, grads_contiguous: bool = False) -> None:
    """The fused step (same contract as the other paths of :func:`~attnopt.optim.mirror_descent`).
    ``fused_plan``: a dict kept by the caller between steps, where the plan is reused."""
    if not INTERPRETING and not torch.cuda.is_available():
        check_fused_supported(params)
    cache = {} if fused_plan is None else fused_plan
    launches = prepared(cache, params, grads, duals, momentum_buffers, ids=ids, rebuild=rebuild,
                        grads_contiguous=grads_contiguous, lr=lr, p=p, normalize=normalize, eps=eps,
                        momentum=momentum, weight_decay=weight_decay, maximize=maximize)
    launch_step(launches, found_inf)
