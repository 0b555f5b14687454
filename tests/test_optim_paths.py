"""The compiled (torch.compile) and fused (Triton) paths agree with the eager ones.

Compilation is slow on a small CPU, so the compiled path is exercised on few graphs: one
with every option on (general exponent), and one optimizer whose groups take the sqrt,
integer-power, half-integer-power and p = 2 routes.  The Triton kernel runs in Triton's CPU interpreter
(``TRITON_INTERPRET=1``) in a subprocess, skipped when Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnopt.optim import MirrorDescent

from optim_reference import dual_tolerance, grads_like, make_params, reference_step


def _run(params, steps, groups=None, **kw):
    opt = MirrorDescent(params if groups is None else groups, **kw)
    for k in range(steps):
        for x, g in zip(params, grads_like(params, seed=100 + k)):
            x.grad = g
        opt.step()
    return opt


def test_compiled_general_exponent_all_options():
    kw = dict(lr=0.02, p=1.3, normalize=True, momentum=0.5, weight_decay=0.1)
    a = make_params((33, 17), (5,))
    b = make_params((33, 17), (5,))
    _run(a, 3, compiled=True, **kw)
    _run(b, 3, foreach=False, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=3e-6, atol=1e-8)


def test_compiled_one_step_against_float64():
    p, lr = 1.75, 0.01
    params = make_params((40, 30))
    w0 = params[0].detach().clone()
    g = grads_like(params)[0]
    params[0].grad = g.clone()
    MirrorDescent(params, lr=lr, p=p, compiled=True).step()
    ref, _ = reference_step(w0, g, lr=lr, p=p)
    tol = dual_tolerance(ref, w0, lr * g.double(), p)
    assert bool(((params[0].detach().double() - ref).abs() <= tol).all())


@pytest.mark.slow
def test_compiled_sqrt_integer_halfinteger_exponents_and_p2():
    groups = lambda ps: [{"params": [x], "p": p} for x, p in zip(ps, (3.0, 1.1, 1.4, 2.0))]  # noqa: E731
    a = make_params((9, 8), (7,), (5, 2), (6,))
    b = make_params((9, 8), (7,), (5, 2), (6,))
    _run(a, 2, groups(a), lr=0.05, p=1.5, compiled=True)
    _run(b, 2, groups(b), lr=0.05, p=1.5, foreach=False)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)


_TRITON_SCRIPT = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("ignore")
    from attnopt.optim import MirrorDescent
    from optim_reference import grads_like, make_params

    def fused_and_single(a, b, **kw):
        return MirrorDescent(a, fused=True, **kw), MirrorDescent(b, foreach=False, **kw)

    def assert_same(a, b):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=3e-6, atol=1e-7)

    def run(params, **kw):
        opt = MirrorDescent(params, **kw)
        for k in range(3):
            for x, g in zip(params, grads_like(params, seed=k)):
                x.grad = g
            opt.step()
        return opt

    configs = [
        dict(lr=0.02, p=1.3),
        dict(lr=0.02, p=3.0, normalize=True, momentum=0.9, weight_decay=0.1),
        dict(lr=0.02, p=1.5, maximize=True),
        dict(lr=0.02, p=2.0, momentum=0.5),
        dict(lr=0.02, p=1.1),  # e = 10: binary powering
        dict(lr=0.02, p=1.4, weight_decay=0.1),  # e = 2.5: a square root times a square
    ]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for kw in configs:
            a = make_params((70, 30), (1500,), (3,), dtype=dtype)  # several blocks, ragged tails
            b = make_params((70, 30), (1500,), (3,), dtype=dtype)
            oa = run(a, fused=True, **kw)
            run(b, foreach=False, **kw)
            rtol = {torch.float32: 3e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
            for x, y in zip(a, b):
                atol = {torch.float32: 1e-7, torch.bfloat16: 1e-6, torch.float64: 1e-14}[dtype]
                torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
            if kw["p"] != 2.0 or dtype == torch.bfloat16:
                assert oa.state[a[0]]["dual"].dtype == torch.promote_types(dtype, torch.float32)
    # the plan (device tables of addresses) is reused across steps and rebuilt when needed:
    # an in-place edit from outside, a parameter whose gradient comes and goes
    a = make_params((40, 30), (7,))
    b = make_params((40, 30), (7,))
    oa, ob = fused_and_single(a, b, lr=0.02, p=1.3)
    for k in range(6):
        for params in (a, b):
            for j, (x, g) in enumerate(zip(params, grads_like(params, seed=20 + k))):
                x.grad = None if (j == 1 and k == 2) else g
            if k == 4:
                with torch.no_grad():
                    params[0].mul_(0.5)
            if k == 5:
                params[1].data = torch.linspace(-1, 1, 12).reshape(3, 4)  # replaced: new storage and shape
                params[1].grad = grads_like([params[1]], seed=99)[0]
        oa.step()
        ob.step()
        assert_same(a, b)
    # a parameter that stops getting gradients: after one full check the fast path is back
    for k in range(3):
        a[0].grad, a[1].grad = grads_like(a[:1], seed=40 + k)[0], None
        oa.step()
    snap = oa._snapshots[0]
    assert snap.has_grad == [True, False] and snap.batch.params is oa._plans[0]["plan"].source
    # the per-step table of gradient addresses and scalars: reused while both repeat, rebuilt
    # when a gradient moves or the learning rate changes
    a = make_params((40, 30), (7,))
    b = make_params((40, 30), (7,))
    oa, ob = fused_and_single(a, b, lr=0.02, p=1.3)
    ga, gb = grads_like(a, seed=50), grads_like(b, seed=50)
    for x, g in zip(a, ga):
        x.grad = g
    for x, g in zip(b, gb):
        x.grad = g
    tables = []
    for k in range(5):
        if k == 2:
            a[0].grad, b[0].grad = ga[0] * 2, gb[0] * 2  # new storage
        if k == 3:
            oa.param_groups[0]["lr"] = ob.param_groups[0]["lr"] = 0.01
        oa.step()
        ob.step()
        tables.append(oa._plans[0]["plan"].step_tables[0][1])
        assert_same(a, b)
    assert tables[1] is tables[0] and tables[2] is not tables[1] and tables[3] is not tables[2]
    assert tables[4] is tables[3]
    # a non-contiguous gradient (a contiguous copy goes to the kernel), then contiguous again
    a = make_params((40, 30), (7,))
    b = make_params((40, 30), (7,))
    oa, ob = fused_and_single(a, b, lr=0.02, p=1.1)
    for k in range(4):
        for params in (a, b):
            for x, g in zip(params, grads_like(params, seed=70 + k)):
                x.grad = g.t().contiguous().t() if k in (1, 2) and g.dim() == 2 else g
        oa.step()
        ob.step()
        assert_same(a, b)
    # vector accesses when every address is 16-byte aligned; a parameter that starts one
    # element into its storage takes the scalar kernel
    from attnopt.optim._triton import prepare_step
    for offset in (0, 1):
        a = [torch.nn.Parameter(x.detach().new_zeros(x.numel() + 1)[offset:offset + x.numel()].view_as(x).copy_(x))
             for x in make_params((40, 30), (1500,))]
        b = make_params((40, 30), (1500,))
        oa, ob = fused_and_single(a, b, lr=0.02, p=1.5)
        for k in range(2):
            for params in (a, b):
                for x, g in zip(params, grads_like(params, seed=80 + k)):
                    x.grad = g
            oa.step()
            ob.step()
            assert_same(a, b)
        launches = prepare_step(oa._plans[0]["plan"], [x.grad for x in a], lr=0.02, p=1.5, normalize=False,
                                eps=0.0, momentum=0.0, weight_decay=0.0, maximize=False)
        assert [launch.consts["ALIGNED"] for launch in launches] == [offset == 0]
    # the NaN/inf check runs as a kernel over the step's gradient table and raises a device flag:
    # exact (a float64 gradient of 1e300 is no false alarm), the update kernels skip themselves
    # (nothing written), no host synchronisation; "raise" raises at the next step() or
    # check_nonfinite(), naming the parameter and step, and skips every step until then
    from attnopt.optim import NonFiniteGradientError
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        a = make_params((40, 30), (1500,), dtype=dtype)
        b = make_params((40, 30), (1500,), dtype=dtype)
        oa = MirrorDescent(a, lr=0.02, p=1.5, fused=True)
        os_ = MirrorDescent(b, lr=0.02, p=1.5, fused=True, nonfinite="skip")
        for k, bad in enumerate([None, float("nan"), float("-inf"), None, float("inf")]):
            for params in (a, b):
                for x, g in zip(params, grads_like(params, seed=60 + k)):
                    x.grad = g
                if bad is not None:
                    params[1].grad[1234] = bad
            before = [x.detach().clone() for x in a + b]
            oa.step()  # never raises for its own gradients: the device skips the step
            os_.step()
            if bad is not None:
                assert all(torch.equal(x, y) for x, y in zip(a + b, before))
                try:
                    oa.check_nonfinite()
                except NonFiniteGradientError as exc:
                    assert "parameter 1" in str(exc) and f"at step {k + 1}," in str(exc), exc
                else:
                    raise AssertionError("no error for a non-finite gradient")
            else:
                assert not any(torch.equal(x, y) for x, y in zip(a + b, before))
            assert oa._records[a[0].device].flag.item() == 0
        assert os_.skipped_steps == 3 and os_.param_groups[0]["step"] == 2
        assert oa.skipped_steps == 3 and oa.param_groups[0]["step"] == 2
    # without check_nonfinite(): the next step() raises before doing anything, and every step up
    # to it was skipped (the flag is sticky); after the error, steps go on
    a = make_params((40, 30), (7,))
    oa = MirrorDescent(a, lr=0.02, p=1.5, fused=True)
    for x, g in zip(a, grads_like(a, seed=1)):
        x.grad = g
    a[0].grad[3, 4] = float("nan")
    before = [x.detach().clone() for x in a]
    oa.step()
    for x, g in zip(a, grads_like(a, seed=2)):
        x.grad = g
    try:
        oa.step()
    except NonFiniteGradientError as exc:
        assert "parameter 0" in str(exc) and "at step 1," in str(exc), exc
    else:
        raise AssertionError("the next step did not raise")
    assert all(torch.equal(x, y) for x, y in zip(a, before))
    oa.step()
    assert not torch.equal(a[0], before[0]) and oa.param_groups[0]["step"] == 1 and oa.skipped_steps == 1
    w = torch.nn.Parameter(torch.ones(3000, dtype=torch.float64))
    opt = MirrorDescent([w], lr=1e-310, p=1.5, fused=True)
    w.grad = torch.full_like(w, 1e306)  # a sum would overflow; every entry is finite
    opt.step()
    assert opt.check_nonfinite() == 0 and opt.param_groups[0]["step"] == 1 and bool(torch.isfinite(w).all())
    # a tensor lr is read by the kernel (capturable): the same weights as a float lr, to rounding
    for kw in (dict(p=1.3), dict(p=1.75, weight_decay=0.3, momentum=0.5)):
        a = make_params((40, 30), (1500,))
        b = make_params((40, 30), (1500,))
        lr = torch.tensor(0.02)
        oa = MirrorDescent(a, lr=lr, fused=True, capturable=True, **kw)
        ob = MirrorDescent(b, lr=0.02, foreach=False, **kw)
        for k in range(3):
            if k == 2:
                lr.fill_(0.01)  # as a scheduler does with a tensor lr
                ob.param_groups[0]["lr"] = 0.01
            for params, opt in ((a, oa), (b, ob)):
                for x, g in zip(params, grads_like(params, seed=90 + k)):
                    x.grad = g
                opt.step()
            assert_same(a, b)
    # exact resume on the Triton path: save, load into a new optimizer, continue = uninterrupted
    import io
    for p in (1.3, 1.75):
        a = make_params((40, 30), (7,))
        oa = MirrorDescent(a, lr=0.03, p=p, momentum=0.5, fused=True)
        run_k = lambda params, opt, ks: [  # noqa: E731
            ([setattr(x, "grad", g) for x, g in zip(params, grads_like(params, seed=k, scale=0.3))], opt.step())
            for k in ks]
        run_k(a, oa, range(3))
        buf = io.BytesIO()
        torch.save({"w": [x.detach() for x in a], "o": oa.state_dict()}, buf)
        run_k(a, oa, range(3, 5))
        b = make_params((40, 30), (7,))
        ob = MirrorDescent(b, lr=0.03, p=p, momentum=0.5, fused=True)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        with torch.no_grad():
            for x, w in zip(b, ck["w"]):
                x.copy_(w)
        ob.load_state_dict(ck["o"])
        run_k(b, ob, range(3, 5))
        assert all(torch.equal(x, y) for x, y in zip(a, b)), p
    # issue 25: an entry whose θ does not move keeps its bits (a zero gradient on the first step,
    # a frozen row on later ones, a step too small to move θ), every p and dtype
    for p in (1.01, 1.1, 1.75, 2.0, 3.0):
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            w = make_params((40, 30), (1500,), dtype=dtype)
            w0 = [x.detach().clone() for x in w]
            opt = MirrorDescent(w, lr=0.05, p=p, fused=True)
            for k in range(3):
                for x, g in zip(w, grads_like(w, seed=k)):
                    x.grad = torch.zeros_like(g) if k == 0 else g.index_fill(0, torch.tensor([3]), 0.0)
                opt.step()
                assert all(torch.equal(x[3], y[3]) for x, y in zip(w, w0)), (p, dtype, k)
                if k == 0:
                    assert all(torch.equal(x, y) for x, y in zip(w, w0)), (p, dtype)
            before = [x.detach().clone() for x in w]
            opt.param_groups[0]["lr"] = 1e-30
            opt.step()
            assert all(torch.equal(x, y) for x, y in zip(w, before)), (p, dtype, "tiny lr")
    print("TRITON-OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernel_in_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(__file__)
    env["PYTHONPATH"] = os.pathsep.join([here] + [x for x in [env.get("PYTHONPATH")] if x])
    out = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TRITON-OK" in out.stdout


@pytest.mark.parametrize("p", [1.1, 1.3])
def test_compiled_extreme_weights_and_zeros(p):
    mags = torch.logspace(-30, 3, 34, dtype=torch.float64)
    w = torch.nn.Parameter(torch.cat([mags, -mags, torch.zeros(2, dtype=torch.float64)]).float())
    w0 = w.detach().clone()
    opt = MirrorDescent([w], lr=0.1, p=p, compiled=True)
    w.grad = torch.zeros_like(w)
    opt.step()  # zero gradient: the weights come back, zeros stay zeros
    rel = (w.detach().double() - w0.double()).abs() / w0.double().abs().clamp_min(1e-300)
    # float32 θ resolution amplified by e = 1/(p-1), plus exp(e·log|θ|)'s |log w|·2^-24
    bound = 4 * 2.0**-24 * (1.0 / (p - 1.0) + w0.double().abs().clamp_min(1e-300).log().abs())
    assert bool((rel <= bound).all())
    assert torch.equal(w.detach()[-2:], torch.zeros(2))
    big = torch.finfo(torch.float32).max
    with torch.no_grad():
        w[0] = big / 2
    w.grad = torch.linspace(-1, 1, w.numel()) * 1e-3
    w.grad[0] = -1e30  # pushes w[0] past float32's range: clamped, not inf
    opt.step()
    assert bool(torch.isfinite(w).all()) and w[0].item() == big


def _compile_for_gpu(fn, args: dict, consts: dict, fp_fusion: bool | None = None) -> str:
    """PTX of a Triton kernel compiled ahead of time for an sm_90 GPU (no GPU needed), with
    the launches' FP-fusion setting unless ``fp_fusion`` says otherwise."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if "nvidia" not in getattr(triton.backends, "backends", {}):
        pytest.skip("this Triton has no CUDA backend")
    signature = dict(args, **{k: "constexpr" for k in consts})
    names = list(signature)
    src = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in consts.items()})
    from attnopt.optim import _triton

    options = {"enable_fp_fusion": _triton.FP_FUSION if fp_fusion is None else fp_fusion}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


def _ptx_ops(ptx: str) -> dict[str, int]:
    import collections
    import re

    return collections.Counter(m.group(1) for m in re.finditer(r"^\s+(?:@!?%p\d+ )?([a-z][\w.]*)", ptx, re.M))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_compile_for_a_gpu():
    """Every kernel variant compiles for a Hopper GPU (the interpreter test does not run
    Triton's compiler); aligned whole blocks use 16-byte vector accesses, and an integer
    exponent (p = 1.1) costs a few multiplications instead of a ``pow``."""
    import triton.language as tl

    from attnopt.optim import _triton

    tables = {k: "*i64" for k in ("block_tensor", "block_start", "numels", "w_ptrs", "g_ptrs", "t_ptrs",
                                  "b_ptrs", "s_ptrs", "scalars")} | {"flag": "*i32", "lr_ptr": "*fp32"}
    base = dict(W_TY=tl.float32, G_TY=tl.float32, T_TY=tl.float32, KIND=4, N=10, OWN=False, HAS_SCALE=False,
                HAS_MOMENTUM=False, HAS_DECAY=False, PRECISE=True, ALIGNED=True, HAS_FLAG=False, LR_TENSOR=False,
                BLOCK=_triton.BLOCK, MASKED=True)
    ops = {}
    for name, change in {
        "int": {}, "unaligned": dict(ALIGNED=False), "general": dict(KIND=3, N=0), "halfint": dict(KIND=5, N=2),
        "sqrt": dict(KIND=1, N=0), "bf16": dict(W_TY=tl.bfloat16, G_TY=tl.bfloat16),
        "f64": dict(W_TY=tl.float64, G_TY=tl.float64, T_TY=tl.float64, KIND=3, N=0),
        "own": dict(KIND=0, N=0, OWN=True), "all options": dict(HAS_SCALE=True, HAS_MOMENTUM=True, HAS_DECAY=True),
        "flag": dict(HAS_FLAG=True), "capturable": dict(HAS_FLAG=True, LR_TENSOR=True, HAS_DECAY=True),
        "unmasked": dict(MASKED=False),
    }.items():
        ops[name] = _ptx_ops(_compile_for_gpu(_triton._md_kernel, tables, dict(base, **change)))
    assert ops["int"]["ld.global.v4.b32"] > 0 and ops["int"]["st.global.v4.b32"] > 0
    assert ops["bf16"]["ld.global.v4.b32"] > 0
    assert not any(op.startswith(("ld.global.v", "st.global.v")) for op in ops["unaligned"])
    assert sum(ops["int"].values()) * 2 < sum(ops["general"].values())
    # FP fusion is set by us, not by Triton's default (which changes in Triton 3.10)
    assert _triton.FP_FUSION and ops["all options"]["fma.rn.f32"] > 0
    unfused = _ptx_ops(_compile_for_gpu(_triton._md_kernel, tables, dict(base, HAS_SCALE=True, HAS_MOMENTUM=True,
                                                                          HAS_DECAY=True), fp_fusion=False))
    assert unfused["fma.rn.f32"] == 0 and unfused["add.rn.f32"] > 0
    # the device flag: one load at the start, the kernel's only extra work; the tensor lr: one load
    assert sum(ops["flag"].values()) <= sum(ops["int"].values()) + 8
    assert ops["capturable"]["ld.global.b32"] >= 1
    check = {k: "*i64" for k in ("block_tensor", "block_start", "numels", "g_ptrs", "codes")} | {"flag": "*i32"}
    for g_ty in (tl.float32, tl.bfloat16, tl.float64):
        for aligned in (True, False):
            check_ops = _ptx_ops(_compile_for_gpu(_triton._nonfinite_kernel, check,
                                                  dict(G_TY=g_ty, ALIGNED=aligned, BLOCK=_triton.BLOCK)))
            assert aligned == any(op.startswith("ld.global.v") for op in check_ops)
            assert any(op.startswith("atom.global") or op.startswith("red.global") for op in check_ops)
    for sticky in (True, False):
        _compile_for_gpu(_triton._finalize_kernel, {"flag": "*i32", "rec": "*i64"}, dict(STICKY=sticky))
