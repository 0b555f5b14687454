"""What MirrorDescent keeps between steps besides θ itself: resynchronising θ with weights
edited outside the optimizer, and the per-group lists of the last step (the fast path).

θ must equal ∇ψ(w) for the weights the optimizer last wrote.  Whether a weight was edited
since is read from its version counter and address (recorded after every write); after
``load_state_dict`` it is read exactly from ``"synced_weights"``, the weights the state was
saved with; without them (an older state dict) an entry counts as edited when ∇ψ*(θ) misses
it by more than 2 ulp.  Only edited entries are rebuilt, so θ keeps what it knows below the
weights' resolution.
"""

from __future__ import annotations

import operator
import warnings
from itertools import repeat
from typing import Any, NamedTuple

import torch
from torch import Tensor

from attnopt.optim import _dist
from attnopt.optim._math import default_dual_dtype, inverse_exponent, inverse_map_into, mirror_map

__all__ = ["sync_dual", "key", "addresses", "capturing", "check_dense", "Batch", "Snapshot", "SPARSE_MESSAGE"]

SPARSE_MESSAGE = "MirrorDescent does not support sparse gradients"
_version = operator.attrgetter("_version")


def sync_dual(param: Tensor, state: dict[str, Any], group: dict[str, Any], index: int) -> None:
    """Make ``state["dual"]`` equal ∇ψ(param) wherever param was changed outside the optimizer."""
    p = group["p"]
    ddtype = default_dual_dtype(param.dtype, group["dual_dtype"])
    saved = state.pop("synced_weights", None)
    if p == 2.0 and ddtype == param.dtype:  # θ ≡ w
        state.pop("dual", None)
        state["dual_p"] = p
        return
    w = _dist.local(param).detach()
    theta = _dist.local(state.get("dual"))
    if (theta is None or state.get("dual_p") != p or theta.dtype != ddtype or theta.shape != w.shape
            or theta.device != w.device):
        state["dual"] = _dist.like(checked_mirror_map(w, p, ddtype, index), param)
        state["dual_p"] = p
        return
    saved = _dist.local(saved)
    if saved is not None and saved.shape == w.shape and saved.dtype == w.dtype:
        stale = saved.to(w.device) != w  # exact: the weights θ was saved with, against today's
    else:
        # the weights may have changed: keep θ where ∇ψ*(θ) still reproduces them (to 2 ulp:
        # the fused kernels and torch's pow may round the inverse map differently)
        back = torch.empty_like(w)
        inverse_map_into(theta, inverse_exponent(p), back)
        stale = ~((back - w).abs() <= 2.0 * torch.finfo(w.dtype).eps * w.abs())
    if capturing(w) or bool(stale.any()):
        theta.copy_(torch.where(stale, checked_mirror_map(w, p, ddtype, index), theta))


def checked_mirror_map(w: Tensor, p: float, dtype: torch.dtype, index: int) -> Tensor:
    """∇ψ(w) in ``dtype``, with a warning when (p > 2) it over- or underflows there."""
    theta = mirror_map(w, p, dtype)
    if p > 2.0 and not capturing(w):
        fmax = float(torch.finfo(dtype).max)
        lost = ((theta.abs() == fmax) | ((theta.abs() < torch.finfo(dtype).tiny) & (w != 0))).any()
        if bool(lost):
            warnings.warn(
                f"MirrorDescent: parameter {index} (shape {tuple(w.shape)}) has weights whose "
                f"mirror image |w|^(p-1) (p={p:g}) over- or underflows {dtype}; they will not come "
                "back exactly. Pass dual_dtype=torch.float64 to keep them.",
                RuntimeWarning,
                stacklevel=6,
            )
    return theta


def key(param: Tensor) -> tuple[int, int]:
    """(version counter, address): what moves when a parameter is edited or replaced."""
    return param._version, _dist.local(param).data_ptr()


def addresses(params: list[Tensor], sharded: bool) -> list[int]:
    return [_dist.local(x).data_ptr() for x in params] if sharded else list(map(Tensor.data_ptr, params))


def capturing(t: Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def check_dense(grads: list[Tensor]) -> bool:
    """Raise for a sparse gradient, else tell whether all are contiguous (one pass of
    ``is_contiguous``, False for a sparse tensor, answers for almost every list)."""
    if all(map(Tensor.is_contiguous, grads)):
        return True
    if any(g.layout != torch.strided for g in grads):
        raise RuntimeError(SPARSE_MESSAGE)
    return False


class Batch(NamedTuple):
    """One parameter group's share of a step, from ``MirrorDescent._init_group``."""

    owners: list[Tensor]  # the parameters that have gradients
    params: list[Tensor]  # their tensors (a DTensor's local shard)
    grads: list[Tensor] | None
    duals: list[Tensor | None]  # θ (None where the parameter is its own dual, p = 2)
    bufs: list[Tensor | None]  # momentum buffers (None without momentum)
    ids: list[int]  # global parameter indices (for error messages)
    device: torch.device | None
    synced: bool  # some θ was (re)built this step: the recorded versions and lists must be renewed
    contiguous: bool  # every gradient is contiguous
    sharded: bool  # some parameter is a DTensor


class Snapshot(NamedTuple):
    """A parameter group right after a step, for the per-step fast path of ``_init_group``."""

    group: dict[str, Any]
    settings: tuple  # (p, dual_dtype, momentum on, implementation)
    versions: list[int]
    ptrs: list[int]
    ids: list[int]  # id() of the group's parameters
    has_grad: list[bool]
    all_have_grads: bool
    sharded: bool
    batch: Batch

    def valid(self, group, settings, plist, grads) -> bool:
        if self.group is not group or self.settings != settings or self.versions != list(map(_version, plist)):
            return False
        if self.ptrs != addresses(plist, self.sharded):
            return False
        if self.all_have_grads:
            return all(map(operator.is_not, grads, repeat(None)))
        return list(map(operator.is_not, grads, repeat(None))) == self.has_grad
