r"""The entrywise :math:`\ell_p` mirror map and its Bregman divergences.

The potential is :math:`\psi(w) = \frac1p \sum_j |w_j|^p` for :math:`p > 1`, taken entrywise
over the whole tensor.  With :math:`q = p/(p-1)` the conjugate exponent,

* mirror map        :math:`\nabla\psi(w) = \mathrm{sign}(w)\,|w|^{p-1}`
* inverse map       :math:`\nabla\psi^*(\theta) = \mathrm{sign}(\theta)\,|\theta|^{1/(p-1)}`
  (:math:`\psi^* = \frac1q\|\cdot\|_q^q`)
* Bregman divergence
  :math:`D_\psi(A, B) = \psi(A) - \psi(B) - \langle\nabla\psi(B), A - B\rangle
  = \frac1p\|A\|_p^p + \frac{p-1}{p}\|B\|_p^p - \langle \mathrm{sign}(B)|B|^{p-1}, A\rangle`
* directional Bregman divergence (the convergence metric of ℓp-AttGD)
  :math:`D_\psi(W^{mm}/\|W^{mm}\|_p,\; W/\|W\|_p)` — the SVM solution first, the iterate second.

Every function accepts ``torch.Tensor`` or ``numpy.ndarray`` (and returns the same kind).
Reductions run over all entries by default; pass ``dim`` (an int or a tuple of ints) to
keep leading batch dimensions, e.g. ``dim=(-2, -1)`` for a batch of matrices.

Numerics.  Powers are taken of ``|x|`` so no NaN arises from negative bases; ``0`` maps to
``0`` for every exponent.  Norms are computed after scaling by the largest magnitude, so
``lp_norm`` neither overflows nor underflows where the norm itself is representable (this
matters for p = 1.01, whose inverse exponent is 100, and for p = 10).  The Bregman
divergence is summed from its per-entry terms, each of which is a one-dimensional Bregman
divergence and therefore non-negative; rounding residue below zero is clipped, so the result
is ``>= 0`` exactly and ``0`` only where the arguments agree.
"""

from __future__ import annotations

import math
from typing import Sequence, TypeVar, Union

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)
Dim = Union[int, Sequence[int], None]

P_MIN = 1.0 + 1e-9


def check_p(p: float) -> float:
    """Validate an ℓp exponent (finite, > 1) and return it as a float."""
    try:
        pf = float(p)
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise TypeError(f"p must be a real number > 1, got {p!r}") from exc
    if not math.isfinite(pf) or pf <= 1.0:
        raise ValueError(f"p must be a finite number > 1 (the potential is (1/p)|w|_p^p), got p={p!r}")
    return pf


def dual_exponent(p: float) -> float:
    """The conjugate exponent q = p / (p - 1), so that 1/p + 1/q = 1."""
    p = check_p(p)
    return p / (p - 1.0)


def _as_torch(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr)), True


def _back(t: torch.Tensor, was_numpy: bool):
    if not was_numpy:
        return t
    out = t.detach().cpu().numpy()
    return out[()] if out.ndim == 0 else out


def _dims(t: torch.Tensor, dim: Dim):
    if dim is None:
        return tuple(range(t.ndim))
    if isinstance(dim, int):
        return (dim,)
    return tuple(dim)


def _signed_pow(x: torch.Tensor, e: float) -> torch.Tensor:
    """sign(x) |x|^e with 0 -> 0 (also for e < 1)."""
    return torch.sign(x) * torch.abs(x).pow(e)


def grad_psi(w: Array, p: float) -> Array:
    r"""Mirror map :math:`\nabla\psi(w) = \mathrm{sign}(w)|w|^{p-1}` (entrywise)."""
    p = check_p(p)
    t, was_np = _as_torch(w)
    return _back(_signed_pow(t, p - 1.0), was_np)


def grad_psi_star(theta: Array, p: float) -> Array:
    r"""Inverse mirror map :math:`\nabla\psi^*(\theta) = \mathrm{sign}(\theta)|\theta|^{1/(p-1)}`."""
    p = check_p(p)
    t, was_np = _as_torch(theta)
    return _back(_signed_pow(t, 1.0 / (p - 1.0)), was_np)


def lp_norm(w: Array, p: float, dim: Dim = None, keepdim: bool = False) -> Array:
    r"""Entrywise :math:`\|w\|_p = (\sum_j |w_j|^p)^{1/p}`, any p >= 1, overflow-safe.

    Computed as ``m * (sum (|w|/m)^p)^(1/p)`` with ``m = max |w|`` over the reduced entries.
    """
    p = float(p)
    if not math.isfinite(p) or p < 1.0:
        raise ValueError(f"lp_norm needs a finite p >= 1, got p={p!r}")
    t, was_np = _as_torch(w)
    dims = _dims(t, dim)
    a = t.abs()
    if a.numel() == 0:
        return _back(a.sum(dim=dims, keepdim=keepdim), was_np)
    m = torch.amax(a, dim=dims, keepdim=True)
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    s = (a / safe_m).pow(p).sum(dim=dims, keepdim=True).pow(1.0 / p) * m
    if not keepdim:
        for d in sorted((d % t.ndim for d in dims), reverse=True):
            s = s.squeeze(d)
    return _back(s, was_np)


def psi(w: Array, p: float, dim: Dim = None) -> Array:
    r"""Potential :math:`\psi(w) = \frac1p\sum_j |w_j|^p`."""
    p = check_p(p)
    t, was_np = _as_torch(w)
    return _back(t.abs().pow(p).sum(dim=_dims(t, dim)) / p, was_np)


def bregman_terms(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """Per-entry Bregman terms (1/p)|a|^p + ((p-1)/p)|b|^p - sign(b)|b|^(p-1) a, clipped at 0."""
    terms = a.abs().pow(p) / p + (p - 1.0) / p * b.abs().pow(p) - _signed_pow(b, p - 1.0) * a
    # each term is a 1-D Bregman divergence: >= 0, and exactly 0 where a == b
    return torch.where(a == b, torch.zeros_like(terms), terms.clamp_min(0.0))


def bregman(a: Array, b: Array, p: float, dim: Dim = None) -> Array:
    r"""Bregman divergence :math:`D_\psi(A, B) = \psi(A) - \psi(B) - \langle\nabla\psi(B), A-B\rangle`.

    Non-negative, and zero only at ``A == B`` (ψ is strictly convex for p > 1).
    """
    p = check_p(p)
    ta, np_a = _as_torch(a)
    tb, np_b = _as_torch(b)
    try:
        torch.broadcast_shapes(ta.shape, tb.shape)
    except RuntimeError:
        raise ValueError(f"bregman: shapes {tuple(ta.shape)} and {tuple(tb.shape)} do not broadcast") from None
    ta, tb = torch.broadcast_tensors(ta, tb.to(ta.dtype))
    out = bregman_terms(ta, tb, p).sum(dim=_dims(ta, dim))
    return _back(out, np_a and np_b)


def normalize_lp(w: Array, p: float, dim: Dim = None) -> Array:
    """``w / ||w||_p`` (zero stays zero)."""
    t, was_np = _as_torch(w)
    n = lp_norm(t, p, dim=dim, keepdim=True)
    out = t / torch.where(n > 0, n, torch.ones_like(n))
    return _back(out, was_np)


def directional_bregman(w_svm: Array, w: Array, p: float, dim: Dim = None, *, zero: str = "raise") -> Array:
    r"""The paper's convergence metric :math:`D_\psi(W^{mm}/\|W^{mm}\|_p,\; W/\|W\|_p)`.

    ``w_svm`` (the SVM solution) comes first and the iterate ``w`` second.  It lies in
    ``[0, 1 + ...]`` for unit-norm arguments and tends to 0 when ``w`` aligns with ``w_svm``.
    A zero argument has no direction, so the divergence is undefined there: ``zero="raise"``
    (default) raises a ValueError, ``zero="nan"`` returns NaN for those entries (batched use,
    e.g. an iterate W(0) = 0).
    """
    p = check_p(p)
    if zero not in ("raise", "nan"):
        raise ValueError(f"zero must be 'raise' or 'nan', got {zero!r}")
    ta, np_a = _as_torch(w_svm)
    tb, np_b = _as_torch(w)
    tb = tb.to(ta.dtype)
    out = bregman(normalize_lp(ta, p, dim), normalize_lp(tb, p, dim), p, dim)
    na, nb = lp_norm(ta, p, dim=dim), lp_norm(tb, p, dim=dim)
    undefined = torch.broadcast_to((na == 0) | (nb == 0), out.shape)
    if bool(undefined.any()):
        if zero == "raise":
            which = "w_svm" if bool((na == 0).any()) else "w"
            raise ValueError(f"directional_bregman: {which} is zero (in at least one entry of the batch), and a zero "
                             "matrix has no direction; pass zero='nan' to get NaN there")
        out = torch.where(undefined, torch.full_like(out, math.nan), out)
    return _back(out, np_a and np_b)


__all__ = [
    "check_p",
    "dual_exponent",
    "grad_psi",
    "grad_psi_star",
    "lp_norm",
    "psi",
    "bregman",
    "bregman_terms",
    "normalize_lp",
    "directional_bregman",
]
