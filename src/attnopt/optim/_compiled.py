r"""The ``compiled=True`` path: the whole step of a device/dtype batch as one ``torch.compile`` graph.

On CPU, Inductor turns the graph into one vectorised C++ loop per tensor that reads g and θ
once and writes θ and w once, with no temporaries.  The general power is computed as
``exp(e·log|θ|)`` (two cheap vectorised transcendental calls instead of ``pow``'s
extended-precision routine); this adds a relative error of about ``|log w|·2^-24`` to w,
below float32 θ's own resolution ``2^-24/(p-1)`` for typical weights.  Integer and
half-integer e (p = 1.1, 1.01, 1.25, 1.5, 3, 1.4, ...) use multiplications and at most one
square root instead (see :func:`attnopt.optim._math.classify_exponent`).

Scalars (step size, decay factor, exponents) are passed as one small tensor so that LR
schedules and different p do not trigger recompilation; what does recompile is a new set of
shapes, dtypes or on/off options (normalize, momentum, weight decay, exponent kind).  Past
:data:`RECOMPILE_LIMIT` graphs (a process building many optimizers over different shapes),
a step runs on the eager path with a warning instead of failing.

The weights are written only where θ moved: the round trip ∇ψ*(∇ψ(w)) is not exact, so a
zero gradient must not rewrite w from θ (the graph then reads w as well as g and θ).
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from attnopt.mirror import dual_exponent
from attnopt.optim._eager import multi_tensor_mirror_descent, single_tensor_mirror_descent
from attnopt.optim._math import int_power, round_trip_exact, step_constants

__all__ = ["compiled_mirror_descent"]


def _step_graph(
    params: list[Tensor],
    grads: list[Tensor],
    thetas: list[Tensor],
    bufs: list[Tensor],
    scalars: Tensor,
    kind: str,
    n: int,
    own: bool,
    normalize: bool,
    has_momentum: bool,
    has_decay: bool,
    masked: bool,
    omax: float,
    dmax: float,
) -> None:
    # scalars = [alpha (= ∓lr), decay, e, q, eps, momentum]
    alpha, decay, e, q, eps, mu = (scalars[i] for i in range(6))
    for i in range(len(params)):
        theta = thetas[i]
        g = grads[i].to(theta.dtype)
        if normalize:
            a = g.abs()
            m = a.amax()
            safe = torch.where(m > 0, m, torch.ones_like(m))
            s = torch.exp(q * torch.log(a / safe)).sum()
            den = m * torch.exp(torch.log(s) / q) + eps
            g = g * torch.where(den > 0, 1.0 / den, torch.zeros_like(den))
        if has_momentum:
            b = bufs[i] * mu + g
            bufs[i].copy_(b)
            g = b
        t = theta * decay + alpha * g if has_decay else theta + alpha * g
        if own:
            theta.copy_(t)
            continue
        t = t.clamp(-dmax, dmax)
        changed = t != theta  # the weights move only where θ did (the round trip is not exact)
        theta.copy_(t)
        a = t.abs()
        if kind == "sqrt":
            mag = a.sqrt()
        elif kind == "square":
            mag = a * a
        elif kind == "identity":
            mag = a
        elif kind == "int":
            mag = int_power(a, n)
        elif kind == "halfint":
            mag = int_power(a, n) * a.sqrt()
        else:
            mag = torch.exp(e * torch.log(a))
        if kind != "sqrt":
            mag = mag.clamp(max=omax)
        w = torch.copysign(mag, t).to(params[i].dtype)
        params[i].copy_(torch.where(changed, w, params[i]) if masked else w)


@functools.lru_cache(maxsize=None)
def _compiled_graph():
    return torch.compile(_step_graph, fullgraph=True, dynamic=False)


#: Graphs kept for the step (one per combination of shapes, dtypes and options); a process that
#: builds optimizers over more combinations runs the rest on the eager path, with one warning.
RECOMPILE_LIMIT = 64

_LIMIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit", "RecompileLimitExceeded", "CacheLimitExceeded")
_LIMIT_MESSAGE = (
    "MirrorDescent(compiled=True): torch.compile's limit of {} graphs for the step is reached (many "
    "parameter shapes in one process); the steps of further shapes run on the eager path"
)


def _1d(t: Tensor) -> Tensor:
    return t.view(1) if t.dim() == 0 else t


def compiled_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                            momentum, weight_decay, maximize) -> None:
    e, kind, n, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    q = dual_exponent(p)
    batches: dict[tuple, list[int]] = {}
    for i, (param, grad, theta) in enumerate(zip(params, grads, duals)):
        if param.numel() == 0:  # nothing to update (and a reduction over no element would not trace)
            continue
        t = param if theta is None else theta
        batches.setdefault((param.device, param.dtype, t.dtype, grad.dtype, theta is None), []).append(i)
    fn = _compiled_graph()
    for (device, pdtype, ddtype, _, own), idx in batches.items():
        scalars = torch.tensor([alpha, decay, e, q, eps, momentum], dtype=ddtype, device=device)
        # 0-d tensors as 1-element views: the compiled graph loses its writes into 0-d inputs
        thetas = [_1d(params[i] if own else duals[i]) for i in idx]
        bufs = [_1d(momentum_buffers[i]) for i in idx] if momentum != 0.0 else []
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                fn(
                    [_1d(params[i]) for i in idx], [_1d(grads[i]) for i in idx], thetas, bufs, scalars,
                    kind, n, own, normalize, momentum != 0.0, decay != 1.0,
                    not own and not round_trip_exact(e, pdtype, ddtype),
                    float(torch.finfo(pdtype).max), float(torch.finfo(ddtype).max),
                )
        except Exception as exc:  # the toolchain, not the maths: say so
            if type(exc).__name__ in _LIMIT_ERRORS:  # raised before the graph runs: nothing written
                warnings.warn(_LIMIT_MESSAGE.format(RECOMPILE_LIMIT), RuntimeWarning, stacklevel=4)
                eager = multi_tensor_mirror_descent if device.type != "cpu" else single_tensor_mirror_descent
                eager([params[i] for i in idx], [grads[i] for i in idx], [duals[i] for i in idx],
                      [momentum_buffers[i] for i in idx], lr=lr, p=p, normalize=normalize, eps=eps,
                      momentum=momentum, weight_decay=weight_decay, maximize=maximize)
                continue
            if type(exc).__name__ in ("BackendCompilerFailed", "InductorError", "CppCompileError"):
                raise RuntimeError(
                    "MirrorDescent(compiled=True) could not compile its step with torch.compile "
                    f"(Inductor needs a working C++ compiler on CPU, Triton on GPU): {exc}"
                ) from exc
            raise
