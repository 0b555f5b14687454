r"""The ``fused=True`` path on CPU: one C kernel call per step for a whole list of tensors.

The kernel (``_cpu_kernel.c`` beside this file) is compiled at first use with the system C
compiler (``$CC``, else Python's, else ``cc``) as ``-O3 -march=native -fopenmp`` (the target
set by ``$ATTNOPT_KERNEL_ARCH``) and cached
under ``$ATTNOPT_CACHE/kernels`` (default ``~/.cache/attnopt/kernels``, beside the token cache), keyed by the source, the
compiler and the CPU (the newest :data:`KEEP_BUILDS` are kept), then loaded with
:mod:`ctypes`; a second process reuses the cached library.  It reads g and θ once and writes θ and w once per element, writing large float32
weights with non-temporal stores, and counts non-finite gradient entries in one read (the
optimizer's check before any write).  See the C source for the arithmetic.

Supported by the kernel: contiguous CPU float32 or bfloat16 weights and gradients with a
float32 θ (and momentum buffer).  Any other tensor of the list (float64 or float16 weights,
a float64 ``dual_dtype``, a non-contiguous tensor) is updated by the single-tensor path in
the same call, so ``fused=True`` works for every CPU parameter.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from torch.optim.optimizer import Optimizer

from attnopt.errors import UserError
from attnopt.optim._eager import single_tensor_mirror_descent
from attnopt.optim._math import lq_scale, step_constants

__all__ = ["cpu_fused_mirror_descent", "count_nonfinite", "load", "is_loaded", "kernel_supports", "KernelBuildError"]


class KernelBuildError(UserError, RuntimeError):
    """The fused CPU kernel cannot be built or loaded here: no working C compiler, or a kernel
    cache folder (``$ATTNOPT_CACHE/kernels``) that cannot be written.  ``MirrorDescent()``
    then falls back to the single-tensor path with one warning; ``fused=True`` raises this."""

SOURCE = Path(__file__).with_name("_cpu_kernel.c")
_KINDS = {"identity": 0, "square": 1, "sqrt": 2, "int": 3, "halfint": 4, "general": 5}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
#: The target CPU: ``-march=$ATTNOPT_KERNEL_ARCH`` (default ``native``; e.g. ``x86-64-v3`` for
#: a cache shared by machines with AVX2 but not AVX-512, or to test the portable code).
ARCH_ENV_VAR = "ATTNOPT_KERNEL_ARCH"


def _flag_sets() -> tuple[list[str], ...]:
    arch = f"-march={os.environ.get(ARCH_ENV_VAR) or 'native'}"
    return (
        ["-O3", arch, "-fopenmp"],
        ["-O3", arch],  # a compiler without OpenMP (e.g. Apple clang): one thread
        ["-O3"],
    )


_COMMON_FLAGS = ["-fno-math-errno", "-fPIC", "-shared"]

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


def _compiler() -> list[str]:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc)


def _cache_dir() -> Path:
    from attnopt.paths import cache_dir  # $ATTNOPT_CACHE, beside the token cache

    return cache_dir() / "kernels"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


#: Builds kept in the cache folder (one per source version, compiler, flags and CPU).
KEEP_BUILDS = 8


def _prune(folder: Path, keep: int = KEEP_BUILDS) -> None:
    """Delete all but the ``keep`` newest builds.  A process that has one loaded keeps its
    mapping; a later process that needs a deleted one rebuilds it (about a second)."""
    builds = []
    for path in folder.glob("attnopt_md_*.so"):
        try:
            builds.append((path.stat().st_mtime_ns, path))
        except OSError:  # deleted meanwhile by another process
            pass
    for _, path in sorted(builds, reverse=True)[keep:]:
        try:
            path.unlink()
        except OSError:
            pass


def _build() -> ctypes.CDLL:
    cc = _compiler()
    try:
        version = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(
            f"MirrorDescent's fused CPU path compiles a small C kernel at first use, but the C compiler "
            f"{' '.join(cc)!r} could not be run ({exc}). Install a C compiler (gcc or clang) or set $CC; "
            "or pass foreach=False for the single-tensor path."
        ) from exc
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, suffix=".probe")
        probe.close()
    except OSError as exc:
        raise KernelBuildError(
            f"MirrorDescent's fused CPU path keeps its compiled C kernel in the kernel cache {folder}, "
            f"which cannot be written ({exc.strerror or exc}). Set $ATTNOPT_CACHE to a writable folder, "
            "or pass foreach=False for the single-tensor path."
        ) from exc
    source = SOURCE.read_bytes()
    errors = []
    for flags in _flag_sets():
        key = hashlib.sha256(
            b"\0".join([source, version.encode(), " ".join(cc + flags + _COMMON_FLAGS).encode(),
                        _cpu_signature().encode()])
        ).hexdigest()[:20]
        target = folder / f"attnopt_md_{key}.so"
        if not target.exists():
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
            os.close(fd)
            cmd = cc + flags + _COMMON_FLAGS + [str(SOURCE), "-o", tmp, "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                os.unlink(tmp)
                errors.append(f"$ {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
                continue
            os.replace(tmp, target)  # atomic: concurrent builders (DDP ranks) agree
            _prune(target.parent)
        try:
            return _declare(ctypes.CDLL(str(target)))
        except OSError as exc:
            errors.append(f"loading {target}: {exc}")
    raise KernelBuildError(
        "MirrorDescent's fused CPU path could not build its C kernel:\n" + "\n".join(errors)
        + "\nPass foreach=False for the single-tensor path."
    )


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, i, d = ctypes.c_void_p, ctypes.c_int, ctypes.c_double
    lib.attnopt_md_step.restype = i
    lib.attnopt_md_step.argtypes = [i, vp, vp, vp, vp, vp, vp, i, i, i, d, d, d, i, i, d, d, i, i]
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
                             momentum, weight_decay, maximize) -> None:
    """The fused step on CPU (same contract as the other paths of :func:`mirror_descent`)."""
    lr = float(lr)  # a CPU tensor lr: no synchronisation
    e, kind, n, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    kernel: dict[tuple, list[int]] = {}
    rest: list[int] = []
    bufs = momentum_buffers if momentum != 0.0 else [None] * len(params)
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, duals, bufs], with_indices=True)
    for (_, pdtype), ((ps, gs, ds, bs), idx) in grouped.items():
        for param, grad, theta, buf, i in zip(ps, gs, ds, bs, idx):
            if kernel_supports(param, grad, theta, buf):
                kernel.setdefault((pdtype, grad.dtype, theta is None), []).append(i)
            else:
                rest.append(i)
    if rest:
        single_tensor_mirror_descent(
            [params[i] for i in rest], [grads[i] for i in rest], [duals[i] for i in rest],
            [momentum_buffers[i] for i in rest], lr=lr, p=p, normalize=normalize, eps=eps,
            momentum=momentum, weight_decay=weight_decay, maximize=maximize,
        )
    if not kernel:
        return
    lib = load()
    threads = torch.get_num_threads()
    for (pdtype, gdtype, own), idx in kernel.items():
        ws = [params[i].detach() for i in idx]
        thetas = ws if own else [duals[i] for i in idx]
        gs = [grads[i] for i in idx]
        bufs = _ptrs([momentum_buffers[i] for i in idx]) if momentum != 0.0 else None
        scales = None
        if normalize:
            scales = (ctypes.c_double * len(idx))(*[float(lq_scale(g, p, eps, torch.float32)) for g in gs])
        sizes = (ctypes.c_int64 * len(idx))(*[w.numel() for w in ws])
        rc = lib.attnopt_md_step(
            len(idx), _ptrs(ws), _ptrs(thetas), _ptrs(gs), bufs, sizes, scales,
            _DTYPES[pdtype], _DTYPES[gdtype], int(own), alpha, decay, momentum,
            _KINDS[kind], n, e, float(torch.finfo(pdtype).max), 1, threads,
        )
        if rc != 0:
            raise MemoryError("attnopt CPU kernel: out of memory")
        # the kernel wrote through raw pointers: mark the weights as modified in place, as the
        # other paths' copy_ does (autograd's saved-tensor checks see it)
        for w in ws:
            torch.autograd.graph.increment_version(w)
