r"""Element-wise pieces of the ℓp mirror-descent step, shared by the eager paths.

Notation: ``e = 1/(p-1)`` is the exponent of the inverse map
:math:`\nabla\psi^*(\theta) = \mathrm{sign}(\theta)|\theta|^{e}` and
``q = p/(p-1)`` the conjugate exponent used by the normalised step.

Range handling.  The dual variable lives in a floating dtype ``D`` at least as wide as
float32, the parameter in its own dtype ``P``.  The inverse map is clamped to the largest
finite value of ``P`` (so an overflow of :math:`|\theta|^e` never writes ``inf``), and the
mirror map used at (re)synchronisation is clamped to the finite range of ``D``.  An
underflow of :math:`|\theta|^e` gives ``0`` (or a subnormal), which is the correctly rounded
answer whenever the true value is below the smallest representable one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from attnopt.mirror import dual_exponent, grad_psi, lp_norm

__all__ = [
    "classify_exponent",
    "int_power",
    "default_dual_dtype",
    "inverse_exponent",
    "mirror_map",
    "inverse_map_into",
    "inverse_map",
    "round_trip_exact",
    "lq_scale",
    "dual_decay_factor",
    "step_constants",
    "step_scalars",
    "float_step_scalars",
    "TRITON_INTERPRETING",
    "BIG",
]

#: Non-finite check code of parameter ``i``: ``BIG − i`` (nonzero, larger for earlier parameters,
#: so a maximum names the first bad one).
BIG = 1 << 30

#: Triton's CPU interpreter is on (``TRITON_INTERPRET=1``, read once at import, as Triton
#: does): ``fused=True`` then sends CPU tensors to the Triton kernel (the tests' way of
#: running it without a GPU) instead of the C kernel.
TRITON_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def inverse_exponent(p: float) -> float:
    """``e = 1/(p-1)``, the exponent of the inverse mirror map."""
    return 1.0 / (p - 1.0)


#: Largest integer (or half-integer) exponent computed by repeated multiplication.
MAX_INT_EXPONENT = 128


def classify_exponent(e: float) -> tuple[str, int]:
    """How |θ|^e is computed: ``("identity"|"sqrt"|"square"|"int"|"halfint"|"general", n)``.

    ``int``: e = n (p = 1 + 1/n: 1.1, 1.01, 1.25, ...) by repeated squaring; ``halfint``:
    e = n + 1/2 (p = 3, 5/3, 1.4, ...) as ``sqrt(a)·a^n``.  A ratio within 1e-9 of such a value
    counts (1/(1.1 − 1) is 9.999999999999991 in floating point); the difference is far below
    float64 resolution of the result.
    """
    if e == 1.0:
        return "identity", 1
    for kind, shift in (("int", 0.0), ("halfint", 0.5)):
        n = round(e - shift)
        if 0 <= n <= MAX_INT_EXPONENT and abs(e - shift - n) <= 1e-9 * e:
            if kind == "int" and n == 2:
                return "square", 2
            if kind == "halfint" and n == 0:
                return "sqrt", 0
            if kind == "int" and n >= 2 or kind == "halfint":
                return kind, n
    return "general", 0


def int_power(a: Tensor, n: int) -> Tensor:
    """``a**n`` for an int n >= 0 by binary exponentiation (new tensor; a is not modified).

    For |a| < 1 every partial product is at least the result, so nothing underflows before
    the result does; for |a| > 1 an overflow means the result overflows too.
    """
    result = None
    base = a
    while True:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if not n:
            break
        base = base * base
    return torch.ones_like(a) if result is None else (result.clone() if result is a else result)


def default_dual_dtype(param_dtype: torch.dtype, dual_dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype of θ: ``dual_dtype`` if given, else the wider of the parameter dtype and float32."""
    if dual_dtype is not None:
        return dual_dtype
    return torch.promote_types(param_dtype, torch.float32)


def _finfo_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def mirror_map(w: Tensor, p: float, dtype: torch.dtype) -> Tensor:
    r"""A new tensor :math:`\theta = \nabla\psi(w) = \mathrm{sign}(w)|w|^{p-1}` in ``dtype``.

    Computed in ``dtype`` and clamped to its finite range.  Cheap exponents take cheap
    routes: p = 2 is a copy, p = 3 is ``w|w|``, p = 1.5 is ``sign(w)|w|^{1/2}``.
    """
    wd = w.detach().to(dtype)
    if p == 2.0:
        theta = wd.clone()
    elif p == 3.0:
        theta = wd * wd.abs()
    elif p == 1.5:
        theta = torch.copysign(wd.abs().sqrt_(), wd)
    else:
        theta = grad_psi(wd, p)
    fmax = _finfo_max(dtype)
    return theta.clamp_(-fmax, fmax)


def inverse_map_into(theta: Tensor, e: float, out: Tensor, changed: Tensor | None = None) -> Tensor | None:
    r"""``out ← sign(θ)|θ|^e`` (the inverse map), clamped to ``out``'s finite range.

    ``θ`` is left untouched.  e = 1 (p = 2) is a cast, e = 1/2 (p = 3) a square root,
    e = 2 (p = 1.5) a square; any other exponent is one ``pow``.  With ``changed`` (a bool
    tensor like θ), only those entries are written and the others keep their bits: the
    step's write of the weights where θ moved (the round trip ∇ψ*(∇ψ(w)) is not exact, so
    rewriting an unmoved entry could change it; see :func:`round_trip_exact`), and the whole
    inverse map is returned (in ``out``'s dtype), so that the caller can tell whether ``out``
    now equals it everywhere.
    """
    omax = _finfo_max(out.dtype)
    if e == 1.0:  # p = 2
        a = theta.clamp(-omax, omax) if omax < _finfo_max(theta.dtype) else theta
        if changed is None:
            out.copy_(a)
            return None
        a = a.to(out.dtype)
        torch.where(changed, a, out, out=out)
        return a
    a = theta.abs()
    kind, n = classify_exponent(e)
    if kind == "sqrt":
        a.sqrt_()
    elif kind == "square":
        a.square_()
    elif kind == "int":
        a = int_power(a, n)
    elif kind == "halfint":
        a = int_power(a, n).mul_(a.sqrt_())
    else:
        a.pow_(e)
    if e > 1.0 or omax < _finfo_max(theta.dtype):
        a.clamp_max_(omax)
    if changed is not None:
        a = a.copysign_(theta).to(out.dtype)
        torch.where(changed, a, out, out=out)
        return a
    if out.dtype == a.dtype:
        torch.copysign(a, theta, out=out)
    else:
        out.copy_(a.copysign_(theta))
    return None


def round_trip_exact(e: float, param_dtype: torch.dtype, dual_dtype: torch.dtype) -> bool:
    """Whether ∇ψ*(∇ψ(w)) = w holds for every weight, so that rewriting the weights where θ
    did not move changes nothing: only for p = 2 (e = 1) with θ at least as wide as the
    weights (a widening cast and back).  Every other case needs the ``changed`` mask of
    :func:`inverse_map_into` (p = 1.1: most float32 weights miss by a few ulp)."""
    return e == 1.0 and torch.promote_types(param_dtype, dual_dtype) == dual_dtype


def inverse_map(theta: Tensor, e: float, dtype: torch.dtype) -> Tensor:
    r"""A new tensor ``sign(θ)|θ|^e`` in ``dtype``, clamped to its finite range (the
    out-of-place :func:`inverse_map_into`, for the paths that select between old and new
    values on the device)."""
    out = torch.empty_like(theta, dtype=dtype)
    inverse_map_into(theta, e, out)
    return out


def lq_scale(g: Tensor, p: float, eps: float, dtype: torch.dtype) -> Tensor:
    r"""0-d tensor ``1 / (‖g‖_q + eps)`` with q = p/(p-1), or ``0`` when that denominator is 0.

    The norm is taken over the whole flattened tensor in ``dtype`` (overflow-safe, see
    :func:`attnopt.mirror.lp_norm`), so a zero gradient gives a zero step, never NaN.
    """
    q = dual_exponent(p)
    n = lp_norm(g.detach().to(dtype), q)
    den = n + eps
    return torch.where(den > 0, den.reciprocal(), torch.zeros_like(den))


def dual_decay_factor(lr: float, weight_decay: float, p: float) -> float:
    r"""Dual image of the decoupled weight decay ``w ← c w`` with ``c = 1 - lr·weight_decay``.

    Because :math:`\nabla\psi(c w) = \mathrm{sign}(c)|c|^{p-1}\nabla\psi(w)`, shrinking the
    primal by ``c`` is exactly scaling θ by ``sign(c)|c|^{p-1}`` — no resynchronisation.
    """
    c = 1.0 - lr * weight_decay
    if c == 0.0:
        return 0.0
    return (1.0 if c > 0 else -1.0) * abs(c) ** (p - 1.0)


def step_constants(lr: float, p: float, weight_decay: float, maximize: bool) -> tuple[float, str, int, float, float]:
    """``(e, kind, n, decay, alpha)`` of a step: the inverse map's exponent and how it is
    computed (:func:`classify_exponent`), the dual decay factor (1 without weight decay) and
    the signed step ``alpha`` with ``θ ← decay·θ + alpha·d``."""
    e = inverse_exponent(p)
    kind, n = classify_exponent(e)
    return (e, kind, n, *float_step_scalars(lr, p, weight_decay, maximize))


def float_step_scalars(lr: float, p: float, weight_decay: float, maximize: bool) -> tuple[float, float]:
    """``(decay, alpha)`` of :func:`step_constants` for a float ``lr`` (no exponent work)."""
    decay = dual_decay_factor(lr, weight_decay, p) if weight_decay != 0.0 else 1.0
    return decay, (lr if maximize else -lr)


def step_scalars(lr: float | Tensor, p: float, weight_decay: float, maximize: bool) -> tuple[Any, Any]:
    """``(decay, alpha)`` of :func:`step_constants` for a float or a tensor ``lr``.

    A tensor ``lr`` (``capturable=True``, ``torch.compile``) gives 0-d float64 tensors on
    its device, computed there (no host synchronisation): ``alpha = ∓lr`` and
    ``decay = sign(c)|c|^{p-1}`` with ``c = 1 − lr·weight_decay`` (1 without weight decay)."""
    if not isinstance(lr, Tensor):
        return float_step_scalars(lr, p, weight_decay, maximize)
    lr64 = lr.detach().reshape(()).to(torch.float64)
    alpha = lr64 if maximize else -lr64
    if weight_decay == 0.0:
        return 1.0, alpha
    c = 1.0 - lr64 * weight_decay
    return torch.sign(c) * c.abs().pow(p - 1.0), alpha
