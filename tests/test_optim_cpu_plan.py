"""The fused CPU path's per-step plan (grouping and pointer arrays kept between steps) and the
optimizer's per-step fast path: reused only while it holds, rebuilt when anything it rests on
changes, and never different in result from a step that builds everything afresh."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

from attnopt.optim import MirrorDescent, NonFiniteGradientError
from attnopt.optim import _cpu
from optim_reference import HAVE_CC

pytestmark = pytest.mark.skipif(not HAVE_CC, reason="needs a C compiler for the fused CPU kernel")


def _model(seed=0, n=6, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(5, 7, generator=gen) * 0.3).to(dtype)) for _ in range(n)]


def _grads(params, k, gen_seed=1):
    gen = torch.Generator().manual_seed(gen_seed + 1000 * k)
    return [torch.randn(x.shape, generator=gen).to(x.dtype) * 0.1 for x in params]


def _trained(n: int, p: float, steps: int):
    """A model and its fused optimizer after ``steps`` steps with new gradient tensors each."""
    params = _model(n=n)
    opt = MirrorDescent(params, lr=0.05, p=p, fused=True)
    for k in range(steps):
        for x, g in zip(params, _grads(params, k)):
            x.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("p", [1.1, 1.75, 3.0])
def test_the_plan_is_reused_and_equals_a_step_without_caches(p):
    a, b = _model(), _model()
    opt_a = MirrorDescent(a, lr=0.05, p=p, fused=True)
    opt_b = MirrorDescent(b, lr=0.05, p=p, fused=True)
    plans = []
    for k in range(6):
        for x, g in zip(a, _grads(a, k)):
            x.grad = g  # new gradient tensors each step, as zero_grad(set_to_none=True) leaves them
        opt_a.step()
        plans.append(opt_a._plans[0]["cpu"])
        for x, g in zip(b, _grads(b, k)):
            x.grad = g
        opt_b._reset_caches()  # every cache dropped: the plan and the lists are rebuilt
        opt_b._impls = [opt_b._resolve(g) for g in opt_b.param_groups]
        opt_b._known = list(opt_b.param_groups)
        opt_b.step()
        for x, y in zip(a, b):
            assert torch.equal(x, y), k
    # after the first steps (θ built, the exact flags settled) the plan object stays the same
    assert plans[-1] is plans[-2] is plans[-3]
    assert "step" not in opt_a._plans[0]  # a step's gradient pointers do not outlive it


def test_the_plan_is_rebuilt_when_a_gradient_changes_kind_or_a_weight_is_replaced():
    params, opt = _trained(4, 1.75, 3)
    plan = opt._plans[0]["cpu"]
    params[1].grad = _grads(params, 9)[1].t().contiguous().t()  # same shape, not contiguous
    ref = copy.deepcopy(params)
    ref_opt = MirrorDescent(ref, lr=0.05, p=1.75, foreach=False)
    ref_opt.load_state_dict(opt.state_dict())
    for x, y in zip(ref, params):
        x.grad = y.grad.clone()
    opt.step()
    ref_opt.step()
    assert opt._plans[0]["cpu"] is not plan
    assert opt._plans[0]["cpu"].rest == [1]  # the non-contiguous gradient goes to the single-tensor path
    for x, y in zip(params, ref):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=0)
    # a weight replaced by a tensor at another address: new lists, new θ for it, new pointers
    with torch.no_grad():
        params[2].data = torch.full_like(params[2], 0.25)
    for x, g in zip(params, _grads(params, 10)):
        x.grad = g
    opt.step()
    assert opt._plans[0]["cpu"].calls[0].ws[0].data_ptr() in {x.data_ptr() for x in params}
    assert all(c.ws[i].data_ptr() == params[j].data_ptr() for c in opt._plans[0]["cpu"].calls
               for i, j in enumerate(c.idx))
    moved = params[2].detach()
    assert bool((moved != 0.25).all())  # stepped from the new weights, not from the old θ


def test_a_nonfinite_gradient_is_caught_on_the_cached_plan():
    params, opt = _trained(3, 1.1, 3)
    before = [x.detach().clone() for x in params]
    params[2].grad = params[2].grad.clone()
    params[2].grad[1, 3] = float("nan")
    with pytest.raises(NonFiniteGradientError, match="parameter 2"):
        opt.step()
    for x, y in zip(params, before):
        assert torch.equal(x, y)


@pytest.mark.parametrize("between", ["nothing", "state_dict", "add_param_group"])
def test_after_fast_steps_only_an_edited_parameter_is_resynchronised(between, monkeypatch):
    """The fast path records versions in its snapshot only; every reader of the versions (the
    next slow step, state_dict, a new group) must see them, or it takes every parameter for
    edited and rebuilds its θ from the weights (not exact: θ would lose what the weights
    cannot hold)."""
    md = importlib.import_module("attnopt.optim.mirror_descent")
    synced = []
    real = md.sync_dual
    monkeypatch.setattr(md, "sync_dual", lambda param, state, group, i: (synced.append(i), real(param, state, group, i)))
    params, opt = _trained(3, 3.0, 4)
    assert synced == [0, 1, 2] and opt._stale  # θ built at the first step; the last steps took the fast path
    synced.clear()
    if between == "state_dict":
        opt.state_dict()
        assert synced == []
    with torch.no_grad():
        params[0].mul_(2.0)  # an in-place edit after the step
    if between == "add_param_group":
        extra = torch.nn.Parameter(torch.ones(3))
        opt.add_param_group({"params": [extra]})
        extra.grad = torch.ones(3)
    for x, g in zip(params, _grads(params, 5)):
        x.grad = g
    opt.step()
    assert synced[:1] == [0] and 1 not in synced and 2 not in synced


def test_threads_follow_the_work():
    assert _cpu.threads_for(0) == 1
    assert _cpu.threads_for(41 * 256) == 1  # a small model: one thread, no team to wake
    assert _cpu.threads_for(1 << 24) == torch.get_num_threads()
    assert _cpu.threads_for(3 * _cpu.GRAIN) == min(3, torch.get_num_threads())


def _mixed(merge: bool, monkeypatch, steps=5):
    """41 tensors of 16 x 16 at p = 1.75 where the round trip is exact for some and not others
    (the benchmark's small model): with or without the merge of the two kinds into one call."""
    if not merge:
        monkeypatch.setattr(_cpu, "_merge_small", lambda kernel, params: None)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 16, generator=gen) * 0.05) for _ in range(41)]
    grads = [torch.randn(16, 16, generator=gen) * 1e-3 for _ in range(41)]
    opt = MirrorDescent(params, lr=1e-4, p=1.75, fused=True)
    for _ in range(steps):
        for x, g in zip(params, grads):
            x.grad = g.clone()
        opt.step()
    monkeypatch.undo()
    return params, [(c.masked, len(c.idx)) for c in opt._plans[0]["cpu"].calls]


def test_a_small_list_split_only_by_masking_runs_as_one_masked_call_with_the_same_bits(monkeypatch):
    merged, calls = _mixed(True, monkeypatch)
    split, split_calls = _mixed(False, monkeypatch)
    assert sorted(split_calls) == [(False, 3), (True, 38)]  # the case: exact and inexact tensors
    assert calls == [(True, 41)]
    for a, b in zip(merged, split):
        assert torch.equal(a, b)


def test_only_small_groups_are_merged():
    small = [torch.zeros(100) for _ in range(4)]
    large = [torch.zeros(_cpu.GRAIN) for _ in range(2)]
    kernel = {("f32", "f32", False, False): [0, 1], ("f32", "f32", False, True): [2, 3]}
    _cpu._merge_small(kernel, small)
    assert kernel == {("f32", "f32", False, True): [0, 1, 2, 3]}
    kernel = {("f32", "f32", False, False): [0], ("f32", "f32", False, True): [1]}
    _cpu._merge_small(kernel, large)
    assert len(kernel) == 2
