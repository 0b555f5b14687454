r"""The eager paths of the ℓp mirror-descent step: single-tensor, foreach, and device-selected.

All three implement, per parameter :math:`w` with gradient :math:`g`, dual :math:`\theta`
and momentum buffer :math:`m` (see :class:`~attnopt.optim.MirrorDescent`):

.. math::
    d = g\,s,\quad m \leftarrow \mu m + d,\ d \leftarrow m,\quad
    \theta \leftarrow \mathrm{decay}\cdot\theta + \alpha\, d,\quad
    w \leftarrow \mathrm{sign}(\theta)|\theta|^{1/(p-1)}\ \text{where }\theta\text{ moved}

with ``s`` the normalisation scale (1 unless ``normalize``), ``alpha = ∓lr`` and ``decay`` the
dual image of the decoupled weight decay (:func:`~attnopt.optim._math.step_scalars`).  The new
θ is computed out of place and compared with the old, and w is written only where they differ:
the round trip ∇ψ*(∇ψ(w)) is not exact, so an unmoved entry keeps its bits (not needed for
p = 2 with a θ at least as wide as w, see :func:`~attnopt.optim._math.round_trip_exact`).

* :func:`single_tensor_mirror_descent` — in place, one tensor at a time (torch's CPU default).
* :func:`multi_tensor_mirror_descent` — in place with ``torch._foreach_*`` over each
  device/dtype batch (torch's accelerator default).
* :func:`selected_mirror_descent` — computes the new θ, m and w out of place and keeps the old
  values where ``found_inf`` is set: the step is skipped on the device without a host
  synchronisation, and ``lr`` may be a tensor.  It is the path of ``capturable=True`` and of
  ``torch.compile(opt.step)`` (where Inductor fuses each tensor's step into one loop).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from attnopt.optim._math import (
    int_power,
    inverse_map,
    inverse_map_into,
    lq_scale,
    round_trip_exact,
    step_constants,
    step_scalars,
)

__all__ = ["single_tensor_mirror_descent", "multi_tensor_mirror_descent", "selected_mirror_descent"]


def single_tensor_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                                 momentum, weight_decay, maximize, exact: list[bool] | None = None) -> None:
    """In-place step, one tensor at a time (``lr`` a float; ``exact``: see
    :func:`~attnopt.optim._functional.mirror_descent`)."""
    e, _, _, decay, alpha = step_constants(lr, p, weight_decay, maximize)  # θ ← decay·θ + alpha·d
    for i, (param, grad, theta, buf) in enumerate(zip(params, grads, duals, momentum_buffers)):
        own = theta is None
        if own:
            theta = param
        scale = lq_scale(grad, p, eps, theta.dtype) if normalize else None
        if momentum != 0.0:
            buf.mul_(momentum)
            if scale is None:
                buf.add_(grad)
            else:
                buf.addcmul_(grad, scale)
            d, scale = buf, None
        else:
            d = grad
        if own or (exact is not None and exact[i]) or round_trip_exact(e, param.dtype, theta.dtype):
            # the weights equal ∇ψ*(θ) everywhere: rewriting an unmoved entry writes its own bits
            if decay != 1.0:
                theta.mul_(decay)
            if scale is None:
                theta.add_(d, alpha=alpha)
            else:
                theta.addcmul_(d, scale, value=alpha)
            if not own:
                inverse_map_into(theta, e, param)
            continue
        # θ out of place, so that the weights are written only where θ moved
        new = theta.mul(decay) if decay != 1.0 else None
        if scale is None:
            new = torch.add(theta, d, alpha=alpha) if new is None else new.add_(d, alpha=alpha)
        else:
            new = torch.addcmul(theta, d, scale, value=alpha) if new is None else new.addcmul_(d, scale, value=alpha)
        changed = new != theta
        theta.copy_(new)
        full = inverse_map_into(theta, e, param, changed)
        if exact is not None and param.device.type == "cpu":  # no synchronisation on accelerators
            exact[i] = torch.equal(full, param)


def multi_tensor_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                                momentum, weight_decay, maximize, exact: list[bool] | None = None) -> None:
    """In-place step with ``torch._foreach_*`` ops over each device/dtype batch (``lr`` a float;
    ``exact``: see :func:`~attnopt.optim._functional.mirror_descent`)."""
    e, kind, n, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    thetas = [w if t is None else t for w, t in zip(params, duals)]
    bufs = momentum_buffers if momentum != 0.0 else [None] * len(params)
    for d_params, d_grads, d_thetas, d_bufs, mode, idx in _batches(params, grads, thetas, bufs, duals, e, exact):
        ddtype = d_thetas[0].dtype
        scales = [lq_scale(g, p, eps, ddtype) for g in d_grads] if normalize else None
        if momentum != 0.0:
            torch._foreach_mul_(d_bufs, momentum)
            if scales is None:
                torch._foreach_add_(d_bufs, d_grads)
            else:
                torch._foreach_addcmul_(d_bufs, d_grads, scales)
            direction, scales = d_bufs, None
        else:
            direction = d_grads
        if mode != "masked":  # "own" (θ is w), or the weights equal ∇ψ*(θ) everywhere
            if decay != 1.0:
                torch._foreach_mul_(d_thetas, decay)
            if scales is None:
                torch._foreach_add_(d_thetas, direction, alpha=alpha)
            else:
                torch._foreach_addcmul_(d_thetas, direction, scales, value=alpha)
            if mode == "plain":
                _foreach_inverse_map(d_thetas, d_params, e, kind, n)
            continue
        # θ out of place, so that the weights are written only where θ moved
        if decay != 1.0:
            news = torch._foreach_mul(d_thetas, decay)
            if scales is None:
                torch._foreach_add_(news, direction, alpha=alpha)
            else:
                torch._foreach_addcmul_(news, direction, scales, value=alpha)
        elif scales is None:
            news = torch._foreach_add(d_thetas, direction, alpha=alpha)
        else:
            news = torch._foreach_addcmul(d_thetas, direction, scales, value=alpha)
        changed = [t_new != t for t_new, t in zip(news, d_thetas)]
        torch._foreach_copy_(d_thetas, news)
        fulls = _foreach_inverse_map(news, d_params, e, kind, n, changed)
        if exact is not None and d_params[0].device.type == "cpu":  # no synchronisation on accelerators
            for i, full, w in zip(idx, fulls, d_params):
                exact[i] = torch.equal(full, w)


def _batches(params, grads, thetas, bufs, duals, e, exact):
    """``(params, grads, θ, buffers, mode, indices)`` per device and dtype (torch's grouping),
    split further by θ's dtype and the mode of the write: ``"own"`` (the parameter is its own
    dual), ``"plain"`` (its weights equal ∇ψ*(θ) everywhere, per ``exact`` or because p = 2 with
    a wider θ) or ``"masked"`` (written only where θ moved)."""
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, thetas, bufs, duals], with_indices=True)
    for (d_params, d_grads, d_thetas, d_bufs, d_duals), indices in grouped.values():
        kinds: dict[tuple, list[int]] = {}
        for k, (w, t, d, i) in enumerate(zip(d_params, d_thetas, d_duals, indices)):
            if d is None:
                mode = "own"
            elif (exact is not None and exact[i]) or round_trip_exact(e, w.dtype, t.dtype):
                mode = "plain"
            else:
                mode = "masked"
            kinds.setdefault((t.dtype, mode), []).append(k)
        for (_, mode), ks in kinds.items():
            if len(ks) == len(d_params):
                yield d_params, d_grads, d_thetas, d_bufs, mode, list(indices)
            else:
                yield ([d_params[k] for k in ks], [d_grads[k] for k in ks], [d_thetas[k] for k in ks],
                       [d_bufs[k] for k in ks], mode, [indices[k] for k in ks])


def _foreach_inverse_map(thetas: list[Tensor], out: list[Tensor], e: float, kind: str, n: int,
                         changed: list[Tensor] | None = None) -> list[Tensor] | None:
    """``out ← sign(θ)·min(|θ|^e, max(out dtype))`` over a batch, by the exponent's cheap route;
    with ``changed``, only where it is set, returning the whole maps (see
    :func:`~attnopt.optim._math.inverse_map_into`)."""
    omax = float(torch.finfo(out[0].dtype).max)
    mags = torch._foreach_abs(thetas)
    if kind == "sqrt":
        torch._foreach_sqrt_(mags)
    elif kind == "square":
        torch._foreach_mul_(mags, mags)
    elif kind in ("int", "halfint"):
        roots = torch._foreach_sqrt(mags) if kind == "halfint" else None
        mags = [int_power(m, n) for m in mags]
        if roots is not None:
            torch._foreach_mul_(mags, roots)
    elif kind != "identity":
        torch._foreach_pow_(mags, e)
    if e > 1.0 or omax < float(torch.finfo(thetas[0].dtype).max):
        torch._foreach_clamp_max_(mags, omax)
    torch._foreach_mul_(mags, torch._foreach_sign(thetas))
    if changed is None:
        torch._foreach_copy_(out, mags)
        return None
    fulls = [m if m.dtype == o.dtype else m.to(o.dtype) for m, o in zip(mags, out)]
    for o, m, c in zip(out, fulls, changed):
        torch.where(c, m, o, out=o)
    return fulls


def selected_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps, momentum,
                            weight_decay, maximize, found_inf: Tensor | None = None) -> None:
    """The step computed out of place, then written where ``found_inf`` (a one-element device
    tensor; nonzero = skip this step) is zero: no host synchronisation, ``lr`` a float or a
    tensor.  θ is clamped to its dtype's finite range, as the fused kernels do."""
    decay, alpha = step_scalars(lr, p, weight_decay, maximize)
    e = 1.0 / (p - 1.0)
    keep = None if found_inf is None else found_inf.reshape(()) != 0
    for param, grad, dual, buf in zip(params, grads, duals, momentum_buffers):
        theta = param if dual is None else dual
        d = grad.to(theta.dtype)
        if normalize:
            d = d * lq_scale(grad, p, eps, theta.dtype)
        if momentum != 0.0:
            d = buf * momentum + d
            _select_into(buf, d, keep)
        new = theta * decay + d * alpha if not (isinstance(decay, float) and decay == 1.0) else theta + d * alpha
        if dual is None:
            _select_into(param, new, keep)
            continue
        dmax = float(torch.finfo(theta.dtype).max)
        new = new.clamp(-dmax, dmax)
        w = inverse_map(new, e, param.dtype)
        if not round_trip_exact(e, param.dtype, theta.dtype):  # the weights move only where θ did
            w = torch.where(new != theta, w, param)
        _select_into(theta, new, keep)
        _select_into(param, w, keep)


def _select_into(old: Tensor, new: Tensor, keep: Tensor | None) -> None:
    """``old ← new``, or ``old ← old`` where ``keep`` (0-d bool) is set."""
    old.copy_(new if keep is None else torch.where(keep, old, new))
