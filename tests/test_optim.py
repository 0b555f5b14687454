"""MirrorDescent: the update against a float64 reference, state handling, numerics, validation.

The eager paths (single-tensor and foreach) and the fused CPU kernel are tested here; the
compiled and Triton paths in test_optim_paths.py, DDP in test_optim_ddp.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from attnopt.mirror import grad_psi, grad_psi_star, lp_norm
from attnopt.optim import MirrorDescent, NonFiniteGradientError, mirror_descent
from optim_reference import HAVE_CC, dual_tolerance, grads_like, make_params, reference_step

P_VALUES = [1.01, 1.1, 1.4, 1.5, 1.75, 2.0, 3.0, 4.0]
EAGER = [
    pytest.param(dict(foreach=False), id="single"),
    pytest.param(dict(foreach=True), id="foreach"),
    # the C kernel (float32/bfloat16; float64 tensors take its single-tensor fallback)
    pytest.param(dict(fused=True), id="fused-cpu",
                 marks=pytest.mark.skipif(not HAVE_CC, reason="no C compiler for the fused CPU kernel")),
]


# --------------------------------------------------------------------------- one step


@pytest.mark.parametrize("path", EAGER)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalized"])
@pytest.mark.parametrize("p", P_VALUES)
def test_one_step_float64_equals_formula(p, normalize, path):
    params = make_params((7, 5), (11,), dtype=torch.float64)
    w0 = [x.detach().clone() for x in params]
    grads = grads_like(params)
    for x, g in zip(params, grads):
        x.grad = g.clone()
    MirrorDescent(params, lr=0.05, p=p, normalize=normalize, **path).step()
    for x, w, g in zip(params, w0, grads):
        ref, _ = reference_step(w, g, lr=0.05, p=p, normalize=normalize)
        torch.testing.assert_close(x.detach(), ref, rtol=1e-12 * max(1.0, 1.0 / (p - 1.0)), atol=1e-300)


@pytest.mark.parametrize("path", EAGER)
@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalized"])
@pytest.mark.parametrize("p", P_VALUES)
def test_one_step_float32_within_rounding_of_float64(p, normalize, path):
    params = make_params((40, 30), (64,))
    w0 = [x.detach().clone() for x in params]
    grads = grads_like(params)
    for x, g in zip(params, grads):
        x.grad = g.clone()
    lr = 0.01
    MirrorDescent(params, lr=lr, p=p, normalize=normalize, **path).step()
    for x, w, g in zip(params, w0, grads):
        ref, _ = reference_step(w, g, lr=lr, p=p, normalize=normalize)
        gd = g.double() / (lp_norm(g.double(), p / (p - 1)) if normalize else 1.0)
        tol = dual_tolerance(ref, w, lr * gd, p)
        err = (x.detach().double() - ref).abs()
        assert bool((err <= tol).all()), f"max excess {(err - tol).max().item():.3g}"


@pytest.mark.parametrize("path", EAGER)
def test_momentum_weight_decay_maximize_match_reference(path):
    p, lr, mu, wd = 1.5, 0.03, 0.9, 0.2
    params = make_params((6, 4), (9,), dtype=torch.float64)
    opt = MirrorDescent(params, lr=lr, p=p, normalize=True, momentum=mu, weight_decay=wd, maximize=True, **path)
    ws = [x.detach().clone() for x in params]
    bufs = [None] * len(params)
    for k in range(5):
        grads = grads_like(params, seed=10 + k)
        for x, g in zip(params, grads):
            x.grad = g
        opt.step()
        for i, g in enumerate(grads):
            ws[i], bufs[i] = reference_step(ws[i], g, lr=lr, p=p, normalize=True, momentum=mu, buf=bufs[i],
                                            weight_decay=wd, maximize=True)
    for x, w in zip(params, ws):
        torch.testing.assert_close(x.detach(), w, rtol=1e-11, atol=1e-14)


def test_paths_agree_float32_and_bfloat16():
    for dtype in (torch.float32, torch.bfloat16):
        results = []
        for path in (dict(foreach=False), dict(foreach=True)):
            params = make_params((20, 10), (33,), dtype=dtype)
            opt = MirrorDescent(params, lr=0.02, p=1.3, momentum=0.5, weight_decay=0.1, normalize=True, **path)
            for k in range(3):
                for x, g in zip(params, grads_like(params, seed=k)):
                    x.grad = g
                opt.step()
            results.append([x.detach().float() for x in params])
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=2e-6 if dtype == torch.float32 else 1e-2, atol=1e-7)


# --------------------------------------------------------------------------- p = 2 is SGD


@pytest.mark.parametrize("path", EAGER)
@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.1}, {"momentum": 0.9}], ids=["plain", "wd", "momentum"])
def test_p2_equals_sgd(extra, path):
    ours = make_params((8, 3), (5,))
    theirs = make_params((8, 3), (5,))
    opt = MirrorDescent(ours, lr=0.1, p=2.0, **extra, **path)
    sgd = torch.optim.SGD(theirs, lr=0.1, **extra)
    for k in range(4):
        for a, b, g in zip(ours, theirs, grads_like(ours, seed=k)):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert "dual" not in opt.state[ours[0]]  # θ ≡ w: no copy kept


# --------------------------------------------------------------------------- low precision


def test_bfloat16_with_float32_dual_tracks_float32_run():
    """200 small steps: bf16 params keep up with an fp32 run; recomputing θ from bf16 does not."""
    p, lr, steps = 1.5, 5e-4, 200
    ref = make_params((64, 32))[0]
    bf = torch.nn.Parameter(ref.detach().to(torch.bfloat16))
    naive = ref.detach().to(torch.bfloat16)
    opt_ref = MirrorDescent([ref], lr=lr, p=p)
    opt_bf = MirrorDescent([bf], lr=lr, p=p)
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        g = torch.randn(ref.shape, generator=gen) * 0.1 + 0.05
        ref.grad, bf.grad = g.clone(), g.to(torch.bfloat16)
        opt_ref.step()
        opt_bf.step()
        theta = grad_psi(naive.float(), p) - lr * g.to(torch.bfloat16).float()
        naive = grad_psi_star(theta, p).to(torch.bfloat16)
    target = ref.detach()
    ulp = 2.0**-7 * target.abs()  # one bf16 ulp (8 significant bits)
    err_ours = (bf.detach().float() - target).abs()
    err_naive = (naive.float() - target).abs()
    assert bool((err_ours <= ulp + 1e-30).all())
    assert opt_bf.state[bf]["dual"].dtype == torch.float32
    # the naive recomputation loses the sub-ulp updates and drifts far beyond one ulp
    assert (err_naive > ulp).float().mean() > 0.5
    assert err_naive.mean() > 10 * err_ours.mean()


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [1.01, 1.1])
@pytest.mark.parametrize("path", EAGER)
def test_extreme_weights_come_back(p, dtype, path):
    mags = torch.logspace(-30, 3, 67, dtype=torch.float64)
    w = torch.nn.Parameter(torch.cat([mags, -mags]).to(dtype))
    w0 = w.detach().clone()
    opt = MirrorDescent([w], lr=0.1, p=p, **path)
    w.grad = torch.zeros_like(w)
    opt.step()  # zero gradient: W = ∇ψ*(∇ψ(W)) must come back
    if dtype == torch.bfloat16:
        assert torch.equal(w.detach(), w0)
    else:
        rel = ((w.detach().double() - w0.double()).abs() / w0.double().abs()).max().item()
        assert rel <= 4 * 2.0**-24 / (p - 1.0)
    # a real step: finite, and close to the float64 formula
    w.grad = (torch.linspace(-1, 1, w.numel(), dtype=torch.float64) * 1e-3).to(dtype)
    before = w.detach().clone()
    opt.step()
    assert bool(torch.isfinite(w).all())
    ref, _ = reference_step(before, w.grad, lr=0.1, p=p)
    tol = dual_tolerance(ref, before, 0.1 * w.grad.double(), p, rtol=2.0**-8 if dtype == torch.bfloat16 else 1e-6)
    assert bool(((w.detach().double() - ref).abs() <= tol).all())


@pytest.mark.parametrize("path", EAGER)
def test_overflow_is_clamped_not_inf(path):
    big = torch.finfo(torch.float32).max / 2
    w = torch.nn.Parameter(torch.tensor([big, -big, 1.0]))
    opt = MirrorDescent([w], lr=1.0, p=1.01, **path)
    w.grad = torch.tensor([-1.0, 1.0, 0.0])  # push both big weights outward past float32's range
    opt.step()
    assert bool(torch.isfinite(w).all())
    assert w[0].item() == torch.finfo(torch.float32).max and w[1].item() == -torch.finfo(torch.float32).max


def test_large_p_warns_when_float32_dual_cannot_hold_the_weights():
    w = torch.nn.Parameter(torch.tensor([1e-30, 1.0, 2.0]))
    opt = MirrorDescent([w], lr=0.1, p=10.0)
    w.grad = torch.zeros_like(w)
    with pytest.warns(RuntimeWarning, match="float64"):
        opt.step()
    assert bool(torch.isfinite(w).all())
    w64 = torch.nn.Parameter(torch.tensor([1e-30, 1.0, 2.0]))
    opt = MirrorDescent([w64], lr=0.1, p=10.0, dual_dtype=torch.float64)
    w64.grad = torch.zeros_like(w64)
    opt.step()
    assert w64[0].item() == pytest.approx(1e-30, rel=1e-6)


@pytest.mark.parametrize("path", EAGER)
@pytest.mark.parametrize("p", [1.1, 1.5, 3.0])
def test_zero_weights_and_zero_gradients(p, path):
    w = torch.nn.Parameter(torch.zeros(4, 3))
    opt = MirrorDescent([w], lr=0.1, p=p, normalize=True, eps=0.0, **path)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(w.detach(), torch.zeros(4, 3))
    g = torch.randn(4, 3, dtype=torch.float64)
    w.grad = g.float()
    opt.step()
    ref, _ = reference_step(torch.zeros(4, 3), g.float(), lr=0.1, p=p, normalize=True)
    torch.testing.assert_close(w.detach().double(), ref, rtol=2e-6 / min(1.0, p - 1.0), atol=1e-12)


# --------------------------------------------------------------------------- non-finite gradients


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_raise_names_parameter_and_changes_nothing(bad):
    params = make_params((3, 2), (4, 5))
    opt = MirrorDescent(params, lr=0.1, p=1.5)
    for x, g in zip(params, grads_like(params)):
        x.grad = g
    opt.step()
    before = [x.detach().clone() for x in params]
    dual_before = opt.state[params[1]]["dual"].clone()
    params[1].grad[2, 3] = bad
    with pytest.raises(NonFiniteGradientError, match=r"parameter 1 .*shape \(4, 5\).*step 2"):
        opt.step()
    for x, b in zip(params, before):
        assert torch.equal(x.detach(), b)
    assert torch.equal(opt.state[params[1]]["dual"], dual_before)


def test_nonfinite_skip_skips_whole_step_and_counts():
    params = make_params((3, 2), (4,))
    opt = MirrorDescent(params, lr=0.1, p=1.5, momentum=0.9, nonfinite="skip")
    for x, g in zip(params, grads_like(params)):
        x.grad = g
    opt.step()
    snap = copy.deepcopy(opt.state_dict())
    before = [x.detach().clone() for x in params]
    params[0].grad[0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1 and opt.param_groups[0]["skipped_steps"] == 1
    for x, b in zip(params, before):
        assert torch.equal(x.detach(), b)
    assert torch.equal(opt.state[params[1]]["momentum_buffer"], snap["state"][1]["momentum_buffer"])
    params[0].grad[0, 0] = 0.0
    opt.step()  # finite again: steps resume
    assert not torch.equal(params[0].detach(), before[0])
    assert opt.skipped_steps == 1 and opt.param_groups[0]["step"] == 2


def test_huge_finite_gradients_are_not_a_false_alarm():
    w = torch.nn.Parameter(torch.ones(4))
    opt = MirrorDescent([w], lr=1e-40, p=2.0)
    w.grad = torch.full((4,), torch.finfo(torch.float32).max)  # the sum overflows; no NaN anywhere
    opt.step()
    assert bool(torch.isfinite(w).all())


def test_nonfinite_ignore_does_not_check():
    w = torch.nn.Parameter(torch.ones(3))
    opt = MirrorDescent([w], lr=0.1, p=1.5, nonfinite="ignore")
    w.grad = torch.tensor([float("nan"), 0.0, 0.0])
    opt.step()
    assert math.isnan(w[0].item()) and w[1].item() == 1.0


# --------------------------------------------------------------------------- state and resync


def _train(params, opt, steps, seed=0):
    for k in range(steps):
        for x, g in zip(params, grads_like(params, seed=seed + k)):
            x.grad = g
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_keeps_dual(dtype):
    kw = dict(lr=0.01, p=1.2, momentum=0.5)
    a = make_params((10, 4), (6,), dtype=dtype)
    opt_a = MirrorDescent(a, **kw)
    _train(a, opt_a, 3)
    sd = copy.deepcopy(opt_a.state_dict())
    assert sd["state"][0]["dual"].dtype == torch.float32
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    opt_b = MirrorDescent(b, **kw)
    opt_b.load_state_dict(sd)
    assert opt_b.state[b[0]]["dual"].dtype == torch.float32
    assert torch.equal(opt_b.state[b[0]]["dual"], opt_a.state[a[0]]["dual"])
    _train(a, opt_a, 2, seed=50)
    _train(b, opt_b, 2, seed=50)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for x, y in zip(a, b):
        assert torch.equal(opt_a.state[x]["dual"], opt_b.state[y]["dual"])


def test_resync_after_in_place_edit():
    p, lr = 1.5, 0.05
    w = make_params((5, 5), dtype=torch.float64)[0]
    opt = MirrorDescent([w], lr=lr, p=p)
    _train([w], opt, 2)
    with torch.no_grad():
        w.mul_(0.5)
    edited = w.detach().clone()
    g = grads_like([w], seed=99)[0]
    w.grad = g
    opt.step()
    ref, _ = reference_step(edited, g, lr=lr, p=p)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-300)


def test_resync_after_model_load_state_dict():
    p, lr = 1.75, 0.05
    model = torch.nn.Linear(4, 3).double()
    other = torch.nn.Linear(4, 3).double()
    opt = MirrorDescent(model.parameters(), lr=lr, p=p)
    _train(list(model.parameters()), opt, 2)
    model.load_state_dict(other.state_dict())
    grads = grads_like(list(model.parameters()), seed=7)
    for x, g in zip(model.parameters(), grads):
        x.grad = g
    opt.step()
    for x, w, g in zip(model.parameters(), other.parameters(), grads):
        ref, _ = reference_step(w.detach(), g, lr=lr, p=p)
        torch.testing.assert_close(x.detach(), ref, rtol=1e-12, atol=1e-300)


def test_partial_edit_resyncs_only_edited_entries_and_noop_edit_keeps_dual():
    w = torch.nn.Parameter(torch.full((6,), 0.5, dtype=torch.bfloat16))
    opt = MirrorDescent([w], lr=1e-4, p=1.5)
    _train([w], opt, 3)
    theta = opt.state[w]["dual"].clone()
    with torch.no_grad():
        w.mul_(1.0)  # bumps the version, changes nothing
    _train([w], opt, 0)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(opt.state[w]["dual"], theta)  # sub-ulp information of θ kept
    with torch.no_grad():
        w[0] = 2.0
    opt.step()
    new = opt.state[w]["dual"]
    assert new[0].item() == pytest.approx(2.0**0.5, rel=1e-6)
    assert torch.equal(new[1:], theta[1:])


def test_changing_p_of_a_group_rebuilds_dual():
    w = make_params((4,), dtype=torch.float64)[0]
    opt = MirrorDescent([w], lr=0.1, p=1.5)
    _train([w], opt, 1)
    opt.param_groups[0]["p"] = 3.0
    before = w.detach().clone()
    g = grads_like([w], seed=5)[0]
    w.grad = g
    opt.step()
    ref, _ = reference_step(before, g, lr=0.1, p=3.0)
    torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("path", EAGER)
def test_every_change_between_steps_is_seen(path):
    """The per-group fast path (lists reused while nothing changed) must notice each way a
    parameter can change between steps: ``.data`` replaced, an in-place edit, a gradient that
    disappears or comes back, momentum switched on, a sparse or non-contiguous gradient."""
    a, b = make_params((6, 5), dtype=torch.float64), make_params((7,), dtype=torch.float64)
    w, v = a[0], b[0]
    opt = MirrorDescent([w, v], lr=0.05, p=1.5, **path)

    def step_and_check(grads):
        before = [x.detach().clone() for x in (w, v)]
        for x, g in zip((w, v), grads):
            x.grad = g
        opt.step()
        for x, x0, g in zip((w, v), before, grads):
            want = x0 if g is None else reference_step(x0, g, lr=0.05, p=1.5)[0]
            torch.testing.assert_close(x.detach(), want, rtol=1e-12, atol=1e-300)

    g = lambda x, k: grads_like([x], seed=k)[0]  # noqa: E731
    step_and_check([g(w, 1), g(v, 2)])
    step_and_check([g(w, 3), g(v, 4)])  # the fast path
    w.data = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 4)  # replaced, new shape
    step_and_check([g(w, 5), g(v, 6)])
    with torch.no_grad():
        v.mul_(-2.0)  # in-place edit
    step_and_check([g(w, 7), g(v, 8)])
    step_and_check([g(w, 9), None])  # v's gradient disappears: v is left alone
    step_and_check([g(w, 10), g(v, 11)])  # and comes back
    opt.param_groups[0]["momentum"] = 0.5  # a buffer appears: the lists must be rebuilt
    w.grad, v.grad = g(w, 12), g(v, 13)
    opt.step()
    assert set(opt.state[w]) >= {"dual", "momentum_buffer"}
    opt.param_groups[0]["momentum"] = 0.0
    w.grad, v.grad = g(w, 14), g(v, 15)
    opt.step()
    w.grad, v.grad = g(w, 16).to_sparse(), g(v, 17)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    step_and_check([g(w, 18).t().contiguous().t(), g(v, 19)])  # a dense, non-contiguous gradient
    step_and_check([g(w, 20), g(v, 21)])
    w.grad, v.grad = g(w, 22).to_sparse(), g(v, 23)  # and on the fast path
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    # on the fast path, a non-contiguous gradient before a vanished one: both are seen
    step_and_check([g(w, 24).t().contiguous().t(), None])


# --------------------------------------------------------------------------- optimizer plumbing


def test_per_group_p_and_lr_and_params_without_grad():
    a, b, c = make_params((3, 3), (4,), (2,), dtype=torch.float64)
    opt = MirrorDescent([{"params": [a], "p": 3.0, "lr": 0.2}, {"params": [b, c]}], lr=0.05, p=1.25)
    wa, wb, wc = a.detach().clone(), b.detach().clone(), c.detach().clone()
    ga, gb = grads_like([a, b], seed=2)
    a.grad, b.grad = ga, gb  # c has no gradient
    opt.step()
    torch.testing.assert_close(a.detach(), reference_step(wa, ga, lr=0.2, p=3.0)[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(b.detach(), reference_step(wb, gb, lr=0.05, p=1.25)[0], rtol=1e-12, atol=0)
    assert torch.equal(c.detach(), wc)
    assert c not in opt.state or "dual" not in opt.state[c]


@pytest.mark.parametrize("path", [{}, {"foreach": True}, {"foreach": False}, {"capturable": True}],
                         ids=["default", "foreach", "single", "capturable"])
@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
def test_lr_scheduler_drives_the_step_size(tensor_lr, path):
    p, wd = 1.5, (0.2 if tensor_lr else 0.0)
    w = make_params((5,), dtype=torch.float64)[0]
    opt = MirrorDescent([w], lr=torch.tensor(0.1, dtype=torch.float64) if tensor_lr else 0.1, p=p,
                        weight_decay=wd, **path)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref = w.detach().clone()
    for k in range(3):
        g = grads_like([w], seed=k)[0]
        w.grad = g
        opt.step()
        ref, _ = reference_step(ref, g, lr=0.1 * 0.5**k, p=p, weight_decay=wd)
        sched.step()
    torch.testing.assert_close(w.detach(), ref, rtol=1e-12, atol=0)


def test_closure_loss_is_returned():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = MirrorDescent([w], lr=0.1, p=1.5)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(5.0)
    assert w.abs().sum().item() < 3.0


def test_functional_core_matches_optimizer():
    params = make_params((4, 3), dtype=torch.float64)
    grads = grads_like(params)
    duals = [grad_psi(x.detach(), 1.5) for x in params]
    w = [x.detach().clone() for x in params]
    mirror_descent(w, grads, duals, [None], lr=0.1, p=1.5, momentum=0.9)
    ref, _ = reference_step(params[0].detach(), grads[0], lr=0.1, p=1.5, momentum=0.9)
    torch.testing.assert_close(w[0], ref, rtol=1e-12, atol=0)


def test_deepcopy_and_pickle_round_trip():
    import pickle

    params = make_params((3,))
    opt = MirrorDescent(params, lr=0.1, p=1.5, nonfinite="skip")
    _train(params, opt, 1)
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.nonfinite == "skip" and clone.param_groups[0]["p"] == 1.5


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=1.0), "p"),
        (dict(p=0.5), "p"),
        (dict(p=float("nan")), "p"),
        (dict(p=float("inf")), "p"),
        (dict(lr=-0.1), "learning rate"),
        (dict(lr=float("inf")), "learning rate"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(eps=-1e-8), "eps"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(nonfinite="zero"), "nonfinite"),
        (dict(foreach=True, compiled=True), "at most one"),
    ],
)
def test_invalid_hyper_parameters(kwargs, match):
    base = dict(lr=0.1, p=1.5)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MirrorDescent([torch.nn.Parameter(torch.ones(2))], **base)


def test_invalid_group_and_types():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="p"):
        MirrorDescent([{"params": [w], "p": 0.9}], lr=0.1, p=1.5)
    with pytest.raises(TypeError, match="floating"):
        MirrorDescent([torch.ones(2, dtype=torch.int64)], lr=0.1, p=1.5)
    with pytest.raises(TypeError, match="dual_dtype"):
        MirrorDescent([w], lr=0.1, p=1.5, dual_dtype=torch.int32)
    with pytest.raises(TypeError):
        MirrorDescent([w], lr="0.1", p=1.5)
