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
import threading
from pathlib import Path

import torch
from torch import Tensor

from torch.optim.optimizer import Optimizer

from attnopt import native
from attnopt.native import KernelBuildError
from attnopt.optim._eager import single_tensor_mirror_descent
from attnopt.optim._math import lq_scale, round_trip_exact, step_constants

__all__ = ["cpu_fused_mirror_descent", "count_nonfinite", "load", "is_loaded", "kernel_supports", "KernelBuildError"]


SOURCE = Path(__file__).with_name("_cpu_kernel.c")
_KINDS = {"identity": 0, "square": 1, "sqrt": 2, "int": 3, "halfint": 4, "general": 5}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
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


def _ptrs(tensors: list[Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def count_nonfinite(grads: list[Tensor]) -> int:
    """Number of NaN/±inf entries over the gradients (one read of each; exact)."""
    total = 0
    fast: dict[int, list[Tensor]] = {}
    for g in grads:
        if g.device.type == "cpu" and g.dtype in _DTYPES and g.is_contiguous() and not g.is_sparse:
            fast.setdefault(_DTYPES[g.dtype], []).append(g)
        else:
            total += int((~torch.isfinite(g)).sum())
    if fast:
        lib = load()
        for code, gs in fast.items():
            sizes = (ctypes.c_int64 * len(gs))(*[g.numel() for g in gs])
            n = lib.attnopt_count_nonfinite(len(gs), _ptrs(gs), sizes, code, torch.get_num_threads())
            if n < 0:
                raise MemoryError("attnopt CPU kernel: out of memory")
            total += n
    return total


def cpu_fused_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                             momentum, weight_decay, maximize, exact: list[bool] | None = None) -> None:
    """The fused step on CPU (same contract as the other paths of :func:`mirror_descent`,
    ``exact`` included)."""
    lr = float(lr)  # a CPU tensor lr: no synchronisation
    e, kind, n, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    kernel: dict[tuple, list[int]] = {}
    rest: list[int] = []
    bufs = momentum_buffers if momentum != 0.0 else [None] * len(params)
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, duals, bufs], with_indices=True)
    for (_, pdtype), ((ps, gs, ds, bs), idx) in grouped.items():
        for param, grad, theta, buf, i in zip(ps, gs, ds, bs, idx):
            if kernel_supports(param, grad, theta, buf):
                own = theta is None
                masked = not own and not (exact is not None and exact[i]) and not round_trip_exact(e, pdtype, theta.dtype)
                kernel.setdefault((pdtype, grad.dtype, own, masked), []).append(i)
            else:
                rest.append(i)
    if rest:
        sub = None if exact is None else [exact[i] for i in rest]
        single_tensor_mirror_descent(
            [params[i] for i in rest], [grads[i] for i in rest], [duals[i] for i in rest],
            [momentum_buffers[i] for i in rest], lr=lr, p=p, normalize=normalize, eps=eps,
            momentum=momentum, weight_decay=weight_decay, maximize=maximize, exact=sub,
        )
        if exact is not None:
            for i, flag in zip(rest, sub):
                exact[i] = flag
    if not kernel:
        return
    lib = load()
    threads = torch.get_num_threads()
    for (pdtype, gdtype, own, masked), idx in kernel.items():
        ws = [params[i].detach() for i in idx]
        thetas = ws if own else [duals[i] for i in idx]
        gs = [grads[i] for i in idx]
        bufs = _ptrs([momentum_buffers[i] for i in idx]) if momentum != 0.0 else None
        scales = None
        if normalize:
            scales = (ctypes.c_double * len(idx))(*[float(lq_scale(g, p, eps, torch.float32)) for g in gs])
        sizes = (ctypes.c_int64 * len(idx))(*[w.numel() for w in ws])
        inexact = (ctypes.c_int * len(idx))() if masked else None
        rc = lib.attnopt_md_step(
            len(idx), _ptrs(ws), _ptrs(thetas), _ptrs(gs), bufs, sizes, scales,
            _DTYPES[pdtype], _DTYPES[gdtype], int(own), alpha, decay, momentum,
            _KINDS[kind], n, e, float(torch.finfo(pdtype).max), 1, threads, int(masked), inexact,
        )
        if rc != 0:
            raise MemoryError("attnopt CPU kernel: out of memory")
        if masked and exact is not None:
            for i, bad in zip(idx, inexact):
                exact[i] = not bad
        # the kernel wrote through raw pointers: mark the weights as modified in place, as the
        # other paths' copy_ does (autograd's saved-tensor checks see it)
        for w in ws:
            torch.autograd.graph.increment_version(w)
