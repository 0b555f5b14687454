"""Where and how a training run executes: device, processes (torchrun), precision, and the
optimiser of each run.

The globals a run may change — the float32 matmul precision (TF32 for the paper protocol on
a GPU) and the random generators — are restored by :func:`execution_scope`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from attnopt.config import config_error
from attnopt.experiments.imdb.config import TrainConfig
from attnopt.runtime import preserved_rng, skip_finalisation


@dataclass
class Dist:
    """This process's place in a torchrun group (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1


def setup_distributed(device_req: str) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    here = False
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_req in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        here = True
    return Dist(dist.get_rank(), dist.get_world_size(), local, here)


def teardown_distributed(info: Dist) -> None:
    """Destroy the group :func:`setup_distributed` made; after a gloo group the command line
    ends the process without Python's finalisation (:func:`attnopt.runtime.skip_finalisation`
    says why)."""
    if info.initialised_here:
        import torch.distributed as dist

        gloo = dist.get_backend() == "gloo"
        dist.destroy_process_group()
        if gloo:
            skip_finalisation()


def barrier(info: Dist) -> None:
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def all_reduce(t: torch.Tensor, info: Dist, op: str = "sum") -> torch.Tensor:
    """Sum (or max) ``t`` over the processes, in place (a no-op without torchrun)."""
    if info.active:
        import torch.distributed as dist

        moved = t.cuda() if dist.get_backend() == "nccl" and not t.is_cuda else t
        dist.all_reduce(moved, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        if moved is not t:
            t.copy_(moved.cpu())
    return t


def resolve_device(req: str, info: Dist | None = None) -> torch.device:
    """``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``; errors are ConfigErrors."""
    req = (req or "auto").lower()
    if req == "auto":
        req = "cuda" if torch.cuda.is_available() else "cpu"
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise config_error(TrainConfig, f"device: {req}: CUDA is not available on this machine; use --device cpu")
        if req == "cuda" and info is not None and info.active:
            return torch.device("cuda", info.local_rank)
    elif req not in ("cpu", "mps"):
        raise config_error(TrainConfig, f"device: unknown device {req!r}; use auto, cpu, cuda or cuda:N")
    try:
        return torch.device(req)
    except RuntimeError as exc:
        raise config_error(TrainConfig, f"device: {exc}") from None


def autocast(device: torch.device, precision: str):
    """bf16 autocast (parameters and optimiser state stay fp32), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def execution_scope(tf32: bool) -> Iterator[None]:
    """The random generators and the float32 matmul precision restored afterwards;
    ``tf32``: let float32 matmuls use TF32 tensor cores meanwhile (CUDA)."""
    old = torch.get_float32_matmul_precision()
    with preserved_rng():
        if tf32:
            torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(old)


def make_optimizer(cfg: TrainConfig, params: Iterable[torch.nn.Parameter],
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """The configured optimiser: plain ℓp mirror descent (no momentum / decay / schedule) or a baseline.

    For MD, ``md_impl`` picks the implementation of :class:`attnopt.optim.MirrorDescent`
    (``auto``: the optimiser's own default, the fastest path that runs on the device) and
    ``md_nonfinite`` its NaN-gradient check (``auto``: ``raise`` on CPU; ``ignore`` on GPU,
    where the training loop's loss check stops the run — the fused CUDA check no longer
    synchronises the host, but its deferred raise has not been run on a GPU inside this loop).
    """
    from attnopt.optim import MirrorDescent

    lr = cfg.resolved_lr()
    wd = cfg.resolved_weight_decay()
    params = list(params)
    device = device or torch.device("cpu")
    on_gpu = device.type == "cuda"
    if cfg.optimizer == "md":
        impl = {"auto": {}, "single": {"foreach": False}, "foreach": {"foreach": True},
                "compiled": {"compiled": True}, "fused": {"fused": True}}[cfg.md_impl]
        nonfinite = cfg.md_nonfinite if cfg.md_nonfinite != "auto" else ("ignore" if on_gpu else "raise")
        return MirrorDescent(params, lr=lr, p=cfg.p, normalize=cfg.md_normalize, weight_decay=wd,
                             nonfinite=nonfinite, **impl)
    fast = {"foreach": True} if on_gpu else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fast)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fast)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd, **fast)


__all__ = ["Dist", "setup_distributed", "teardown_distributed", "barrier", "all_reduce", "resolve_device",
           "autocast", "execution_scope", "make_optimizer"]
