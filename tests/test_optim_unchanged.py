"""What a MirrorDescent step leaves alone (issue 25): an entry whose dual θ does not move keeps
its bits — a zero gradient on the first step (θ was just built from the weights, and the round
trip ∇ψ*(∇ψ(w)) is not exact for p ≠ 2), a frozen row on later steps, a step too small to move
θ — on every path, every p and every dtype; and the state initialisation of
``torch.distributed.checkpoint``'s state-dict helpers (a step with zero gradients and lr 0)
moves nothing, so that a resumed run is bit-identical.

The compiled path is sampled (one p, one dtype) in normal runs; its full grid is marked
``exhaustive`` (``pytest -m exhaustive``).  The Triton kernel's share runs in the interpreter
test of ``test_optim_paths.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from attnopt.optim import MirrorDescent
from optim_reference import HAVE_CC, grads_like, make_params

P_VALUES = [1.01, 1.1, 1.75, 2.0, 3.0]
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PATHS = {"default": {}, "single": {"foreach": False}, "foreach": {"foreach": True}, "fused-cpu": {"fused": True},
         "capturable": {"capturable": True}, "compiled": {"compiled": True}}
needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler for the fused CPU kernel")


def _path_params():
    """Every (path, p, dtype); the compiled path's full grid is exhaustive, one sample is not."""
    out = []
    for path in PATHS:
        for p in P_VALUES:
            for dname in DTYPES:
                marks = [needs_cc] if path == "fused-cpu" else []
                if path == "compiled" and (p, dname) != (1.1, "float32"):
                    marks.append(pytest.mark.exhaustive)
                out.append(pytest.param(path, p, dname, marks=marks, id=f"{path}-{p}-{dname}"))
    return out


def _weights(dtype, seed=0):
    # a wide range of magnitudes (1e-6 … 10), both signs, and exact zeros
    w = make_params((37, 29), (300,), dtype=dtype, seed=seed)
    with torch.no_grad():
        w[1].mul_(torch.logspace(-5, 2, 300, dtype=torch.float64).to(dtype))
        w[1][::50] = 0.0
    return w


@pytest.mark.parametrize("path, p, dname", _path_params())
def test_entries_whose_dual_does_not_move_keep_their_bits(path, p, dname):
    dtype = DTYPES[dname]
    w = _weights(dtype)
    w0 = [x.detach().clone() for x in w]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # p = 3 with tiny weights: the resync warning
        opt = MirrorDescent(w, lr=0.05, p=p, momentum=0.5, **PATHS[path])
        # 1. the first step, every gradient zero: nothing moves (θ is built, momentum stays 0)
        for x in w:
            x.grad = torch.zeros_like(x)
        opt.step()
        assert all(torch.equal(x, y) for x, y in zip(w, w0))
        # 2. later steps with row 3 (and entry 7) frozen: they keep their bits, the rest trains
        for k in range(2):
            for x, g in zip(w, grads_like(w, seed=k)):
                x.grad = g.index_fill(0, torch.tensor([3]), 0.0) if g.dim() == 2 else g.index_fill(0, torch.tensor([7]), 0.0)
            opt.step()
        assert torch.equal(w[0][3], w0[0][3]) and torch.equal(w[1][7], w0[1][7])
        assert not torch.equal(w[0][4], w0[0][4])
        # 3. a step too small to move θ (lr 1e-30; momentum off, since the buffer would move it;
        # no gradient where θ = 0, which 1e-30 would move)
        opt.param_groups[0].update(lr=1e-30, momentum=0.0)
        before = [x.detach().clone() for x in w]
        for x, g in zip(w, grads_like(w, seed=9)):
            x.grad = g.masked_fill(x.detach() == 0, 0.0)
        opt.step()
        assert all(torch.equal(x, y) for x, y in zip(w, before))


@pytest.mark.parametrize("path", [pytest.param(k, marks=[needs_cc] if k == "fused-cpu" else []) for k in PATHS
                                  if k != "compiled"])
@pytest.mark.parametrize("p", [1.1, 1.75, 3.0])
def test_weights_edited_after_training_keep_their_bits_on_a_zero_step(path, p):
    """Once every weight has moved, a tensor is written whole (its weights equal ∇ψ*(θ), so the
    host paths drop the mask); an in-place edit rebuilds θ from the edited weights and brings the
    mask back, so a zero-gradient step then leaves the edit as it was."""
    w = make_params((64, 33), (100,))
    opt = MirrorDescent(w, lr=0.05, p=p, **PATHS[path])
    for k in range(3):
        for x, g in zip(w, grads_like(w, seed=k)):
            x.grad = g
        opt.step()
    with torch.no_grad():
        w[0][5].mul_(1.37)
        w[1][::3] = torch.linspace(-0.5, 0.5, 34)
    edited = [x.detach().clone() for x in w]
    for x in w:
        x.grad = torch.zeros_like(x)
    opt.step()
    assert all(torch.equal(x, y) for x, y in zip(w, edited))


def test_torch_compile_of_the_step_keeps_zero_gradient_weights():
    """``torch.compile(opt.step)`` traces the device-selected eager step: the same guarantee."""
    w = _weights(torch.float32)
    w0 = [x.detach().clone() for x in w]
    opt = MirrorDescent(w, lr=0.05, p=1.1)
    step = torch.compile(opt.step)
    for x in w:
        x.grad = torch.zeros_like(x)
    step()
    assert all(torch.equal(x, y) for x, y in zip(w, w0))


def test_a_tiny_nonzero_gradient_moves_a_weight_at_most_by_the_round_trip():
    """Documented: once θ moves (however little), w becomes ∇ψ*(θ), which may differ from the
    weight θ was built from by the round trip's error — a few ulp times 1/(p−1) — besides the
    step itself."""
    p = 1.1
    w = make_params((4000,))
    w0 = w[0].detach().clone()
    opt = MirrorDescent(w, lr=1.0, p=p, foreach=False)
    theta = None
    w[0].grad = torch.zeros_like(w0)
    opt.step()
    theta = opt.state[w[0]]["dual"]
    ulp = torch.finfo(torch.float32).eps
    w[0].grad = theta * (4 * ulp)  # θ moves by about 4 ulp: every entry not 0
    opt.step()
    rel = (w[0].detach().double() - w0.double()).abs() / w0.double().abs().clamp_min(1e-30)
    assert (w[0] != w0).any()
    assert rel.max().item() <= (4 + 4) * ulp / (p - 1)  # the step (4 ulp of θ) and the round trip, times e


# --------------------------------------------------------------------------- torch.distributed.checkpoint


def _dcp_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    return model, MirrorDescent(model.parameters(), lr=0.05, p=1.1, momentum=0.5, weight_decay=0.01)


def _dcp_train(model, opt, steps, rank=0):
    for k in steps:
        x = torch.randn(6, 8, generator=torch.Generator().manual_seed(100 * rank + k))
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()


def _dcp_resume_checks(rank=0, wrap=lambda m: m):
    """(fresh state init moved nothing and counted no step, model-first resume bit-identical,
    optimizer-first resume bit-identical)."""
    import copy

    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    model, opt = _dcp_model()
    model = wrap(model)
    w0 = [x.detach().clone() for x in model.parameters()]
    get_optimizer_state_dict(model, opt)  # a fresh optimizer: DCP initialises its state by a zero step
    fresh = all(torch.equal(x, y) for x, y in zip(model.parameters(), w0)) and opt.param_groups[0]["step"] == 0
    fresh = fresh and opt.state[next(model.parameters())]["momentum_buffer"].count_nonzero() == 0
    _dcp_train(model, opt, range(3), rank)
    saved_model = copy.deepcopy(get_model_state_dict(model))
    saved_optim = copy.deepcopy(get_optimizer_state_dict(model, opt))
    _dcp_train(model, opt, range(3, 6), rank)  # the uninterrupted run
    same = []
    for model_first in (True, False):
        model2, opt2 = _dcp_model()
        model2 = wrap(model2)
        if model_first:
            set_model_state_dict(model2, copy.deepcopy(saved_model))
            set_optimizer_state_dict(model2, opt2, copy.deepcopy(saved_optim))
        else:
            set_optimizer_state_dict(model2, opt2, copy.deepcopy(saved_optim))
            set_model_state_dict(model2, copy.deepcopy(saved_model))
        _dcp_train(model2, opt2, range(3, 6), rank)
        same.append(all(torch.equal(x, y) for x, y in zip(model.parameters(), model2.parameters()))
                    and opt2.param_groups[0]["step"] == opt.param_groups[0]["step"] == 6)
    return [bool(fresh)] + same


def test_distributed_checkpoint_state_helpers_move_nothing_and_resume_exactly():
    """``get_optimizer_state_dict`` on a fresh optimizer initialises its state by a step with
    zero gradients and lr 0: no weight moves and no step is counted; after
    ``set_model_state_dict`` and ``set_optimizer_state_dict`` (either order) the run continues
    bit for bit."""
    assert _dcp_resume_checks() == [True, True, True]


def _dcp_worker(rank: int, world: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'store')}", rank=rank,
                            world_size=world)
    try:
        checks = _dcp_resume_checks(rank, wrap=torch.nn.parallel.DistributedDataParallel)
        torch.save(checks, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    from attnopt.runtime import end_process, skip_finalisation

    skip_finalisation()  # gloo threads outlive the group under DDP: see attnopt.runtime
    end_process(0)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="no gloo backend")
def test_distributed_checkpoint_helpers_under_ddp_with_two_processes(tmp_path):
    """The same under DistributedDataParallel with two gloo processes (each rank its own batch)."""
    import time

    import torch.multiprocessing as mp

    workers = mp.spawn(_dcp_worker, args=(2, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not workers.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("the DCP workers did not finish within 300 s")
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == [True, True, True], rank
