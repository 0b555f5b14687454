"""The functional ℓp mirror-descent step and the choice of its implementation.

:func:`mirror_descent` runs one step over lists of tensors on one of five paths:

========================  ===================================================================
``"fused-cpu"``           the C kernel (:mod:`attnopt.optim._cpu`): one call per step
``"fused-triton"``        the Triton kernel (:mod:`attnopt.optim._triton`): one launch per batch
``"foreach"``             ``torch._foreach_*`` ops (:mod:`attnopt.optim._eager`)
``"single"``              a loop over tensors with in-place ops
``"compiled"``            a ``torch.compile``'d graph per batch (:mod:`attnopt.optim._compiled`)
========================  ===================================================================

:func:`resolve_implementation` picks one from the flags the user gave; with none it picks the
fastest path that works here: the Triton kernel for CUDA parameters when Triton is installed,
the C kernel for CPU float32/bfloat16 parameters when a C compiler can build it, else the
eager path torch itself would take (foreach on accelerators, single-tensor on CPU), and says
why it fell back.  Inside ``torch.compile`` and when the step must be skipped on the device
(``found_inf``) or ``lr`` is a tensor, the eager paths are replaced by
:func:`~attnopt.optim._eager.selected_mirror_descent`, which needs no host synchronisation.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from attnopt.optim._eager import multi_tensor_mirror_descent, selected_mirror_descent, single_tensor_mirror_descent
from attnopt.optim._math import TRITON_INTERPRETING

__all__ = ["mirror_descent", "resolve_implementation", "IMPLEMENTATIONS", "uses_triton"]

IMPLEMENTATIONS = ("fused-cpu", "fused-triton", "foreach", "single", "compiled")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16)  # what the C kernel takes (others: single-tensor inside it)


def uses_triton(params: list[Tensor]) -> bool:
    """``fused=True`` runs the Triton kernel (accelerator tensors, or Triton's CPU interpreter),
    else the C kernel."""
    return bool(params) and (params[0].device.type != "cpu" or TRITON_INTERPRETING)


def _torch_default(params: list[Tensor]) -> str:
    from torch.optim.optimizer import _default_to_fused_or_foreach

    if not params or torch.jit.is_scripting():
        return "single"
    _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return "foreach" if foreach else "single"


def resolve_implementation(params: list[Tensor], *, foreach: bool | None = None, fused: bool | None = None,
                           compiled: bool | None = None) -> tuple[str, str | None]:
    """``(implementation, why the fast path is unavailable, or None)`` for these parameters.

    Explicit flags win (``fused=True`` then needs its kernel, checked by the caller);
    ``fused=False`` or ``foreach=`` given means torch's rule or that path; no flag at all means
    the fastest path that works here (see the module docstring).
    """
    if fused:
        return ("fused-triton" if uses_triton(params) else "fused-cpu"), None
    if compiled:
        return "compiled", None
    if foreach is not None:
        return ("foreach" if foreach else "single"), None
    if fused is False or not params:
        return _torch_default(params), None
    devices = {x.device.type for x in params}
    if devices == {"cpu"}:
        if not any(x.dtype in _KERNEL_DTYPES for x in params):
            return "single", None  # the C kernel would hand every tensor to the single-tensor path
        from attnopt.optim import _cpu

        try:
            _cpu.load()
        except _cpu.KernelBuildError as exc:
            return "single", str(exc)
        return "fused-cpu", None
    if devices == {"cuda"}:
        if importlib.util.find_spec("triton") is None:
            return "foreach", ("the fused CUDA path is a Triton kernel and Triton is not installed "
                               "(pip install triton, or attnopt[triton])")
        return "fused-triton", None
    return _torch_default(params), None


def mirror_descent(
    params: list[Tensor],
    grads: list[Tensor],
    duals: list[Tensor | None],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float | Tensor,
    p: float,
    normalize: bool = False,
    eps: float = 0.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    compiled: bool | None = None,
    found_inf: Tensor | None = None,
    fused_plan: dict | None = None,
    exact: list[bool] | None = None,
) -> None:
    r"""Functional ℓp mirror-descent step (see :class:`~attnopt.optim.MirrorDescent` for the update).

    ``duals[i]`` is θ for ``params[i]`` (updated in place, then ``params[i] ← ∇ψ*(θ)``), or
    None when the parameter is its own dual (p = 2).  ``momentum_buffers[i]`` must be a
    tensor of θ's dtype when ``momentum > 0`` (a None entry is replaced by a new zero buffer).
    ``foreach`` / ``fused`` / ``compiled`` pick the path as :class:`~attnopt.optim.MirrorDescent`
    does (none given: the fastest available).  ``found_inf``: a one-element tensor on the
    parameters' device; where it is nonzero when the step runs, nothing is written (no host
    synchronisation).  ``lr`` may be a tensor.  ``fused_plan``: a dict kept between calls
    in which the fused paths keep their launch plans (valid for the same lists).  No hyper-parameter validation happens
    here; :class:`~attnopt.optim.MirrorDescent` does it.

    The weights are written only where θ moved (an unmoved entry keeps its bits: ∇ψ*(∇ψ(w)) is
    not exactly w).  ``exact``: per tensor, True where its weights are known to equal ∇ψ*(θ)
    everywhere, so that the host paths (fused CPU, foreach, single-tensor) may write it whole, at
    the plain step's speed; they set an entry to True when a masked step on the CPU finds it so
    (a tensor with a frozen row stays masked).  None: every tensor masked.
    """
    if not params:
        return
    if momentum != 0.0:
        for i, buf in enumerate(momentum_buffers):
            if buf is None:
                theta = duals[i] if duals[i] is not None else params[i]
                momentum_buffers[i] = torch.zeros_like(theta)
    impl, _ = resolve_implementation(params, foreach=foreach, fused=fused, compiled=compiled)
    hyper = dict(lr=lr, p=float(p), normalize=normalize, eps=float(eps), momentum=float(momentum),
                 weight_decay=float(weight_decay), maximize=maximize)
    if impl == "fused-triton" and not torch.compiler.is_compiling():
        from attnopt.optim._triton import fused_mirror_descent

        lr_on_device = isinstance(lr, Tensor) and lr.device == params[0].device
        hyper["lr"] = lr if lr_on_device or not isinstance(lr, Tensor) else float(lr)
        fused_mirror_descent(params, grads, duals, momentum_buffers, found_inf=found_inf, fused_plan=fused_plan,
                             **hyper)
        return
    if torch.compiler.is_compiling() or found_inf is not None or (isinstance(lr, Tensor) and lr.device.type != "cpu"):
        selected_mirror_descent(params, grads, duals, momentum_buffers, found_inf=found_inf, **hyper)
        return
    hyper["lr"] = float(lr)  # a CPU tensor: no synchronisation
    if impl == "compiled":
        from attnopt.optim._compiled import compiled_mirror_descent

        compiled_mirror_descent(params, grads, duals, momentum_buffers, **hyper)
        return
    if impl == "fused-cpu":
        from attnopt.optim._cpu import cpu_fused_mirror_descent as func
    elif impl == "foreach":
        func = multi_tensor_mirror_descent
    else:
        func = single_tensor_mirror_descent
    if impl == "fused-cpu":
        func(params, grads, duals, momentum_buffers, exact=exact, fused_plan=fused_plan, **hyper)
    else:
        func(params, grads, duals, momentum_buffers, exact=exact, **hyper)
