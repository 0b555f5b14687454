"""Sharded parameters (``torch.distributed.tensor.DTensor``, as ``fully_shard`` (FSDP2) makes them).

The ℓp mirror-descent step is elementwise, so each rank updates its own shard: the optimizer
hands the kernels the local tensors of w, g, θ and the momentum buffer, and keeps θ and the
buffer as DTensors laid out like their parameter (so ``state_dict`` and distributed
checkpoints see them sharded).  Two things need the other ranks: the normalised step's ℓq
norm of the whole gradient (computed on the DTensor gradient, whose reductions communicate),
and the decision to skip a step with a non-finite gradient (a ``max`` over the mesh, so that
every rank skips the same steps).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = ["is_dtensor", "local", "like", "meshes", "all_reduce_max", "global_lq_scales"]

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = None


def is_dtensor(t: object) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor | None) -> Tensor | None:
    """The rank's shard of a DTensor (the tensor itself otherwise)."""
    return t._local_tensor if is_dtensor(t) else t


def like(local_tensor: Tensor, param: Tensor) -> Tensor:
    """``local_tensor`` as a DTensor laid out like ``param`` (or itself for a plain parameter)."""
    if not is_dtensor(param):
        return local_tensor
    return DTensor.from_local(local_tensor, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def meshes(params: Iterable[Tensor]) -> list:
    """The device meshes of the DTensor parameters, in order of first appearance."""
    found = []
    for param in params:
        if is_dtensor(param) and all(param.device_mesh is not m for m in found):
            found.append(param.device_mesh)
    return found


def all_reduce_max(value: Tensor, mesh_list: list) -> None:
    """``value ← max`` of ``value`` over every rank of every mesh (in place; asynchronous on
    NCCL, so no host synchronisation)."""
    import torch.distributed as dist

    for mesh in mesh_list:
        for dim in range(mesh.ndim):
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=mesh.get_group(dim))


def global_lq_scales(grads: list[Tensor], p: float, eps: float, dtype: torch.dtype) -> list[Tensor]:
    """``1/(‖g‖_q + eps)`` per DTensor gradient over the whole (unsharded) tensor, as local
    0-d tensors (the normalised step): the scaled norm ``m·(Σ(|g|/m)^q)^{1/q}`` with ``m`` the
    largest |g|, both reduced over the mesh dimensions the gradient is sharded on."""
    from attnopt.mirror import dual_exponent

    q = dual_exponent(p)
    out = []
    for g in grads:
        gl = g._local_tensor.to(dtype)
        m = (gl.abs().amax() if gl.numel() else torch.zeros((), dtype=dtype, device=gl.device)).reshape(1)
        _reduce_sharded(m, g, "max")
        safe = torch.where(m > 0, m, torch.ones_like(m))
        s = (gl.abs() / safe).pow(q).sum().reshape(1)
        _reduce_sharded(s, g, "sum")
        den = m * s.pow(1.0 / q) + eps
        out.append(torch.where(den > 0, den.reciprocal(), torch.zeros_like(den)).reshape(()))
    return out


def _reduce_sharded(value: Tensor, dt: Tensor, op: str) -> None:
    """All-reduce ``value`` over the mesh dimensions on which ``dt`` is sharded."""
    import torch.distributed as dist

    red = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    for dim, placement in enumerate(dt.placements):
        if placement.is_shard():
            dist.all_reduce(value, op=red, group=dt.device_mesh.get_group(dim))
