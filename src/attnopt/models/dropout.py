"""Dropout for the encoder: torch's (``impl="torch"``, the default) or a counter-based one
(``impl="counter"``), several times faster on CPU.

torch's CPU dropout draws one Bernoulli number per element from its Mersenne Twister, one
at a time, and stores the mask; on the IMDB encoder's CPU shapes that was about a third of a
training step (docs/imdb_speed.md).  The counter-based dropout keeps element i when a 32-bit
hash of (seed, i) is at least ``round(p · 2³²)`` — SplitMix64's output function of
``seed + ⌈i/2⌉ · golden``, the low or high half — and scales the kept ones by 1/(1 − p), in
one vectorised, multi-threaded pass of a small C kernel (``_dropout.c``, built by
:mod:`attnopt.native`).  The mask is a function of (seed, i) alone, so it is the same for
any thread count and the backward pass recomputes it instead of storing it.  One 63-bit
seed per call is drawn from torch's default CPU generator, so a run's dropout stream is
seeded by ``torch.manual_seed`` and checkpointed with ``torch.get_rng_state`` as before.

The two implementations draw *different* masks: a run with ``counter`` is a different
(equally distributed) sample, not the same numbers faster.  Where the kernel cannot be built,
or for other dtypes and devices, the same masks come from :func:`counter_mask` (torch
integer arithmetic, slower).
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

IMPLS = ("torch", "counter")

GOLDEN = 0x9E3779B97F4A7C15
_C1, _C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
SOURCE = Path(__file__).with_name("_dropout.c")

_lib: ctypes.CDLL | None = None
_failed = False
_lock = threading.Lock()


def _signed(v: int) -> int:
    """The int64 with the bits of the uint64 ``v``."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * _signed(_C1)
    z = (z ^ _lsr(z, 27)) * _signed(_C2)
    return z ^ _lsr(z, 31)


def threshold(p: float) -> int:
    """The 32-bit threshold of drop probability ``p``: element dropped when its number is below it."""
    return min(int(round(float(p) * 2.0**32)), 2**32 - 1)


def counter_mask(n: int, seed: int, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep mask (bool, n) of the counter-based dropout, in torch integer arithmetic
    (int64 products wrap as the C kernel's uint64 ones do)."""
    words = torch.arange(1, (n + 1) // 2 + 1, dtype=torch.int64, device=device)
    h = _mix64(words * _signed(GOLDEN) + _signed(seed))
    u = torch.stack([h & 0xFFFFFFFF, _lsr(h, 32)], dim=1).flatten()[:n]
    return u >= threshold(p)


def _kernel() -> ctypes.CDLL | None:
    global _lib, _failed
    if _lib is None and not _failed:
        with _lock:
            if _lib is None and not _failed:
                from attnopt.native import KernelBuildError, build

                try:
                    lib = build(SOURCE, "attnopt_dropout", "the counter-based dropout",
                                "use dropout_impl='torch'")
                except KernelBuildError as exc:
                    _failed = True
                    warnings.warn(f"{exc} Using the slower torch implementation of the same masks.",
                                  RuntimeWarning, stacklevel=3)
                    return None
                vp, i64 = ctypes.c_void_p, ctypes.c_int64
                lib.attnopt_dropout_f32.restype = None
                lib.attnopt_dropout_f32.argtypes = [vp, vp, i64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float,
                                                    ctypes.c_int]
                _lib = lib
    return _lib


def apply_mask(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """``x`` with the counter-based mask of (``seed``, ``p``) applied and the kept entries scaled
    by 1/(1 − p): the forward and (on the upstream gradient) the backward of the dropout."""
    scale = 1.0 / (1.0 - p)
    lib = _kernel() if x.device.type == "cpu" and x.dtype == torch.float32 else None
    if lib is None:
        keep = counter_mask(x.numel(), seed, p, x.device).view(x.shape)
        return torch.where(keep, x * torch.tensor(scale, dtype=torch.float32).to(x.dtype), x.new_zeros(()))
    src = x.contiguous()
    out = torch.empty_like(src)
    lib.attnopt_dropout_f32(src.data_ptr(), out.data_ptr(), src.numel(), seed, threshold(p), scale,
                            torch.get_num_threads())
    return out


class _CounterDropout(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        return apply_mask(x, p, seed)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.p, ctx.seed = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return apply_mask(grad, ctx.p, ctx.seed), None, None


def dropout(x: torch.Tensor, p: float, training: bool, impl: str = "torch") -> torch.Tensor:
    """Inverted dropout of ``x`` with drop probability ``p`` (identity unless ``training``)."""
    if not training or p == 0.0:
        return x
    if impl == "torch":
        return F.dropout(x, p, True)
    if impl != "counter":
        raise ValueError(f"dropout impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return _CounterDropout.apply(x, p, seed)


__all__ = ["dropout", "counter_mask", "apply_mask", "threshold", "IMPLS"]
