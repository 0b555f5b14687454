r"""ℓp mirror descent (ℓp-AttGD) as a :class:`torch.optim.Optimizer`.

With the entrywise potential :math:`\psi(w) = \frac1p\sum_j|w_j|^p` the step is

.. math::
    W^+ = \nabla\psi^*\big(\nabla\psi(W) - \eta\, g\big),\qquad
    \nabla\psi(w) = \mathrm{sign}(w)|w|^{p-1},\quad
    \nabla\psi^*(\theta) = \mathrm{sign}(\theta)|\theta|^{1/(p-1)}.

The optimizer keeps the dual variable :math:`\theta = \nabla\psi(W)` as state, so a step is
``θ ← θ − η g; W ← ∇ψ*(θ)``: one power per element instead of two, and low-precision
parameters do not lose small updates (θ accumulates them in float32 or wider).

Layout follows :mod:`torch.optim.sgd`: :class:`MirrorDescent` validates hyper-parameters
and owns the state; :func:`mirror_descent` is the functional core, which dispatches to a
single-tensor, a foreach (``torch._foreach_*``), a compiled (``torch.compile``) or a fused
implementation (a C kernel on CPU, :mod:`attnopt.optim._cpu`; a Triton kernel on CUDA,
:mod:`attnopt.optim._triton`).
"""

from __future__ import annotations

import math
import operator
import warnings
from itertools import chain, repeat
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from attnopt.mirror import check_p
from attnopt.optim._math import (
    TRITON_INTERPRETING,
    default_dual_dtype,
    int_power,
    inverse_exponent,
    inverse_map_into,
    lq_scale,
    mirror_map,
    step_constants,
)

__all__ = ["MirrorDescent", "mirror_descent", "NonFiniteGradientError", "NONFINITE_MODES"]

#: Accepted values of ``nonfinite``.
NONFINITE_MODES = ("raise", "skip", "ignore")


class NonFiniteGradientError(FloatingPointError):
    """A gradient contained NaN or ±inf and ``nonfinite="raise"`` was set."""


# --------------------------------------------------------------------------- validation


def _check_real(name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                high: float | None = None, high_open: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name}: {value!r} (must be finite)")
    if low is not None and (v < low or (low_open and v == low)):
        rel = ">" if low_open else ">="
        raise ValueError(f"Invalid {name}: {value!r} (must be {rel} {low})")
    if high is not None and (v > high or (high_open and v == high)):
        rel = "<" if high_open else "<="
        raise ValueError(f"Invalid {name}: {value!r} (must be {rel} {high})")
    return v


def _check_group(group: dict[str, Any]) -> None:
    """Validate (and normalise to floats) the hyper-parameters of one parameter group."""
    group["lr"] = _check_real("learning rate (lr)", group["lr"], low=0.0)
    try:
        group["p"] = check_p(group["p"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Invalid p: {group['p']!r} (must be a finite number > 1)") from exc
    group["eps"] = _check_real("eps", group["eps"], low=0.0)
    group["momentum"] = _check_real("momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
    group["weight_decay"] = _check_real("weight_decay", group["weight_decay"], low=0.0)
    dd = group["dual_dtype"]
    if dd is not None and (not isinstance(dd, torch.dtype) or not dd.is_floating_point):
        raise TypeError(f"dual_dtype must be a floating torch.dtype or None, got {dd!r}")
    for flag in ("normalize", "maximize"):
        if not isinstance(group[flag], bool):
            raise TypeError(f"{flag} must be a bool, got {group[flag]!r}")
    chosen = [k for k in ("foreach", "fused", "compiled") if group[k]]
    if len(chosen) > 1:
        raise ValueError(f"at most one of foreach/fused/compiled may be True, got {', '.join(chosen)}")
    for param in group["params"]:
        if not param.is_floating_point():
            raise TypeError(f"MirrorDescent needs floating-point parameters, got {param.dtype}")
    if group["fused"]:
        devices = {param.device.type for param in group["params"]}
        if devices == {"cpu"} and not TRITON_INTERPRETING:
            from attnopt.optim import _cpu

            _cpu.load()  # builds the C kernel now (once per machine), so a missing compiler shows here
            return
        if "cpu" in devices and len(devices) > 1:
            raise ValueError("MirrorDescent(fused=True): a parameter group mixes CPU and accelerator "
                             "parameters; put them in separate optimizers")
        try:
            from attnopt.optim import _triton
        except ImportError as exc:
            raise RuntimeError(
                "MirrorDescent(fused=True) on CUDA needs Triton (pip install 'attnopt[triton]'); "
                "Triton is not installed. Use foreach=True instead."
            ) from exc
        _triton.check_fused_supported(group["params"])


def _uses_triton(params: list[Tensor]) -> bool:
    """``fused=True`` runs the Triton kernel (accelerator tensors, or Triton's CPU interpreter),
    else the C kernel."""
    return params[0].device.type != "cpu" or TRITON_INTERPRETING


# --------------------------------------------------------------------------- optimizer


class MirrorDescent(Optimizer):
    r"""ℓp mirror descent (ℓp-AttGD), optionally normalised, with momentum and weight decay.

    For each parameter :math:`w` with gradient :math:`\nabla L` (negated if ``maximize``):

    .. math::
        \begin{aligned}
        g &\leftarrow \nabla L / (\|\nabla L\|_q + \epsilon) &&\text{if normalize }(q = p/(p-1)\text{, whole tensor; }0/0 \to 0)\\
        m &\leftarrow \mu m + g,\quad d \leftarrow m &&\text{if momentum }\mu > 0\text{, else } d \leftarrow g\\
        \theta &\leftarrow \mathrm{sign}(c)|c|^{p-1}\,\theta - \eta\, d,\quad c = 1 - \eta\lambda
            &&\text{(decoupled weight decay: } w \leftarrow c\,w\text{ in the dual)}\\
        w &\leftarrow \nabla\psi^*(\theta) = \mathrm{sign}(\theta)|\theta|^{1/(p-1)}
        \end{aligned}

    with :math:`\theta = \nabla\psi(w) = \mathrm{sign}(w)|w|^{p-1}` kept as optimizer state.
    ``p = 2`` is :class:`torch.optim.SGD`: the plain step equals SGD to rounding, and so does
    weight decay without momentum (SGD's L2 term ``w − η(g + λw)`` equals the decoupled
    shrink ``(1 − ηλ)w − ηg``).  Momentum accumulates the (normalised) gradient like SGD's
    buffer with ``dampening=0``; combined with weight decay it differs from SGD, whose buffer
    also accumulates ``λw`` (ours is decoupled, as in SGDW/AdamW).

    Args:
        params: iterable of parameters or dicts defining parameter groups; any option
            below except ``nonfinite`` may be set per group.
        lr (float): step size η ≥ 0.  Read from the group at every step, so LR schedulers work.
        p (float): exponent of the potential, finite and > 1 (numerically tested on [1.01, 10]).
        normalize (bool): divide each tensor's gradient by its ℓq norm, q = p/(p−1)
            (the normalised ℓp-AttGD of the spec).  Default: False.
        eps (float): ε ≥ 0 added to the ℓq norm.  Default: 0 (a zero gradient still gives
            a zero step, not NaN).
        momentum (float): μ in [0, 1), momentum of the dual step.  Default: 0.
        weight_decay (float): λ ≥ 0, decoupled weight decay ``w ← (1 − ηλ) w`` applied
            exactly in the dual (θ is multiplied by ``sign(c)|c|^{p−1}``).  Default: 0.
        maximize (bool): ascend instead of descend.  Default: False.
        foreach (bool, optional): use the ``torch._foreach_*`` implementation.  Default
            (None): as torch does — on when every parameter is on a foreach-capable device
            (CUDA and the like), the single-tensor loop otherwise (CPU).
        fused (bool, optional): one kernel call per step for the whole group, the fastest
            path on both devices.  On CPU: a C kernel compiled at first use with the system
            C compiler (about a second, then cached in ``$ATTNOPT_CACHE/kernels``) for
            float32/bfloat16 weights; other tensors of the group take the single-tensor path
            in the same step.  On CUDA: a Triton kernel (``pip install "attnopt[triton]"``).
            Default: off.
        compiled (bool, optional): run the step as one ``torch.compile``'d graph (Inductor;
            on CPU one C++ loop per tensor).  The first step of each
            new shape/dtype/option combination compiles (tens of seconds).  Default: off.
        dual_dtype (torch.dtype, optional): dtype of θ (and of the momentum buffer).
            Default: the wider of the parameter dtype and float32.
        nonfinite (str): what a NaN/inf gradient does: ``"raise"`` (default) raises
            :class:`NonFiniteGradientError` naming the parameter and step, before anything
            is written; ``"skip"`` skips the whole step (no parameter or state changes) and
            counts it in ``skipped_steps``; ``"ignore"`` does not check (saves one read of
            the gradients and one host synchronisation per step; NaN then propagates into
            the weights as with :class:`torch.optim.SGD`).

    State.  ``state[param]`` holds ``"dual"`` (θ; absent when p = 2 and θ would have the
    parameter's own dtype, where θ ≡ w), ``"dual_p"`` (the p that θ was built for) and
    ``"momentum_buffer"`` (when μ > 0).  Each group counts ``"step"`` (applied steps) and
    ``"skipped_steps"``.  θ is resynchronised from the weights (θ = ∇ψ(w)) when a parameter
    was changed outside the optimizer: the tensor's version counter is compared with the one
    recorded after the optimizer's own write, and when it moved (e.g. ``model.load_state_dict``,
    an in-place ``mul_``) only the entries whose weight no longer equals ∇ψ*(θ) are
    resynchronised; an external edit that restores the same values keeps θ.

    Cost.  Each step reads g and θ and writes θ and w; the inverse map costs one power per
    element for a general p, but only multiplications for p = 1 + 1/n (1.5, 1.25, 1.1, 1.01),
    multiplications and one square root when 1/(p−1) = n + ½ (p = 3, 5/3, 1.4), and nothing
    for p = 2.  See docs/optim_benchmark.md for measured step times of each path.

    Numerics.  The inverse map is clamped to the parameter dtype's finite range and the
    mirror map to the dual dtype's, so no power over/underflow produces inf or NaN.  For
    p ≤ 2, float32 θ covers every float32/bfloat16 weight; for p > 2, ∇ψ spreads |w| over
    (p−1) times as many decades, so weights beyond ``finfo(dual).max**(1/(p−1))`` (1.9e4 at
    p = 10) or below ``finfo(dual).tiny**(1/(p−1))`` lose accuracy — a warning is raised at
    resynchronisation; use ``dual_dtype=torch.float64``.  With a float32 θ the weights'
    relative resolution is about ``6e-8/(p−1)`` (6e-6 at p = 1.01), inherent to storing θ in
    float32; float64 θ removes it.
    """

    def __init__(
        self,
        params,
        lr: float,
        p: float,
        normalize: bool = False,
        eps: float = 0.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        fused: bool | None = None,
        compiled: bool | None = None,
        dual_dtype: torch.dtype | None = None,
        nonfinite: str = "raise",
        maximize: bool = False,
    ) -> None:
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"Invalid nonfinite: {nonfinite!r} (expected one of {', '.join(map(repr, NONFINITE_MODES))})")
        defaults = dict(
            lr=lr, p=p, normalize=normalize, eps=eps, momentum=momentum, weight_decay=weight_decay,
            maximize=maximize, foreach=foreach, fused=fused, compiled=compiled, dual_dtype=dual_dtype,
        )
        self.nonfinite = nonfinite
        # id(param) -> (param._version, param.data_ptr()) right after the optimizer's own write
        self._versions: dict[int, tuple[int, int]] = {}
        self._fused_plans: dict[int, Any] = {}  # group index -> _triton.FusedPlan
        self._snapshots: dict[int, _GroupSnapshot] = {}  # group index -> the last step's lists
        self._nonfinite_flags: dict[torch.device, Tensor] = {}  # device -> the fused check's flag
        super().__init__(params, defaults)

    # -- bookkeeping ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("step", 0)
        group.setdefault("skipped_steps", 0)
        _check_group(group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("nonfinite", "raise")
        self._versions = {}
        self._fused_plans = {}
        self._snapshots = {}
        self._nonfinite_flags = {}
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("skipped_steps", 0)
            group.setdefault("compiled", None)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["nonfinite"] = self.nonfinite
        return state

    @property
    def skipped_steps(self) -> int:
        """Number of steps skipped because of non-finite gradients (``nonfinite="skip"``)."""
        return max((g.get("skipped_steps", 0) for g in self.param_groups), default=0)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state; θ and momentum keep their saved dtype (torch would cast them to the param's)."""
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        for key, value in saved.items():
            param = id_map.get(key)
            if param is None:
                continue
            for name in ("dual", "momentum_buffer"):
                if isinstance(value.get(name), Tensor):
                    self.state[param][name] = value[name].to(device=param.device, copy=True)
        self._versions.clear()  # the loaded θ is verified against the weights at the next step
        self._fused_plans.clear()
        self._snapshots.clear()

    # -- state sync ----------------------------------------------------------------------

    def _sync_dual(self, param: Tensor, state: dict[str, Any], group: dict[str, Any], index: int) -> None:
        """Make ``state["dual"]`` equal ∇ψ(param) wherever param was changed outside the optimizer."""
        p = group["p"]
        ddtype = default_dual_dtype(param.dtype, group["dual_dtype"])
        if p == 2.0 and ddtype == param.dtype:  # θ ≡ w
            state.pop("dual", None)
            state["dual_p"] = p
            return
        theta = state.get("dual")
        fresh = (
            theta is None
            or state.get("dual_p") != p
            or theta.dtype != ddtype
            or theta.shape != param.shape
            or theta.device != param.device
        )
        if fresh:
            state["dual"] = self._checked_mirror_map(param, p, ddtype, index)
            state["dual_p"] = p
            return
        # the weights may have changed: keep θ where ∇ψ*(θ) still reproduces them (to within
        # 2 ulp: the fused/compiled kernels and torch's pow may round the inverse map differently)
        back = torch.empty_like(param)
        inverse_map_into(theta, inverse_exponent(p), back)
        w = param.detach()
        stale = ~((back - w).abs() <= 2.0 * torch.finfo(w.dtype).eps * w.abs())
        if bool(stale.any()):
            theta.copy_(torch.where(stale, self._checked_mirror_map(param, p, ddtype, index), theta))

    def _checked_mirror_map(self, param: Tensor, p: float, dtype: torch.dtype, index: int) -> Tensor:
        theta = mirror_map(param, p, dtype)
        if p > 2.0:
            fmax = float(torch.finfo(dtype).max)
            w = param.detach()
            lost = ((theta.abs() == fmax) | ((theta.abs() < torch.finfo(dtype).tiny) & (w != 0))).any()
            if bool(lost):
                warnings.warn(
                    f"MirrorDescent: parameter {index} (shape {tuple(param.shape)}) has weights whose "
                    f"mirror image |w|^(p-1) (p={p:g}) over- or underflows {dtype}; they will not come "
                    "back exactly. Pass dual_dtype=torch.float64 to keep them.",
                    RuntimeWarning,
                    stacklevel=4,
                )
        return theta

    # -- step ----------------------------------------------------------------------------

    @staticmethod
    def _settings(group: dict[str, Any]) -> tuple:
        return (group["p"], group["dual_dtype"], group["momentum"] != 0.0)

    def _take_snapshot(self, gi: int, group: dict[str, Any], params, duals, bufs) -> None:
        plist = group["params"]
        self._snapshots[gi] = _GroupSnapshot(
            group, self._settings(group), list(map(_version, plist)), list(map(Tensor.data_ptr, plist)),
            [x.grad is not None for x in plist], params, duals, bufs, len(params) == len(plist),
        )

    def _init_group(self, group: dict[str, Any], start_index: int, gi: int = -1):
        """The group's parameters that have gradients, with their gradients, θ and momentum
        buffers, θ resynchronised where needed (see :class:`_Batch`)."""
        plist = group["params"]
        grads_all = list(map(_grad, plist))
        snap = self._snapshots.get(gi)
        if snap is not None and (snap.group is not group or snap.settings != self._settings(group)):
            snap = None  # a replaced group or a changed p / dual dtype / momentum: full check
        # the per-step fast path: no parameter of the group was edited or replaced (``_version``,
        # ``data_ptr``) and the same ones have gradients, so the last step's lists still hold
        if (snap is not None and snap.versions == list(map(_version, plist))
                and snap.ptrs == list(map(Tensor.data_ptr, plist))):
            if snap.all_have_grads:
                # one pass checks both that no gradient is gone (``is_contiguous`` of None is a
                # TypeError) and that all are contiguous and dense
                try:
                    return _Batch(snap.params, grads_all, snap.duals, snap.bufs, False, _check_dense(grads_all))
                except TypeError:
                    pass  # a gradient was set to None: the full check below
            elif snap.has_grad == list(map(operator.is_not, grads_all, repeat(None))):
                grads = [g for g in grads_all if g is not None]
                return _Batch(snap.params, grads, snap.duals, snap.bufs, False, _check_dense(grads))
        params, grads, duals, bufs = [], [], [], []
        versions, all_state = self._versions, self.state
        # θ may no longer match a weight when an in-place edit bumped its ``_version``, when
        # ``param.data = …`` moved its ``data_ptr``, or when the group's settings changed (or
        # this is its first step, or the first after load_state_dict)
        changed = snap is None
        synced = False
        for offset, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            if grad.layout != torch.strided:
                raise RuntimeError(_SPARSE_MESSAGE)
            state = all_state[param]
            if changed or versions.get(id(param)) != (param._version, param.data_ptr()):
                self._sync_dual(param, state, group, start_index + offset)
                synced = True
            params.append(param)
            grads.append(grad)
            duals.append(state.get("dual"))
            if group["momentum"] != 0.0:
                buf = state.get("momentum_buffer")
                ddtype = default_dual_dtype(param.dtype, group["dual_dtype"])
                if buf is None or buf.shape != param.shape or buf.dtype != ddtype:
                    buf = torch.zeros_like(param, dtype=ddtype, memory_format=torch.preserve_format)
                    state["momentum_buffer"] = buf
                bufs.append(buf)
            else:
                bufs.append(None)
        return _Batch(params, grads, duals, bufs, synced, all(map(Tensor.is_contiguous, grads)))

    def _find_nonfinite(self) -> tuple[int, int, Tensor] | None:
        """Precise (slow) scan: (group index, global param index, param) of the first bad gradient."""
        index = 0
        for gi, group in enumerate(self.param_groups):
            for param in group["params"]:
                if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
                    return gi, index, param
                index += 1
        return None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """Perform one optimization step.

        Args:
            closure (Callable, optional): re-evaluates the model and returns the loss.

        Returns:
            the closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        batches = []
        start = 0
        for gi, group in enumerate(self.param_groups):
            batches.append(self._init_group(group, start, gi))
            start += len(group["params"])

        # fused groups on an accelerator: the step's kernel launches, prepared before the check
        # so that the NaN/inf check runs on the device from the same gradient tables
        launches: dict[int, list] = {}
        for gi, (group, (params, grads, duals, bufs, synced, contiguous)) in enumerate(zip(self.param_groups, batches)):
            if params and group["fused"] and _uses_triton(params):
                from attnopt.optim._triton import FusedPlan, prepare_step

                plan = self._fused_plans.get(gi)
                has_momentum = group["momentum"] != 0.0
                if synced or plan is None or not plan.matches(params, has_momentum):
                    plan = self._fused_plans[gi] = FusedPlan(params, grads, duals, bufs, has_momentum)
                    batches[gi] = batches[gi]._replace(synced=True)
                launches[gi] = prepare_step(plan, grads, grads_contiguous=contiguous, **_hyper(group))

        if self.nonfinite != "ignore" and self._gradients_nonfinite(batches, launches):
            bad = self._find_nonfinite()
            if bad is not None:
                gi, index, param = bad
                step_no = self.param_groups[gi]["step"] + self.param_groups[gi]["skipped_steps"] + 1
                if self.nonfinite == "raise":
                    raise NonFiniteGradientError(
                        f"MirrorDescent: non-finite gradient (NaN or inf) for parameter {index} "
                        f"(param_groups[{gi}], shape {tuple(param.shape)}, dtype {param.dtype}) at step "
                        f"{step_no}; nothing was updated. Pass nonfinite='skip' to skip such steps."
                    )
                for group in self.param_groups:
                    group["skipped_steps"] += 1
                return loss

        for gi, (group, (params, grads, duals, bufs, synced, _)) in enumerate(zip(self.param_groups, batches)):
            if params:
                if gi in launches:
                    # the kernel writes through raw pointers: no _version bump, so the recorded
                    # keys stay valid and the plan (device tables of w/θ addresses) is reused
                    from attnopt.optim._triton import launch_step

                    launch_step(launches[gi])
                    snap = self._snapshots.get(gi)
                    if synced or snap is None or snap.params is not params:
                        # also when only the set of parameters with gradients changed (e.g. a
                        # frozen one): otherwise every later step would miss the fast path
                        self._take_snapshot(gi, group, params, duals, bufs)
                else:
                    mirror_descent(params, grads, duals, bufs, foreach=group["foreach"], fused=group["fused"],
                                   compiled=group["compiled"], **_hyper(group))
                    synced = True
                    self._take_snapshot(gi, group, params, duals, bufs)
                if synced:
                    versions = self._versions
                    for param in params:
                        versions[id(param)] = (param._version, param.data_ptr())
            group["step"] += 1
        return loss

    def _gradients_nonfinite(self, batches, launches: dict[int, list]) -> bool:
        """Whether some gradient of this step may be NaN/inf (exact for the fused accelerator
        groups, whose check is a kernel over the step's gradient tables; the other gradients
        may give a rare false alarm, which the caller's precise scan clears).  One host
        synchronisation per device."""
        flags = self._nonfinite_flags
        if launches:  # queued first, so that they run while the host checks the other gradients
            from attnopt.optim._triton import launch_nonfinite_check

            for group_launches in launches.values():
                launch_nonfinite_check(group_launches, flags)
        others = [g for gi, batch in enumerate(batches) if gi not in launches for g in batch.grads]
        bad = bool(others) and not _gradients_look_finite(others)
        devices = {launch.device for group_launches in launches.values() for launch in group_launches}
        raised = [flags[d] for d in devices if flags[d].item()]  # one synchronisation per device
        for flag in raised:
            flag.zero_()  # only after a bad step: a good one leaves the flag at 0
        return bad or bool(raised)


def _hyper(group: dict[str, Any]) -> dict[str, Any]:
    """The step's hyper-parameters, as the functional core takes them."""
    return dict(lr=group["lr"], p=group["p"], normalize=group["normalize"], eps=group["eps"],
                momentum=group["momentum"], weight_decay=group["weight_decay"], maximize=group["maximize"])


_grad = operator.attrgetter("grad")
_version = operator.attrgetter("_version")
_SPARSE_MESSAGE = "MirrorDescent does not support sparse gradients"


def _check_dense(grads: list[Tensor]) -> bool:
    """Raise for a sparse gradient, else tell whether all are contiguous.  One pass of
    ``is_contiguous`` (False for a sparse tensor) answers for almost every list.  A None in
    the list raises TypeError (the fast path's sign that a gradient is gone)."""
    if all(map(Tensor.is_contiguous, grads)):
        return True
    for g in grads:
        if g is None:
            raise TypeError("a gradient is None")
        if g.layout != torch.strided:
            raise RuntimeError(_SPARSE_MESSAGE)
    return False


class _Batch(NamedTuple):
    """One parameter group's share of a step, from ``MirrorDescent._init_group``."""

    params: list[Tensor]  # the parameters that have gradients
    grads: list[Tensor]
    duals: list[Tensor | None]  # θ (None where the parameter is its own dual, p = 2)
    bufs: list[Tensor | None]  # momentum buffers (None without momentum)
    synced: bool  # some θ was (re)built this step: the recorded versions and lists must be renewed
    contiguous: bool  # every gradient is contiguous




class _GroupSnapshot(NamedTuple):
    """A parameter group right after a step, for the per-step fast path of ``_init_group``."""

    group: dict[str, Any]
    settings: tuple  # (p, dual_dtype, momentum on)
    versions: list[int]
    ptrs: list[int]
    has_grad: list[bool]
    params: list[Tensor]
    duals: list[Tensor | None]
    bufs: list[Tensor | None]
    all_have_grads: bool


def _gradients_look_finite(grads: list[Tensor]) -> bool:
    """True iff every gradient is finite, up to rare false alarms (False for finite gradients).

    The sum of each gradient (of |g| on accelerators, where ``torch._foreach_norm(·, 1)``
    does the whole list in a few kernel launches instead of one per tensor): NaN and ±inf
    propagate through it, and a finite sum that overflows is a false alarm cleared by the
    caller's precise scan.  This costs one read of the gradients and one host
    synchronisation per device; ``nonfinite="ignore"`` skips it.
    """
    from attnopt.optim import _cpu

    if _cpu.is_loaded():  # a fused CPU optimizer built the C kernel: it counts exactly, in one read
        cpu = [g for g in grads if g.device.type == "cpu"]
        if cpu and _cpu.count_nonfinite(cpu):
            return False
        grads = [g for g in grads if g.device.type != "cpu"]
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    per_device: dict[torch.device, list[Tensor]] = {}
    for (device, dtype), gs in groups.items():
        acc = torch.promote_types(dtype, torch.float32)
        if device.type != "cpu" and hasattr(torch, "_foreach_norm"):
            sums = torch.stack(torch._foreach_norm(gs, 1)).to(acc)
        else:
            sums = torch.stack([g.sum(dtype=acc) for g in gs])
        per_device.setdefault(device, []).append(sums.to(torch.float64).sum())
    for parts in per_device.values():
        if not math.isfinite(torch.stack(parts).sum().item()):
            return False
    return True


# --------------------------------------------------------------------------- functional core


def _default_foreach(params: list[Tensor]) -> bool:
    from torch.optim.optimizer import _default_to_fused_or_foreach

    if torch.jit.is_scripting():
        return False
    _, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return foreach


def mirror_descent(
    params: list[Tensor],
    grads: list[Tensor],
    duals: list[Tensor | None],
    momentum_buffers: list[Tensor | None],
    *,
    lr: float,
    p: float,
    normalize: bool = False,
    eps: float = 0.0,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    maximize: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
    compiled: bool | None = None,
) -> None:
    r"""Functional ℓp mirror-descent step (see :class:`MirrorDescent` for the update).

    ``duals[i]`` is θ for ``params[i]`` (updated in place, then ``params[i] ← ∇ψ*(θ)``), or
    None when the parameter is its own dual (p = 2).  ``momentum_buffers[i]`` must be a
    tensor of θ's dtype when ``momentum > 0`` (a None entry is replaced by a new zero buffer).
    No hyper-parameter validation happens here; :class:`MirrorDescent` does it.
    """
    if not params:
        return
    if foreach is None and fused is None and compiled is None:
        foreach = _default_foreach(params)
    if momentum != 0.0:
        for i, buf in enumerate(momentum_buffers):
            if buf is None:
                theta = duals[i] if duals[i] is not None else params[i]
                momentum_buffers[i] = torch.zeros_like(theta)
    if fused and _uses_triton(params):
        from attnopt.optim._triton import fused_mirror_descent as func
    elif fused:
        from attnopt.optim._cpu import cpu_fused_mirror_descent as func
    elif compiled:
        from attnopt.optim._compiled import compiled_mirror_descent as func
    elif foreach:
        func = _multi_tensor_mirror_descent
    else:
        func = _single_tensor_mirror_descent
    func(
        params, grads, duals, momentum_buffers,
        lr=float(lr), p=float(p), normalize=normalize, eps=float(eps), momentum=float(momentum),
        weight_decay=float(weight_decay), maximize=maximize,
    )


def _single_tensor_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                                  momentum, weight_decay, maximize) -> None:
    e, _, _, decay, alpha = step_constants(lr, p, weight_decay, maximize)  # θ ← decay·θ + alpha·d
    for param, grad, theta, buf in zip(params, grads, duals, momentum_buffers):
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
        if decay != 1.0:
            theta.mul_(decay)
        if scale is None:
            theta.add_(d, alpha=alpha)
        else:
            theta.addcmul_(d, scale, value=alpha)
        if not own:
            inverse_map_into(theta, e, param)


def _multi_tensor_mirror_descent(params, grads, duals, momentum_buffers, *, lr, p, normalize, eps,
                                 momentum, weight_decay, maximize) -> None:
    e, kind, n, decay, alpha = step_constants(lr, p, weight_decay, maximize)
    own = [d is None for d in duals]
    thetas = [p_ if o else d for p_, d, o in zip(params, duals, own)]
    groups: dict[tuple, list[int]] = {}
    for i, (param, theta) in enumerate(zip(params, thetas)):
        groups.setdefault((param.device, param.dtype, theta.dtype, own[i]), []).append(i)
    for (_, pdtype, ddtype, is_own), idx in groups.items():
        d_params = [params[i] for i in idx]
        d_grads = [grads[i] for i in idx]
        d_thetas = [thetas[i] for i in idx]
        scales = [lq_scale(g, p, eps, ddtype) for g in d_grads] if normalize else None
        if momentum != 0.0:
            d_bufs = [momentum_buffers[i] for i in idx]
            torch._foreach_mul_(d_bufs, momentum)
            if scales is None:
                torch._foreach_add_(d_bufs, d_grads)
            else:
                torch._foreach_addcmul_(d_bufs, d_grads, scales)
            direction, scales = d_bufs, None
        else:
            direction = d_grads
        if decay != 1.0:
            torch._foreach_mul_(d_thetas, decay)
        if scales is None:
            torch._foreach_add_(d_thetas, direction, alpha=alpha)
        else:
            torch._foreach_addcmul_(d_thetas, direction, scales, value=alpha)
        if is_own:
            continue
        omax = float(torch.finfo(pdtype).max)
        mags = torch._foreach_abs(d_thetas)
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
        if e > 1.0 or omax < float(torch.finfo(ddtype).max):
            torch._foreach_clamp_max_(mags, omax)
        torch._foreach_mul_(mags, torch._foreach_sign(d_thetas))
        torch._foreach_copy_(d_params, mags)
