"""MirrorDescent under DistributedDataParallel: 2 gloo processes equal one process on the whole batch."""

from __future__ import annotations

import faulthandler
import os
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnopt.optim import MirrorDescent
from attnopt.runtime import end_process, skip_finalisation

STEPS = 5
OPT = dict(lr=0.05, p=1.5, normalize=True, momentum=0.9, weight_decay=0.01)


def _model(dtype=torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)


def _batches(dtype=torch.float64):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen, dtype=dtype), torch.randn(8, 1, generator=gen, dtype=dtype))
            for _ in range(STEPS)]


def _train(model, batches, rank=0, world=1, **impl):
    opt = MirrorDescent(model.parameters(), **OPT, **impl)
    for x, y in batches:
        n = x.shape[0] // world
        xs, ys = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _worker(rank: int, world: int, out_dir: str, dtype=torch.float64, impl=None) -> None:
    faulthandler.enable(all_threads=True)  # a worker killed by a signal leaves its Python stacks in the log
    torch.set_num_threads(1)
    # rendezvous through a file, as torch's own gloo tests do: no port to pick, so no race for one
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}",
                            rank=rank, world_size=world)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_model(dtype))
        params = _train(ddp, _batches(dtype), rank, world, **(impl or {}))
        torch.save(params, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done talking
    finally:
        dist.destroy_process_group()
    # the gloo threads outlive the group once DDP was built on it: leave without Python's
    # finalisation, as the command line does (attnopt.runtime.skip_finalisation says why)
    skip_finalisation()
    end_process(0)


#: A hung collective fails the test instead of the whole CI run (the workers take seconds).
WORKER_TIMEOUT_S = 300

# float64 on the default path; float32 on the fused CPU kernel (both ranks build or share it)
CASES = [pytest.param(torch.float64, {}, 1e-12, id="float64-default"),
         pytest.param(torch.float32, {"fused": True}, 2e-6, id="float32-fused-cpu")]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are slow/flaky on Windows")
@pytest.mark.parametrize("dtype, impl, rtol", CASES)
def test_ddp_two_processes_equal_single_process(tmp_path, dtype, impl, rtol):
    workers = mp.spawn(_worker, args=(2, str(tmp_path), dtype, impl), nprocs=2, join=False)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not workers.join(timeout=1.0):  # raises if a worker failed
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail(f"the DDP workers did not finish within {WORKER_TIMEOUT_S} s (a hang in gloo?)")
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    single = _train(_model(dtype), _batches(dtype), **impl)
    for a, b, c in zip(r0, r1, single):
        assert torch.equal(a, b)  # replicas stay bit-identical
        torch.testing.assert_close(a, c, rtol=rtol, atol=rtol * 1e-2)  # = the full-batch run, to rounding
    assert not torch.equal(single[0], _model(dtype)[0].weight.detach())  # it did train
