"""MirrorDescent's API: the default implementation and its visible choice, the fallback warning,
bad inputs (issue 19: one clear ordinary exception each), a tensor lr, ``capturable=True``'s
device-side non-finite handling (on CPU here), and ``torch.compile(opt.step)``."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from attnopt.optim import KernelBuildError, MirrorDescent, NonFiniteGradientError, _cpu
from optim_reference import HAVE_CC, grads_like, make_params, reference_step, train_steps

needs_cc = pytest.mark.skipif(not HAVE_CC, reason="no C compiler for the fused CPU kernel")


def _steps(params, opt, n=3, seed=0):
    train_steps(params, opt, n=n, seed=seed)


# --------------------------------------------------------------------------- the default path


@needs_cc
def test_default_is_the_fused_kernel_on_cpu_and_says_so():
    opt = MirrorDescent(make_params((4, 3)), lr=0.1, p=1.5)
    assert opt.implementation == "fused-cpu"
    assert "implementation: fused-cpu" in repr(opt)
    # float64 alone: the kernel would hand every tensor to the single-tensor path, so that is the choice
    assert MirrorDescent(make_params((3,), dtype=torch.float64), lr=0.1, p=1.5).implementation == "single"
    assert MirrorDescent(make_params((3,)), lr=0.1, p=1.5, foreach=True).implementation == "foreach"
    assert MirrorDescent(make_params((3,)), lr=0.1, p=1.5, fused=False).implementation == "single"
    mixed = MirrorDescent([{"params": make_params((3,))}, {"params": make_params((2,)), "foreach": True}], lr=0.1, p=1.5)
    assert mixed.implementation == "group 0: fused-cpu; group 1: foreach"


@needs_cc
def test_default_matches_the_single_tensor_path():
    a, b = make_params((50, 20), (7,)), make_params((50, 20), (7,))
    kw = dict(lr=0.02, p=1.75, momentum=0.5, weight_decay=0.1)
    _steps(a, MirrorDescent(a, **kw))
    _steps(b, MirrorDescent(b, foreach=False, **kw))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=3e-6, atol=1e-8)


def test_unbuildable_kernel_falls_back_with_one_warning_or_raises_when_asked(tmp_path, monkeypatch):
    """Issue 19 #16: an unwritable kernel cache ($ATTNOPT_CACHE=/proc/x) is one clear error naming
    the kernel cache with fused=True, and one warning then the single-tensor path by default."""
    monkeypatch.setattr(_cpu, "_lib", None)
    monkeypatch.setenv("ATTNOPT_CACHE", "/proc/x")
    with pytest.raises(KernelBuildError, match=r"kernel cache /proc/x/kernels.*ATTNOPT_CACHE") as info:
        MirrorDescent(make_params((3,)), lr=0.1, p=1.5, fused=True)
    assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = MirrorDescent([{"params": make_params((3,))}, {"params": make_params((2,))}], lr=0.1, p=1.5)
    fallbacks = [w for w in caught if "fused kernel" in str(w.message)]
    assert len(fallbacks) == 1 and issubclass(fallbacks[0].category, RuntimeWarning)
    assert "kernel cache" in str(fallbacks[0].message)
    assert opt.implementation == "single"
    params = opt.param_groups[0]["params"]
    w0 = params[0].detach().clone()
    g = grads_like(params)[0]
    params[0].grad = g
    opt.step()
    torch.testing.assert_close(params[0].detach().double(), reference_step(w0, g, lr=0.1, p=1.5)[0],
                               rtol=3e-6, atol=1e-9)
    monkeypatch.setenv("ATTNOPT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match="C compiler"):
        assert MirrorDescent(make_params((3,)), lr=0.1, p=1.5).implementation == "single"


# --------------------------------------------------------------------------- issue 19: bad inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_16_bit_dual_dtype_is_refused_at_construction(dtype):  # issue 19 #11
    with pytest.raises(ValueError, match=r"dual_dtype.*float32 or torch.float64"):
        MirrorDescent(make_params((3,)), lr=0.1, p=1.5, dual_dtype=dtype)


def test_a_state_dict_of_another_optimizer_is_refused_and_changes_nothing():  # issue 19 #12
    params = make_params((4, 3))
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    _steps(params, sgd, n=1)
    opt = MirrorDescent(params, lr=0.05, p=1.5)
    _steps(params, opt, n=1)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"not a MirrorDescent state_dict.*no p"):
        opt.load_state_dict(sgd.state_dict())
    assert opt.param_groups[0]["lr"] == 0.05 and torch.equal(opt.state[params[0]]["dual"], before["state"][0]["dual"])
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["p"] = 0.5
    with pytest.raises(ValueError, match="Invalid p"):
        opt.load_state_dict(bad)
    _steps(params, opt, n=1)  # still usable


@pytest.mark.parametrize("key, value, match", [
    ("momentum", 1.0, "momentum"), ("lr", -0.05, "learning rate"), ("p", 0.5, "Invalid p"),
    ("weight_decay", 30.0, "flip the sign"), ("eps", float("nan"), "eps"), ("dual_dtype", torch.float16, "dual_dtype"),
])
def test_a_group_edited_after_construction_is_checked_at_the_next_step(key, value, match):  # issue 19 #13
    params = make_params((4, 3))
    opt = MirrorDescent(params, lr=0.05, p=1.5)
    _steps(params, opt, n=1)
    before = [x.detach().clone() for x in params]
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert all(torch.equal(x, y) for x, y in zip(params, before))


def test_lr_times_weight_decay_above_one_is_refused():  # issue 19 #15: it would flip the weights' sign
    with pytest.raises(ValueError, match=r"lr·weight_decay.*flip the sign"):
        MirrorDescent(make_params((3,)), lr=0.5, p=1.5, weight_decay=3.0)
    MirrorDescent(make_params((3,)), lr=0.5, p=1.5, weight_decay=2.0)  # c = 0 is allowed (weights to zero)


# --------------------------------------------------------------------------- tensor lr, capturable


@pytest.mark.parametrize("device_check", [False, True], ids=["eager", "capturable"])
def test_a_tensor_lr_is_checked_at_every_step(device_check):
    w = make_params((5, 4))[0]
    lr = torch.tensor(0.1)
    opt = MirrorDescent([w], lr=lr, p=1.5, capturable=device_check)
    assert opt.param_groups[0]["lr"] is lr  # kept, so that schedulers fill_ it and a capture reads it
    train_steps([w], opt, n=1)
    lr.fill_(-1.0)
    before = w.detach().clone()
    with pytest.raises(ValueError, match="learning rate"):
        opt.step()
    assert torch.equal(w.detach(), before)


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_capturable_skips_a_nonfinite_step_on_the_device_and_reports_it_later(mode):
    """capturable=True (here on CPU): no host decision in the step; a bad step writes nothing,
    "raise" raises at the next step naming the parameter and step, "skip" counts it."""
    params = make_params((6, 5), (4,))
    opt = MirrorDescent(params, lr=0.05, p=1.5, momentum=0.9, capturable=True, nonfinite=mode)
    _steps(params, opt, n=2)
    before = [x.detach().clone() for x in params] + [opt.state[params[1]]["momentum_buffer"].clone()]
    for x, g in zip(params, grads_like(params, seed=9)):
        x.grad = g
    params[1].grad[2] = float("nan")
    opt.step()  # no error here: the device decides
    after = [x.detach() for x in params] + [opt.state[params[1]]["momentum_buffer"]]
    assert all(torch.equal(x, y) for x, y in zip(after, before))
    params[1].grad[2] = 0.0
    if mode == "raise":
        with pytest.raises(NonFiniteGradientError, match=r"parameter 1 .*at step 3,"):
            opt.step()
        assert all(torch.equal(x, y) for x, y in zip(after, before))
    opt.step()
    assert not torch.equal(params[0].detach(), before[0])
    assert opt.skipped_steps == 1 and opt.param_groups[0]["step"] == 3


# --------------------------------------------------------------------------- torch.compile(opt.step)


@pytest.mark.slow
def test_compiled_step_matches_eager_and_handles_nonfinite():
    """torch.compile(opt.step) traces the eager step (the fused kernels are opaque to it) and
    matches the uncompiled optimizer; edits between steps and NaN gradients still work."""
    kw = dict(lr=0.03, p=1.75, momentum=0.5, weight_decay=0.1, nonfinite="skip")
    a, b = make_params((9, 8), (7,)), make_params((9, 8), (7,))
    oa, ob = MirrorDescent(a, **kw), MirrorDescent(b, foreach=False, **kw)
    step = torch.compile(oa.step)
    for k in range(5):
        for params in (a, b):
            for x, g in zip(params, grads_like(params, seed=20 + k)):
                x.grad = g
            if k == 2:
                params[0].grad[1, 1] = float("nan")
            if k == 3:
                with torch.no_grad():
                    params[1].mul_(0.5)
        step()
        ob.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=3e-6, atol=1e-8)
    assert oa.skipped_steps == ob.skipped_steps == 1


def test_a_state_dict_of_an_older_version_loads():
    """Saved before capturable and synced_weights existed: defaults fill the group, and θ is
    checked against the weights to 2 ulp instead of exactly."""
    params = make_params((6, 5))
    opt = MirrorDescent(params, lr=0.05, p=1.75)
    _steps(params, opt, n=2)
    sd = copy.deepcopy(opt.state_dict())
    for key in ("capturable", "compiled"):
        del sd["param_groups"][0][key]
    del sd["state"][0]["synced_weights"]
    copies = [torch.nn.Parameter(x.detach().clone()) for x in params]
    fresh = MirrorDescent(copies, lr=0.05, p=1.75)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["capturable"] is False and fresh.param_groups[0]["compiled"] is None
    _steps(copies, fresh, n=2, seed=5)
    _steps(params, opt, n=2, seed=5)
    for x, y in zip(copies, params):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-8)
