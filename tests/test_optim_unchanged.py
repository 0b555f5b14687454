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
