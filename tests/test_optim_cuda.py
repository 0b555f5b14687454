"""MirrorDescent on a CUDA device: every path (single, foreach, compiled, fused Triton kernel).

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest
tests/test_optim_cuda.py``.  The same references as the CPU tests: the float64 formula,
the single-tensor path, a float32 run for bf16 parameters.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from attnopt.optim import MirrorDescent, NonFiniteGradientError

from optim_reference import dual_tolerance, grads_like, make_params, reference_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HAS_TRITON = importlib.util.find_spec("triton") is not None
PATHS = [
    pytest.param(dict(foreach=False), id="single"),
    pytest.param(dict(foreach=True), id="foreach"),
    pytest.param(dict(compiled=True), id="compiled"),
    pytest.param(dict(fused=True), id="fused",
                 marks=pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")),
]
FUSED = dict(fused=True)


def cuda_params(*shapes, dtype=torch.float32, seed=0):
    return [torch.nn.Parameter(x.detach().cuda()) for x in make_params(*shapes, dtype=dtype, seed=seed)]


def run(params, steps, **kw):
    opt = MirrorDescent(params, **kw)
    for k in range(steps):
        for x, g in zip(params, grads_like(params, seed=100 + k)):
            x.grad = g.to(x.device)
        opt.step()
    return opt


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("p", [1.01, 1.1, 1.5, 1.75, 3.0, 4.0])
def test_one_float32_step_against_float64_formula(p, path):
    params = cuda_params((300, 70), (1500,), (3,))
    w0 = [x.detach().cpu().clone() for x in params]
    grads = grads_like(params)
    for x, g in zip(params, grads):
        x.grad = g.cuda()
    MirrorDescent(params, lr=0.01, p=p, **path).step()
    for x, w, g in zip(params, w0, grads):
        ref, _ = reference_step(w, g, lr=0.01, p=p)
        tol = dual_tolerance(ref, w, 0.01 * g.double(), p)
        err = (x.detach().cpu().double() - ref).abs()
        assert bool((err <= tol).all()), f"max excess {(err - tol).max().item():.3g}"


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("kw", [
    dict(lr=0.02, p=1.3),
    dict(lr=0.02, p=3.0, normalize=True, momentum=0.9, weight_decay=0.1),
    dict(lr=0.02, p=1.5, maximize=True),
    dict(lr=0.02, p=2.0, momentum=0.5),
    dict(lr=0.02, p=1.1, weight_decay=0.05),
], ids=["p1.3", "p3-all-options", "p1.5-maximize", "p2-momentum", "p1.1-decay"])
def test_fused_kernel_matches_single_tensor_path(dtype, kw):
    a = cuda_params((70, 30), (1500,), (3,), (4097,), dtype=dtype)  # several blocks, ragged tails
    b = cuda_params((70, 30), (1500,), (3,), (4097,), dtype=dtype)
    opt = run(a, 3, fused=True, **kw)
    run(b, 3, foreach=False, **kw)
    rtol = {torch.float32: 3e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    atol = {torch.float32: 1e-7, torch.bfloat16: 1e-6, torch.float64: 1e-14}[dtype]
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    if kw["p"] != 2.0 or dtype == torch.bfloat16:
        assert opt.state[a[0]]["dual"].dtype == torch.promote_types(dtype, torch.float32)


def bf16_tracking_error(path, device, steps=200):
    """Max |w_bf16 − w_fp32| / (one bf16 ulp of w_fp32) after ``steps`` small steps from the
    same bf16-exact start with the same bf16-exact gradients: θ is float32 in both runs, so
    the bf16 weights are the fp32 run's weights rounded to bf16 (≤ half an ulp)."""
    p, lr = 1.5, 5e-4
    gen = torch.Generator().manual_seed(0)
    w0 = (torch.randn(256, 64, generator=gen) * 0.1).to(torch.bfloat16)
    bf = [torch.nn.Parameter(w0.to(device))]
    ref = [torch.nn.Parameter(w0.float().to(device))]
    opt_bf = MirrorDescent(bf, lr=lr, p=p, **path)
    opt_ref = MirrorDescent(ref, lr=lr, p=p, **path)
    for _ in range(steps):
        g = (torch.randn(w0.shape, generator=gen) * 0.1 + 0.05).to(torch.bfloat16).to(device)
        ref[0].grad, bf[0].grad = g.float(), g
        opt_ref.step()
        opt_bf.step()
    assert opt_bf.state[bf[0]]["dual"].dtype == torch.float32
    target = ref[0].detach().double()
    ulp = 2.0**-7 * target.abs().clamp_min(1e-30)
    return float(((bf[0].detach().double() - target).abs() / ulp).max())


@pytest.mark.parametrize("path", PATHS)
def test_bfloat16_parameters_track_a_float32_run(path):
    assert bf16_tracking_error(path, "cuda") <= 0.5 + 1e-3


@pytest.mark.parametrize("path", [p for p in PATHS if p.id in ("compiled", "fused")])
@pytest.mark.parametrize("p", [1.01, 1.1])
def test_extreme_weights_zero_gradient_and_overflow(p, path):
    mags = torch.logspace(-30, 3, 34, dtype=torch.float64)
    w = torch.nn.Parameter(torch.cat([mags, -mags, torch.zeros(2, dtype=torch.float64)]).float().cuda())
    w0 = w.detach().cpu().clone()
    opt = MirrorDescent([w], lr=0.1, p=p, **path)
    w.grad = torch.zeros_like(w)
    opt.step()  # zero gradient: the weights come back, zeros stay zeros
    got = w.detach().cpu().double()
    rel = (got - w0.double()).abs() / w0.double().abs().clamp_min(1e-300)
    bound = 4 * 2.0**-24 * (1.0 / (p - 1.0) + w0.double().abs().clamp_min(1e-300).log().abs())
    assert bool((rel <= bound).all())
    assert torch.equal(got[-2:], torch.zeros(2, dtype=torch.float64))
    big = torch.finfo(torch.float32).max
    with torch.no_grad():
        w[0] = big / 2
    g = torch.linspace(-1, 1, w.numel(), device="cuda") * 1e-3
    g[0] = -1e30  # pushes w[0] past float32's range: clamped, not inf
    w.grad = g
    opt.step()
    assert bool(torch.isfinite(w).all()) and w[0].item() == big


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_changes_nothing(bad, path):
    """The eager paths check on the host and raise at once; the fused path checks on the
    device (no synchronisation), skips the step there and raises at check_nonfinite() or at
    the next step, skipping every step until then."""
    params = cuda_params((50, 20), (20,))
    opt = MirrorDescent(params, lr=0.01, p=1.5, **path)
    run_grads = grads_like(params)
    for x, g in zip(params, run_grads):
        x.grad = g.cuda()
    opt.step()
    before = [x.detach().clone() for x in params]
    params[1].grad[3] = bad
    with pytest.raises(NonFiniteGradientError, match="parameter 1"):
        opt.step()
        opt.check_nonfinite()
    for x, y in zip(params, before):
        assert torch.equal(x.detach(), y)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_default_step_is_the_fused_kernel_without_a_host_synchronisation():
    params = cuda_params((300, 70), (1500,), (3,))
    opt = MirrorDescent(params, lr=0.01, p=1.75, momentum=0.5)
    assert opt.implementation == "fused-triton"
    for k in range(6):
        for x, g in zip(params, grads_like(params, seed=k)):
            x.grad = g.cuda()
        if k < 2:
            opt.step()  # the first steps build θ, the plan and the device record
            continue
        torch.cuda.set_sync_debug_mode("error")  # any synchronising call now raises
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt.check_nonfinite() == 0 and opt.param_groups[0]["step"] == 6


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("p", [1.1, 1.75, 3.0])
def test_whole_training_step_captured_in_a_cuda_graph_replays_like_eager(p):
    """capturable=True: forward, backward and opt.step() captured in one CUDA graph replay with the
    result of the same steps run eagerly; lr lives in a tensor (changed between replays), and a
    NaN batch is skipped on the device inside the graph."""
    import copy

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).cuda()
    models = {"eager": copy.deepcopy(base), "graph": copy.deepcopy(base)}
    lrs = {k: torch.tensor(0.01, device="cuda") for k in models}
    opts = {k: MirrorDescent(m.parameters(), lr=lrs[k], p=p, momentum=0.9, weight_decay=0.01, capturable=True,
                             nonfinite="skip") for k, m in models.items()}
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 64, generator=gen).cuda(), torch.randn(32, 1, generator=gen).cuda()) for _ in range(8)]
    data[5][0][0, 0] = float("nan")

    def train_step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    static_x, static_y = data[0][0].clone(), data[0][1].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as for any capture
        for _ in range(3):
            train_step(models["graph"], opts["graph"], static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opts["graph"].zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        torch.nn.functional.mse_loss(models["graph"](static_x), static_y).backward()
        opts["graph"].step()
    for _ in range(3):
        train_step(models["eager"], opts["eager"], *data[0])
    for k, (x, y) in enumerate(data[1:], start=1):
        if k == 4:
            for lr in lrs.values():
                lr.fill_(0.005)
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        train_step(models["eager"], opts["eager"], x, y)
    torch.cuda.synchronize()
    for a, b in zip(models["eager"].parameters(), models["graph"].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opts["eager"].check_nonfinite() == 1
    assert opts["graph"]._records[torch.device("cuda", 0)].read()[0] == 1  # the replayed NaN batch was skipped


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_fused_state_dict_round_trip_and_resync():
    a = cuda_params((64, 32), (32,))
    opt = run(a, 3, lr=0.01, p=1.1, **FUSED)
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    opt_b = MirrorDescent(b, lr=0.01, p=1.1, **FUSED)
    opt_b.load_state_dict(opt.state_dict())
    for k in range(3):
        for params in (a, b):
            for x, g in zip(params, grads_like(params, seed=7 + k)):
                x.grad = g.cuda()
        opt.step()
        opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with torch.no_grad():  # an edit from outside: the dual follows the new weights
        a[0].mul_(0.5)
    edited = a[0].detach().clone()
    a[0].grad = torch.zeros_like(a[0])
    a[1].grad = torch.zeros_like(a[1])
    opt.step()
    torch.testing.assert_close(a[0].detach(), edited, rtol=1e-5, atol=1e-9)
