"""MirrorDescent on FSDP2 (``fully_shard``, DTensor parameters): 2 gloo processes on CPU give the
parameters of single-process training on the whole batch, to 1e-6."""

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
WORKER_TIMEOUT_S = 300


def _model(dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).to(dtype)


def _batches(dtype):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=gen, dtype=dtype), torch.randn(8, 1, generator=gen, dtype=dtype))
            for _ in range(STEPS)]


def _train(model, batches, opt_kw, rank=0, world=1, nan_at=None):
    opt = MirrorDescent(model.parameters(), **opt_kw)
    for k, (x, y) in enumerate(batches):
        n = x.shape[0] // world
        xs, ys = x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        if k == nan_at and rank == world - 1:  # a NaN in one rank's shard: every rank must skip
            next(iter(model.parameters())).grad._local_tensor.view(-1)[0] = float("nan")
        opt.step()
    return opt


def _worker(rank: int, world: int, out_dir: str) -> None:
    faulthandler.enable(all_threads=True)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank,
                            world_size=world)
    try:
        for name, (dtype, opt_kw, nan_at) in CASES.items():  # one process group for every case
            model = _model(dtype)
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = _train(model, _batches(dtype), opt_kw, rank, world, nan_at)
            assert all(type(p).__name__ == "DTensor" for p in model.parameters())
            full = [p.full_tensor().detach().clone() for p in model.parameters()]
            skipped = opt.skipped_steps
            if rank == 0:
                torch.save({"params": full, "skipped": skipped, "impl": opt.implementation},
                           os.path.join(out_dir, f"{name}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # the same SIGABRT at interpreter exit as under DDP (a gloo thread still finishing work):
    # leave without Python's finalisation, as the command line does (attnopt.runtime)
    skip_finalisation()
    end_process(0)


CASES = {
    "float32-default": (torch.float32, dict(lr=0.05, p=1.5, momentum=0.9, weight_decay=0.01), None),
    "float64-normalized": (torch.float64, dict(lr=0.05, p=1.75, normalize=True, foreach=True), None),
    "float64-nan-skipped": (torch.float64, dict(lr=0.05, p=3.0, nonfinite="skip"), 2),
}


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    """The three cases trained by 2 FSDP2 processes (spawned once)."""
    out = tmp_path_factory.mktemp("fsdp")
    workers = mp.spawn(_worker, args=(2, str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while not workers.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail(f"the FSDP2 workers did not finish within {WORKER_TIMEOUT_S} s")
    return out


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
@pytest.mark.skipif(sys.platform == "win32", reason="spawned gloo workers are slow/flaky on Windows")
@pytest.mark.parametrize("name", list(CASES))
def test_fsdp2_two_processes_equal_single_process(sharded_runs, name):
    dtype, opt_kw, nan_at = CASES[name]
    result = torch.load(sharded_runs / f"{name}.pt")
    batches = _batches(dtype)
    if nan_at is not None:
        del batches[nan_at]  # the sharded run skipped that step on both ranks
    model = _model(dtype)
    opt = _train(model, batches, opt_kw)
    assert result["impl"] == opt.implementation  # the local shards take the same path (fused-cpu for float32)
    for got, want in zip(result["params"], model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)
    assert result["skipped"] == (0 if nan_at is None else 1)
    assert not torch.equal(result["params"][0], _model(dtype)[0].weight.detach())  # it did train
