r"""The ``fused=True`` path on CPU: one C kernel call per step for a whole list of tensors.

The kernel (``_cpu_kernel.c`` beside this file) is compiled at first use and cached by
:func:`attnopt.native.build` (the system C compiler, ``-O3 -march=native -fopenmp``, the kernel
cache ``$ATTNOPT_CACHE/kernels``).  It reads g and θ once and writes θ and w once per element, writing large float32
weights with non-temporal stores, and counts non-finite gradient entries in one read (the
optimizer's check before any write).  See the C source for the arithmetic.

Supported by the kernel: contiguous CPU float32 or bfloat16 weights and gradients with a
float32 θ (and momentum buffer).  Any other tensor of the list (float64 or float16 weights,
a float64 ``dual_dtype``, a non-contiguous tensor) is updated by the single-tensor path in
the same call, so ``fused=True`` works for every CPU parameter.
"""

from __future__ import annotations

import ctypes
import operator
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy
import torch
from torch import Tensor

from torch.optim.optimizer import Optimizer

from attnopt import native
from attnopt.native import KernelBuildError
from attnopt.optim._eager import single_tensor_mirror_descent
from attnopt.optim._math import (classify_exponent, float_step_scalars, inverse_exponent, lq_scale,
                                 round_trip_exact)

__all__ = ["cpu_fused_mirror_descent", "count_nonfinite", "count_prepared", "prepare", "load", "is_loaded", "kernel_supports", "KernelBuildError"]


SOURCE = Path(__file__).with_name("_cpu_kernel.c")
_KINDS = {"identity": 0, "square": 1, "sqrt": 2, "int": 3, "halfint": 4, "general": 5}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_dtype = operator.attrgetter("dtype")
_FMAX = {dt: float(torch.finfo(dt).max) for dt in _DTYPES}
# the build (compiler, flags, cache folder and its pruning) is attnopt.native's, shared with
# the encoder's dropout kernel; these names are kept for the tests and for users' scripts
_compiler, _cpu_signature = native.compiler, native.cpu_signature
ARCH_ENV_VAR, KEEP_BUILDS = native.ARCH_ENV_VAR, native.KEEP_BUILDS

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def _build() -> ctypes.CDLL:
    """``MirrorDescent()`` falls back to the single-tensor path with one warning when this
    raises :class:`KernelBuildError`; ``fused=True`` raises it."""
    return _declare(native.build(SOURCE, "attnopt_md", "MirrorDescent's fused CPU path",
                                 "pass foreach=False for the single-tensor path"))


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.attnopt_md_step.restype = i
    lib.attnopt_md_step.argtypes = [i, vp, vp, vp, vp, vp, vp, i, i, i, d, d, d, i, i, d, d, i, i, i, vp]
    lib.attnopt_count_nonfinite.restype = ctypes.c_int64
    lib.attnopt_count_nonfinite.argtypes = [i, vp, vp, i, i]
    return lib


def load() -> ctypes.CDLL:
    """The kernel library, built (or fetched from the cache) on first call."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _build()
    return _lib


def is_loaded() -> bool:
    return _lib is not None


def kernel_supports(param: Tensor, grad: Tensor, theta: Tensor | None, buf: Tensor | None) -> bool:
    """Whether the C kernel takes this tensor (else the single-tensor path does)."""
    t = param if theta is None else theta
    return (
        param.device.type == "cpu"
        and param.dtype in _DTYPES
        and grad.dtype in _DTYPES
        and t.dtype == torch.float32
        and not grad.is_sparse
        and param.is_contiguous()
        and grad.is_contiguous()
        and t.is_contiguous()
        and grad.shape == param.shape
        and (buf is None or (buf.dtype == torch.float32 and buf.is_contiguous()))
    )


# elements per OpenMP thread below which another thread costs more than it saves: waking a
# thread team costs microseconds on an idle machine and can cost milliseconds on a loaded one
# (measured: a step over 41 tensors of 16 x 16 took 11-18 ms with 2 threads on a loaded machine,
# under 1 ms with one)
GRAIN = 1 << 16


def threads_for(numel: int) -> int:
    """OpenMP threads for a kernel call over ``numel`` elements: one per GRAIN elements, at most
    torch's thread count."""
    return max(1, min(torch.get_num_threads(), -(-numel // GRAIN)))


def _ptrs(tensors: list[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _grad_ptrs(tensors: list[Tensor]) -> numpy.ndarray:
    """The tensors' addresses in a numpy array (built faster than a ctypes array; the kernel
    takes ``array.ctypes.data``)."""
    return numpy.fromiter(map(Tensor.data_ptr, tensors), dtype=numpy.uintp, count=len(tensors))


def _count(lib: ctypes.CDLL, gs: list[Tensor], code: int) -> int:
    numels = [g.numel() for g in gs]
    n = lib.attnopt_count_nonfinite(len(gs), _ptrs(gs), (ctypes.c_int64 * len(gs))(*numels), code,
                                    threads_for(sum(numels)))
    if n < 0:
        raise MemoryError("attnopt CPU kernel: out of memory")
    return n


def count_nonfinite(grads: list[Tensor]) -> int:
    """Number of NaN/±inf entries over the gradients (one read of each; exact)."""
    dtypes = set(map(_dtype, grads))
    if len(dtypes) == 1 and (dt := dtypes.pop()) in _DTYPES and all(map(Tensor.is_contiguous, grads)) \
            and all(g.device.type == "cpu" and not g.is_sparse for g in grads):
        return _count(load(), grads, _DTYPES[dt])  # one call: the usual case
    total = 0
    fast: dict[int, list[Tensor]] = {}
    for g in grads:
        if g.device.type == "cpu" and g.dtype in _DTYPES and g.is_contiguous() and not g.is_sparse:
            fast.setdefault(_DTYPES[g.dtype], []).append(g)
        else:
            total += int((~torch.isfinite(g)).sum())
    if fast:
        lib = load()
        total += sum(_count(lib, gs, code) for code, gs in fast.items())
    return total


class _Call(NamedTuple):
    """One kernel call of a step: the tensors of one (weight dtype, gradient dtype, own dual,
    masked) kind, with the pointer arrays that stay valid between steps."""

    idx: list[int]
    pdtype: torch.dtype
    gdtype: torch.dtype
    own: bool
    masked: bool
    ws: list[Tensor]  # the weights, detached (they share the parameters' version counters)
    w_ptrs: Any
    theta_ptrs: Any
    buf_ptrs: Any
    sizes: Any
    threads: int
    whole: bool  # idx is every tensor of the list, in order: the gradients need no gathering
    inexact: Any  # masked calls: the kernel's per-tensor "a kept weight differs" flags (numpy intc), else None
    inexact_ptr: int | None  # its address, kept (the array lives as long as the plan)


class _Plan(NamedTuple):
    """What a step over the same lists reuses (kept in the optimizer's ``fused_plan["cpu"]``)."""

    params: list[Tensor]
    duals: list[Tensor | None]
    bufs: list[Tensor | None]
    exact: list[bool] | None  # the exact-flags list the plan was made for (updated in place, False -> True only)
    key: tuple  # (e, momentum on, gradient dtypes, contiguity, how many exact flags are True)
    kind: str  # how |θ|^e is computed, and its n (classify_exponent)
    n: int
    rest: list[int]
    calls: list[_Call]


class Prepared(NamedTuple):
    """One step's plan and gradient pointers (one array per kernel call), shared by the
    non-finite count before the step and the step itself."""

    plan: _Plan
    grads: list[Tensor]
    exact: list[bool] | None
    grad_ptrs: list[Any]


def _merge_small(kernel: dict[tuple, list[int]], params) -> None:
    """Run a small group that masking alone splits as one masked call.  A masked step writes
    an exact tensor's bits as the plain step does (where theta did not move, its weight already
    is the inverse of theta), and below GRAIN elements the second call's fixed cost is the
    larger one (measured, 41 tensors of 16 x 16 at p = 1.75 with 3 exact: 66 us a step in two
    calls, 53 us at p = 1.1 in one)."""
    for pdtype, gdtype, own, masked in list(kernel):
        other = (pdtype, gdtype, own, True)
        if masked or other not in kernel:
            continue
        both = kernel[(pdtype, gdtype, own, False)] + kernel[other]
        if sum(params[i].numel() for i in both) <= GRAIN:
            kernel[other] = both
            del kernel[(pdtype, gdtype, own, False)]


def _plan(params, grads, duals, bufs, key, e, exact) -> _Plan:
    kernel: dict[tuple, list[int]] = {}
    rest: list[int] = []
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, duals, bufs], with_indices=True)
    for (_, pdtype), ((ps, gs, ds, bs), idx) in grouped.items():
        for param, grad, theta, buf, i in zip(ps, gs, ds, bs, idx):
            if kernel_supports(param, grad, theta, buf):
                own = theta is None
                masked = not own and not (exact is not None and exact[i]) and not round_trip_exact(e, pdtype, theta.dtype)
                kernel.setdefault((pdtype, grad.dtype, own, masked), []).append(i)
            else:
                rest.append(i)
    _merge_small(kernel, params)
    calls = []
    for (pdtype, gdtype, own, masked), idx in kernel.items():
        idx.sort()
        ws = [params[i].detach() for i in idx]
        numels = [w.numel() for w in ws]
        flags = numpy.zeros(len(idx), dtype=numpy.intc) if masked else None
        calls.append(_Call(idx, pdtype, gdtype, own, masked, ws, _ptrs(ws),
                           _ptrs(ws if own else [duals[i] for i in idx]),
                           _ptrs([bufs[i] for i in idx]) if bufs[idx[0]] is not None else None,
                           (ctypes.c_int64 * len(idx))(*numels), threads_for(sum(numels)), len(idx) == len(params),
                           flags, None if flags is None else flags.ctypes.data))
    kind, n = classify_exponent(e)
    return _Plan(params, duals, bufs, exact, key, kind, n, rest, calls)


def prepare(fused_plan: dict | None, params, grads, duals, momentum_buffers, *, p: float, momentum: float,
            exact: list[bool] | None, contiguous: bool | None = None) -> Prepared:
    """The step's plan (reused from ``fused_plan`` when it still holds: the same list objects,
    the gradients' dtypes and contiguity, the exponent, momentum on or off, and the same
    ``exact`` list with as many True flags — its flags only ever turn True, in place) and its
    gradient pointers; kept in ``fused_plan["step"]`` for the step that follows.
    ``contiguous``: whether every gradient is contiguous, when the caller knows."""
    e = inverse_exponent(p)
    bufs = momentum_buffers if momentum != 0.0 else [None] * len(params)
    if contiguous is None:
        contiguous = all(map(Tensor.is_contiguous, grads))
    key = (e, momentum != 0.0, tuple(map(_dtype, grads)), contiguous or tuple(map(Tensor.is_contiguous, grads)),
           None if exact is None else sum(exact))
    plan = None if fused_plan is None else fused_plan.get("cpu")
    if plan is None or plan.params is not params or plan.duals is not duals or plan.exact is not exact \
            or plan.key != key or (momentum != 0.0 and plan.bufs is not momentum_buffers):
        plan = _plan(params, grads, duals, bufs, key, e, exact)
        if fused_plan is not None:
            fused_plan["cpu"] = plan
    prep = Prepared(plan, grads, exact, [_grad_ptrs(grads if c.whole else [grads[i] for i in c.idx])
                                         for c in plan.calls])
    if fused_plan is not None:
        fused_plan["step"] = prep
    return prep


def count_prepared(prep: Prepared) -> int:
    """:func:`count_nonfinite` over a prepared step's gradients, reusing its pointers."""
    total = 0
    if prep.plan.calls:
        lib = load()
        for c, ptrs in zip(prep.plan.calls, prep.grad_ptrs):
            n = lib.attnopt_count_nonfinite(len(c.idx), ptrs.ctypes.data, c.sizes, _DTYPES[c.gdtype], c.threads)
            if n < 0:
                raise MemoryError("attnopt CPU kernel: out of memory")
            total += n
    if prep.plan.rest:
        total += count_nonfinite([prep.grads[i] for i in prep.plan.rest])
    return total


def cpu_fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                             momentum, weight_decay, maximize, exact: list[bool] | None = None,
                             fused_plan: dict | None = None) -> None:
    """The fused step on CPU (same contract as the other paths of :func:`mirror_descent`,
    ``exact`` included).  ``fused_plan``: a dict kept between steps over the same lists (the
    optimizer's), where :func:`prepare` keeps the tensors' grouping and pointer arrays (the
    optimizer builds new lists when a tensor is replaced, edited or re-synchronised)."""
    lr = float(lr)  # a CPU tensor lr: no synchronisation
    e = inverse_exponent(p)
    decay, alpha = float_step_scalars(lr, p, weight_decay, maximize)  # kind and n are kept in the plan
    prep = None if fused_plan is None else fused_plan.pop("step", None)
    if prep is None or prep.grads is not grads or prep.exact is not exact or prep.plan.params is not params \
            or prep.plan.duals is not duals or prep.plan.key[0] != e:
        prep = prepare(fused_plan, params, grads, duals, momentum_buffers, p=p, momentum=momentum, exact=exact)
        if fused_plan is not None:
            del fused_plan["step"]  # a step's gradient pointers serve that step only
    plan = prep.plan
    kind, n = plan.kind, plan.n
    if plan.rest:
        rest = plan.rest
        sub = None if exact is None else [exact[i] for i in rest]
        single_tensor_mirror_descent(
            [params[i] for i in rest], [grads[i] for i in rest], [duals[i] for i in rest],
            [momentum_buffers[i] for i in rest], lr=lr, p=p, normalize=normalize, eps=eps,
            momentum=momentum, weight_decay=weight_decay, maximize=maximize, exact=sub,
        )
        if exact is not None:
            for i, flag in zip(rest, sub):
                exact[i] = flag
    if not plan.calls:
        return
    lib = load()
    for c, gptrs in zip(plan.calls, prep.grad_ptrs):
        scales = None
        if normalize:
            gs = grads if c.whole else [grads[i] for i in c.idx]
            scales = (ctypes.c_double * len(gs))(*[float(lq_scale(g, p, eps, torch.float32)) for g in gs])
        if c.masked:
            c.inexact.fill(0)
        rc = lib.attnopt_md_step(
            len(c.idx), c.w_ptrs, c.theta_ptrs, gptrs.ctypes.data, c.buf_ptrs, c.sizes, scales,
            _DTYPES[c.pdtype], _DTYPES[c.gdtype], int(c.own), alpha, decay, momentum,
            _KINDS[kind], n, e, _FMAX[c.pdtype], 1, c.threads, int(c.masked), c.inexact_ptr,
        )
        if rc != 0:
            raise MemoryError("attnopt CPU kernel: out of memory")
        if c.masked and exact is not None and not c.inexact.all():  # some tensors the kernel found exact
            for j in numpy.flatnonzero(c.inexact == 0).tolist():
                exact[c.idx[j]] = True
        # the kernel wrote through raw pointers: mark the weights as modified in place, as the
        # other paths' copy_ does (autograd's saved-tensor checks see it)
        torch.autograd.graph.increment_version(c.ws)
