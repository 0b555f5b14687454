r"""ℓp mirror descent (ℓp-AttGD) as a :class:`torch.optim.Optimizer`.

With the entrywise potential :math:`\psi(w) = \frac1p\sum_j|w_j|^p` the step is

.. math::
    W^+ = \nabla\psi^*\big(\nabla\psi(W) - \eta\, g\big),\qquad
    \nabla\psi(w) = \mathrm{sign}(w)|w|^{p-1},\quad
    \nabla\psi^*(\theta) = \mathrm{sign}(\theta)|\theta|^{1/(p-1)}.

The optimizer keeps the dual variable :math:`\theta = \nabla\psi(W)` as state, so a step is
``θ ← θ − η g; W ← ∇ψ*(θ)``: one power per element instead of two, and low-precision
parameters do not lose small updates (θ accumulates them in float32 or wider).

Layout follows :mod:`torch.optim.sgd`: :class:`MirrorDescent` validates hyper-parameters and
owns the state (θ, momentum buffers, the record of which weights θ matches); each step is
``_init_group`` per group, the non-finite check, then one call per group of the functional
core :func:`~attnopt.optim._functional.mirror_descent`, which runs the chosen implementation.
"""

from __future__ import annotations

import operator
import warnings
from itertools import chain
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from attnopt.optim import _cpu, _dist, _statedict
from attnopt.optim._checks import GROUP_DEFAULTS, check_group, fill_group, group_key
from attnopt.optim._functional import mirror_descent, resolve_implementation
from attnopt.optim._math import default_dual_dtype
from attnopt.optim._nonfinite import (
    NONFINITE_MODES,
    DeviceRecord,
    NonFiniteGradientError,
    gradients_finite,
    host_nonfinite,
    report_deferred,
)
from attnopt.optim._state import SPARSE_MESSAGE, Batch, Snapshot, addresses, check_dense, key, sync_dual

__all__ = ["MirrorDescent", "mirror_descent", "NonFiniteGradientError", "NONFINITE_MODES"]

_FLAGS = {"fused-cpu": dict(fused=True), "fused-triton": dict(fused=True), "foreach": dict(foreach=True),
          "single": dict(foreach=False), "compiled": dict(compiled=True)}
_grad = operator.attrgetter("grad")
_version = operator.attrgetter("_version")


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
        lr (float or Tensor): step size η ≥ 0, read from the group at every step (LR
            schedulers work).  Default: 1e-3, as torch's SGD and Adam.  Any real number
            (``numbers.Real``: numpy scalars too) is kept as a float; a one-element tensor is
            kept as is (schedulers ``fill_`` it), and with ``capturable=True`` on the
            parameters' device it is read by the device; a tensor of several elements is a
            ``ValueError``.
        p (float): exponent of the potential, finite and > 1 (numerically tested on [1.01, 10]).
            Required, here or in every parameter group: it is the geometry of the method (p = 2
            is SGD), so it has no default.
        normalize (bool): divide each tensor's gradient by its ℓq norm, q = p/(p−1)
            (the normalised ℓp-AttGD of the spec).  Default: False.
        eps (float): ε ≥ 0 added to the ℓq norm.  Default: 0 (a zero gradient still gives
            a zero step, not NaN).
        momentum (float): μ in [0, 1), momentum of the dual step.  Default: 0.
        weight_decay (float): λ ≥ 0 with ``lr·λ ≤ 1``, decoupled weight decay
            ``w ← (1 − ηλ) w`` applied exactly in the dual (θ is multiplied by ``|c|^{p−1}``).
        maximize (bool): ascend instead of descend.  Default: False.
        fused (bool, optional): one kernel call per step for the whole group.  On CPU: a C
            kernel compiled at first use with the system C compiler (about a second, then
            cached in ``$ATTNOPT_CACHE/kernels``) for float32/bfloat16 weights; other tensors
            of the group take the single-tensor path in the same step.  On CUDA: a Triton
            kernel.  ``True`` raises if the kernel cannot run; ``None`` (default, with
            ``foreach`` and ``compiled`` unset) takes it whenever it can, else falls back to
            torch's eager choice (foreach on accelerators, single-tensor on CPU) with one
            ``RuntimeWarning`` saying why; ``False`` is torch's eager choice.
        foreach (bool, optional): ``True`` the ``torch._foreach_*`` path, ``False`` the
            single-tensor loop.
        compiled (bool, optional): the step of each batch as one ``torch.compile``'d graph
            (the first step of each new shape/dtype/option combination compiles; past 64
            graphs in a process, further combinations run on the eager path, with a warning).
        capturable (bool): no host synchronisation and no host decision on device values in a
            step, so that it can be captured in a CUDA graph (warm up a few steps first, as for
            any capture); lr may be a tensor on the device.  Non-finite gradients are then
            handled as on the fused CUDA path (below).  Default: False.
        dual_dtype (torch.dtype, optional): dtype of θ (and of the momentum buffer),
            float32 or float64.  Default: the wider of the parameter dtype and float32.
        nonfinite (str): what a NaN/inf gradient does: ``"raise"`` (default) raises
            :class:`NonFiniteGradientError` naming the parameter and step; ``"skip"`` skips the
            step (no parameter or state changes) and counts it in ``skipped_steps``;
            ``"ignore"`` does not check (NaN then propagates into the weights as with
            :class:`torch.optim.SGD`).  Nothing is written on a bad step.  On CPU (and the
            eager accelerator paths) the check runs on the host before the step and raises at
            once.  On the fused CUDA path, with ``capturable=True`` and inside
            ``torch.compile``, the check runs on the device without a host synchronisation:
            the step skips itself there, and ``"raise"`` raises at a later ``step()`` (usually
            the next), at :meth:`check_nonfinite`, ``state_dict()`` or ``skipped_steps``;
            until then every step is skipped, so the weights stay as before the bad step.

    Attributes:
        implementation (str): the path the steps take, one of ``"fused-cpu"``,
            ``"fused-triton"``, ``"foreach"``, ``"single"``, ``"compiled"`` (per group,
            ``"group 0: …; group 1: …"``, when the groups differ); also shown by ``repr``.
            Inside ``torch.compile(opt.step)`` the traced eager step runs instead.
        skipped_steps (int): steps skipped because of non-finite gradients.

    State.  ``state[param]`` holds ``"dual"`` (θ; absent when p = 2 and θ would have the
    parameter's own dtype, where θ ≡ w), ``"dual_p"`` (the p that θ was built for) and
    ``"momentum_buffer"`` (when μ > 0).  Each group counts ``"step"`` (applied steps) and
    ``"skipped_steps"``.  θ is resynchronised from the weights (θ = ∇ψ(w)) when a parameter
    was changed outside the optimizer: the tensor's version counter and address are compared
    with those recorded after the optimizer's own write; when they moved (e.g. an in-place
    ``mul_``), only the entries whose weight no longer equals ∇ψ*(θ) (to 2 ulp) are rebuilt.

    Steps that change nothing.  The weights are written only where θ moved: an entry whose
    θ did not change keeps its bits exactly, on every path, p and dtype — a zero gradient
    (with no momentum carried and no weight decay), a frozen row, a step below θ's
    resolution.  This matters because θ is built from the weights (at the first step, after
    an edit) and the round trip ∇ψ*(∇ψ(w)) is not exact for p ≠ 2 (p = 1.1: most float32
    weights miss by a few ulp), so rewriting an unmoved weight from θ would perturb frozen
    embedding rows and masked tokens.  A tiny non-zero gradient that does move θ sets
    w = ∇ψ*(θ): the step plus, once, that round trip error (about ``(p−1)⁻¹·2⁻²⁴`` relative
    with a float32 θ, below the resolution noted under *Numerics*); from then on w and θ are
    in step.  A step with lr 0 in every group and every gradient and momentum buffer zero
    (the state initialisation of ``torch.distributed.checkpoint``'s state-dict helpers)
    builds the state but is not counted in ``"step"``.  Cost: a tensor is written with a mask
    until every weight of it is known to equal ∇ψ*(θ) (found by the host paths during a masked
    step on the CPU; typically after a step or two); a frozen row, or an update that stays below
    half an ulp of θ step after step, keeps it masked, which costs the fused CPU step about
    1.25× (it reads the old weights; measured on benchmarks/optim.py's shapes at lr 1e-4, where
    a quarter of the entries never move at p = 1.1) and the eager paths up to 2×.

    Conventions.  MirrorDescent follows torch.optim (its generic optimizer tests are ported in
    tests/test_optim_conventions*.py): hooks, schedulers, closures, named parameters, groups
    added with ``add_param_group`` or appended to ``param_groups`` directly (they get the
    defaults), state dicts from older versions (missing options take their defaults),
    ``load_state_dict`` pre-hooks before the checks.  Its deliberate differences are listed
    in the documentation (docs/api/optim.md, "Differences from torch.optim").

    Resume.  ``state_dict()`` also holds, per parameter, ``"synced_weights"``: the weights θ
    is in step with (a reference to the parameter, not a copy; saved together with the
    model's weights it costs nothing).  After ``load_state_dict`` θ is kept exactly wherever
    the current weight equals the saved one, so a resumed run continues bit for bit on every
    path and every p; entries that differ were edited and are rebuilt.

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

    def __init__(self, params, lr: float | Tensor = 1e-3, p: float | None = None, normalize: bool = False, eps: float = 0.0,
                 momentum: float = 0.0, weight_decay: float = 0.0, *, foreach: bool | None = None,
                 fused: bool | None = None, compiled: bool | None = None, capturable: bool = False,
                 dual_dtype: torch.dtype | None = None, nonfinite: str = "raise", maximize: bool = False) -> None:
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"Invalid nonfinite: {nonfinite!r} (expected one of {', '.join(map(repr, NONFINITE_MODES))})")
        defaults = dict(lr=lr, p=p, normalize=normalize, eps=eps, momentum=momentum, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, fused=fused, compiled=compiled, capturable=capturable,
                        dual_dtype=dual_dtype)
        self.nonfinite = nonfinite
        self._reset_caches()
        super().__init__(params, defaults)

    # -- bookkeeping ---------------------------------------------------------------------

    def _reset_caches(self) -> None:
        self._versions: dict[int, tuple[int, int]] = {}  # id(param) -> (_version, address) after our write
        self._stale: set[int] = set()  # groups whose snapshot holds newer versions than _versions
        self._snapshots: dict[int, Snapshot] = {}  # group index -> the last step's lists
        self._plans: dict[int, dict] = {}  # group index -> the Triton path's plan cache
        self._checked: dict[int, tuple] = {}  # group index -> group_key when last validated
        self._impls: list[str] = []  # group index -> implementation
        self._records: dict[torch.device, DeviceRecord] = {}  # the device-side non-finite accounts
        self._meshes: list | None = None
        self._known: list[dict] = []  # group index -> the group object its caches belong to
        self._exact: set[int] = set()  # id(param) whose weights equal ∇ψ*(θ) everywhere (written unmasked)
        self._exact_lists: dict[int, tuple] = {}  # group index -> (owners list, its exact flags, how many)
        self._warned = getattr(self, "_warned", False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        gi = len(self.param_groups) - 1
        try:
            self._adopt(gi, self.param_groups[gi], gi if gi else None)
        except (TypeError, ValueError):
            del self.param_groups[gi]  # refused: the optimizer stays as it was
            raise

    def _adopt(self, gi: int, group: dict[str, Any], where: int | None) -> None:
        """Fill, check and resolve group ``gi``, and reset the caches kept for that index."""
        fill_group(group, self.defaults)
        check_group(group, where)
        del self._impls[gi:], self._known[gi:]
        self._flush_versions()
        for cache in (self._snapshots, self._plans):
            cache.pop(gi, None)
        self._checked[gi] = group_key(group)
        self._impls.append(self._resolve(group))
        self._known.append(group)
        self._meshes = None

    def _adopt_groups(self) -> None:
        """Groups appended to, replaced in or removed from ``param_groups`` directly (as some
        libraries do) get defaults, checks and caches as ``add_param_group`` gives them."""
        groups = self.param_groups
        if len(self._known) == len(groups) and all(map(operator.is_, self._known, groups)):
            return
        first = next((i for i, (a, b) in enumerate(zip(self._known, groups)) if a is not b),
                     min(len(self._known), len(groups)))
        del self._impls[first:], self._known[first:]
        for gi in range(first, len(groups)):
            self._adopt(gi, groups[gi], gi)

    def _flush_versions(self) -> None:
        """Bring ``_versions`` up to date with the snapshots of the steps that took the fast
        path (which record their versions only in the snapshot)."""
        for gi in self._stale:
            snap = self._snapshots.get(gi)
            if snap is not None:
                self._versions.update(zip(snap.ids, zip(snap.versions, snap.ptrs)))
        self._stale.clear()

    def _forget_exact(self, param: Tensor) -> None:
        """θ of ``param`` was rebuilt: its weights are no longer known to equal ∇ψ*(θ)."""
        self._exact.discard(id(param))
        self._exact_lists.clear()

    def _exact_flags(self, gi: int, owners: list[Tensor]) -> tuple[list[bool], int]:
        """Per owner, whether its weights are known to equal ∇ψ*(θ) (cached while the owners
        list is the same object: the step updates the flags in place), and how many are."""
        cached = self._exact_lists.get(gi)
        if cached is not None and cached[0] is owners:
            return cached[1], cached[2]
        flags = [id(x) in self._exact for x in owners]
        self._exact_lists[gi] = (owners, flags, sum(flags))
        return flags, sum(flags)

    def _resolve(self, group: dict[str, Any]) -> str:
        impl, why = resolve_implementation(group["params"], foreach=group["foreach"], fused=group["fused"],
                                           compiled=group["compiled"])
        if why is not None and not self._warned:
            self._warned = True
            warnings.warn(f"MirrorDescent: using the {impl} path, not the fused kernel: {why}", RuntimeWarning,
                          stacklevel=4)
        return impl

    @property
    def implementation(self) -> str:
        """The path the steps take (see the class docstring)."""
        self._adopt_groups()
        if len(set(self._impls)) <= 1:
            return self._impls[0] if self._impls else "single"
        return "; ".join(f"group {i}: {impl}" for i, impl in enumerate(self._impls))

    def __repr__(self) -> str:
        self._adopt_groups()
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
            lines.append(f"    implementation: {self._impls[i]}")
        return "\n".join(lines + [f"nonfinite: {self.nonfinite}", ")"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling, and the end of ``load_state_dict``: options added since a state was saved
        get their defaults (as torch's optimizers fill theirs), so older checkpoints load."""
        super().__setstate__(state)
        self.__dict__.setdefault("nonfinite", "raise")
        for name, value in GROUP_DEFAULTS.items():
            self.defaults.setdefault(name, value)
        for group in self.param_groups:
            fill_group(group, self.defaults)
        self._reset_caches()
        self._impls = [self._resolve(group) for group in self.param_groups]
        self._checked = {gi: group_key(group) for gi, group in enumerate(self.param_groups)}
        self._known = list(self.param_groups)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["nonfinite"] = self.nonfinite
        return state

    @property
    def skipped_steps(self) -> int:
        """Number of steps skipped because of non-finite gradients (``nonfinite="skip"``)."""
        self._report_deferred(wait=True, raise_error=False)
        return max((g.get("skipped_steps", 0) for g in self.param_groups), default=0)

    def check_nonfinite(self) -> int:
        """Wait for the device-side non-finite checks of the steps so far, raise
        :class:`NonFiniteGradientError` for a skipped step (``nonfinite="raise"``), and return
        ``skipped_steps``.  Steps checked on the host need no such call."""
        self._report_deferred(wait=True)
        return self.skipped_steps

    # -- state dict ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, with ``"synced_weights"`` (see *Resume* in the class docstring);
        the pre- and post-hooks run first and last, as torch's."""
        return _statedict.state_dict(self, super().state_dict)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state: the pre-hooks run first (so that one can convert another optimizer's
        state dict), then the checks (a state dict of another optimizer is refused; options it
        lacks, from an older version, take their defaults), the post-hooks last.  θ and momentum
        keep their saved dtype (torch would cast them to the parameter's)."""
        _statedict.load_state_dict(self, state_dict, super().load_state_dict)

    # -- step ----------------------------------------------------------------------------

    def _init_group(self, gi: int, group: dict[str, Any], start: int) -> Batch:
        """The group's parameters that have gradients, with their gradients, θ and momentum
        buffers (local shards for DTensors), θ resynchronised where needed."""
        if self._checked.get(gi) != group_key(group):  # changed since validated (e.g. group["lr"] = -1)
            check_group(group, gi, params=False)
            self._checked[gi] = group_key(group)
            self._impls[gi] = self._resolve(group)
        plist = group["params"]
        grads_all = list(map(_grad, plist))
        settings = (group["p"], group["dual_dtype"], group["momentum"] != 0.0, self._impls[gi])
        snap = self._snapshots.get(gi)
        # the per-step fast path: no parameter was edited or replaced (version, address) and the
        # same ones have gradients, so the last step's lists still hold
        if snap is not None and snap.valid(group, settings, plist, grads_all):
            grads = grads_all if snap.all_have_grads else [g for g in grads_all if g is not None]
            contiguous = check_dense(grads)
            if snap.sharded:
                grads = list(map(_dist.local, grads))
            return snap.batch._replace(grads=grads, synced=False, contiguous=contiguous)
        self._flush_versions()
        owners, params, grads, duals, bufs, ids = [], [], [], [], [], []
        # every θ is checked at the first step, after load_state_dict, and when p, the dual dtype,
        # momentum or the path changed
        check_all = snap is None or snap.group is not group or snap.settings != settings
        synced = check_all
        for offset, param in enumerate(plist):
            grad = param.grad
            if grad is None:
                continue
            if grad.layout != torch.strided:
                raise RuntimeError(SPARSE_MESSAGE)
            state = self.state[param]
            if check_all or self._versions.get(id(param)) != key(param):
                sync_dual(param, state, group, start + offset)
                self._forget_exact(param)
                synced = True
            owners.append(param)
            params.append(_dist.local(param))
            grads.append(_dist.local(grad))
            duals.append(_dist.local(state.get("dual")))
            ids.append(start + offset)
            if group["momentum"] != 0.0:
                buf = state.get("momentum_buffer")
                ddtype = default_dual_dtype(param.dtype, group["dual_dtype"])
                if buf is None or buf.shape != param.shape or buf.dtype != ddtype:
                    buf = state["momentum_buffer"] = torch.zeros_like(param, dtype=ddtype,
                                                                      memory_format=torch.preserve_format)
                bufs.append(_dist.local(buf))
            else:
                bufs.append(None)
        sharded = any(map(_dist.is_dtensor, owners))
        device = params[0].device if params else None
        return Batch(owners, params, grads, duals, bufs, ids, device, synced, all(map(Tensor.is_contiguous, grads)),
                      sharded)

    def _take_snapshot(self, gi: int, group: dict[str, Any], batch: Batch) -> None:
        plist = group["params"]
        settings = (group["p"], group["dual_dtype"], group["momentum"] != 0.0, self._impls[gi])
        has_grad = [x.grad is not None for x in plist]
        self._snapshots[gi] = Snapshot(group, settings, list(map(_version, plist)), addresses(plist, batch.sharded),
                                        list(map(id, plist)), has_grad, all(has_grad), batch.sharded,
                                        batch._replace(grads=None))

    def _deferred(self, gi: int, group: dict[str, Any], batch: Batch) -> bool:
        """Whether this group's non-finite check runs on the device (see ``nonfinite``)."""
        return (self._impls[gi] == "fused-triton" or group["capturable"]
                or (torch.compiler.is_compiling() and batch.device.type != "cpu"))

    @torch.compiler.disable
    def _begin_step(self) -> tuple[list[Batch], dict] | None:
        """Report device-side findings of earlier steps, gather the groups, run the non-finite
        check; None when the step is skipped on the host."""
        self._report_deferred(wait=False)
        self._adopt_groups()
        batches, start = [], 0
        for gi, group in enumerate(self.param_groups):
            batch = self._init_group(gi, group, start)
            if batch.synced:
                self._plans.pop(gi, None)  # θ or a buffer was (re)built: new addresses
            batches.append(batch)
            start += len(group["params"])
        if self.nonfinite == "ignore":
            return batches, {}
        host, counted, bad = [], False, 0
        for gi, (group, b) in enumerate(zip(self.param_groups, batches)):
            if not b.params or self._deferred(gi, group, b):
                continue
            if self._impls[gi] == "fused-cpu":  # the count reuses the step's plan and pointers
                prep = _cpu.prepare(self._plans.setdefault(gi, {}), b.params, b.grads, b.duals, b.bufs, p=group["p"],
                                    momentum=group["momentum"], exact=self._exact_flags(gi, b.owners)[0],
                                    contiguous=b.contiguous)
                bad += _cpu.count_prepared(prep)
                counted = True
            else:
                host.extend(b.grads)
        if (host or counted) and not self._host_grads_finite(host, bad):
            self._host_nonfinite()
            return None
        flags = {}
        for gi, (group, b) in enumerate(zip(self.param_groups, batches)):
            if not b.params or not self._deferred(gi, group, b):
                continue
            record = self._record(b.device, triton=self._impls[gi] == "fused-triton")
            if self._impls[gi] == "fused-triton":
                from attnopt.optim import _triton

                launches = _triton.prepared(self._plans.setdefault(gi, {}), b.params, b.grads, b.duals, b.bufs,
                                            ids=b.ids, grads_contiguous=b.contiguous, **_hyper(group, b.device))
                _triton.launch_nonfinite_check(launches, record.flag)
            else:
                record.mark(b.grads, b.ids)
            flags[b.device] = record.flag
        if flags and self._sharded_meshes():
            for flag in flags.values():
                _dist.all_reduce_max(flag, self._meshes)
        return batches, flags

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
        begun = self._begin_step()
        if begun is None:
            return loss
        batches, flags = begun
        for gi, (group, b) in enumerate(zip(self.param_groups, batches)):
            if b.params:
                hyper = _hyper(group, b.device)
                grads = b.grads
                if b.sharded and group["normalize"]:  # the ℓq norm of the whole, unsharded gradient
                    scales = _dist.global_lq_scales([o.grad for o in b.owners], group["p"], group["eps"],
                                                    b.duals[0].dtype if b.duals[0] is not None else b.params[0].dtype)
                    grads, hyper["normalize"] = [g * s for g, s in zip(grads, scales)], False
                # the host paths' exact-weight flags and the fused paths' plans are eager only: a
                # compiled step masks every write and plans nothing, and state traced here would
                # add guards (a recompile each step)
                eager = not torch.compiler.is_compiling()
                exact, known = (self._exact_flags(gi, b.owners) if eager and self._impls[gi] in
                                ("fused-cpu", "foreach", "single") else (None, 0))
                lr = hyper["lr"]
                if eager and self._impls[gi] == "fused-cpu" and b.device not in flags and not (
                        isinstance(lr, Tensor) and lr.device.type != "cpu"):
                    # what mirror_descent() would dispatch to, without its per-call resolution
                    _cpu.cpu_fused_mirror_descent(b.params, grads, b.duals, b.bufs, **hyper, exact=exact,
                                                  fused_plan=self._plans.setdefault(gi, {}))
                else:
                    mirror_descent(b.params, grads, b.duals, b.bufs, **hyper, **_FLAGS[self._impls[gi]],
                                   found_inf=flags.get(b.device),
                                   fused_plan=self._plans.setdefault(gi, {}) if eager else None, exact=exact)
                if exact is not None and known < len(exact) and sum(exact) != known:  # the step found more exact
                    self._exact.update(id(x) for x, flag in zip(b.owners, exact) if flag)
                    self._exact_lists[gi] = (b.owners, exact, sum(exact))
        self._end_step(batches, flags)
        return loss

    @torch.compiler.disable
    def _end_step(self, batches: list[Batch], flags: dict) -> None:
        counted = not _statedict.changed_nothing(self.param_groups, batches)
        for gi, (group, b) in enumerate(zip(self.param_groups, batches)):
            if b.params:
                # the fused Triton kernel writes through raw pointers (no version bump): its
                # recorded versions and lists stay valid until something else changes
                snap = self._snapshots.get(gi)
                if snap is not None and not b.synced and snap.batch.params is b.params and snap.all_have_grads:
                    if self._impls[gi] != "fused-triton":  # the same lists: only the versions moved
                        self._snapshots[gi] = snap._replace(versions=list(map(_version, group["params"])))
                        self._stale.add(gi)
                else:
                    self._versions.update(zip(map(id, b.owners), map(key, b.owners)))
                    self._take_snapshot(gi, group, b)
            group["step"] += counted
        for device in flags:
            self._records[device].finalize()

    # -- non-finite gradients ------------------------------------------------------------

    def _host_grads_finite(self, grads: list[Tensor], bad: int = 0) -> bool:
        """Whether ``grads`` are finite and ``bad`` (non-finite entries counted already) is 0,
        on every rank."""
        finite = bad == 0 and (not grads or gradients_finite(grads))
        if self._sharded_meshes():  # every rank must skip the same steps
            device = grads[0].device if grads else torch.device("cpu")
            flag = torch.tensor([0 if finite else 1], dtype=torch.int32, device=device)
            _dist.all_reduce_max(flag, self._meshes)
            finite = not bool(flag.item())
        return finite

    def _host_nonfinite(self) -> None:
        host_nonfinite(self)

    def _record(self, device: torch.device, triton: bool) -> DeviceRecord:
        record = self._records.get(device)
        if record is None:
            g0 = self.param_groups[0]
            record = self._records[device] = DeviceRecord(device, g0["step"] + g0["skipped_steps"],
                                                          sticky=self.nonfinite == "raise", triton=triton)
        return record

    def _report_deferred(self, wait: bool, raise_error: bool = True) -> None:
        """Account for the steps the device skipped (see :func:`report_deferred`)."""
        report_deferred(self, wait, raise_error)

    def _param_at(self, index: int) -> Tensor:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))[index]

    def _sharded_meshes(self) -> list:
        if self._meshes is None:
            self._meshes = _dist.meshes(chain.from_iterable(g["params"] for g in self.param_groups))
        return self._meshes


def _hyper(group: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The step's hyper-parameters, as the functional core takes them (a tensor lr stays a
    tensor only on the parameters' device; on the CPU it is read without a synchronisation)."""
    lr = group["lr"]
    if isinstance(lr, Tensor) and lr.device != device and lr.device.type == "cpu":
        lr = float(lr)
    return dict(lr=lr, p=group["p"], normalize=group["normalize"], eps=group["eps"],
                momentum=group["momentum"], weight_decay=group["weight_decay"], maximize=group["maximize"])


