"""torch's generic optimizer tests, continued (see test_optim_conventions.py): state dicts
(round trip, determinism, older versions, named parameters, weights-only files), copies and
pickles, the hooks, learning-rate types, the compiled path's recompile limit, and every
deliberate difference from torch.optim, each asserted with its reason (the list is in
docs/api/optim.md, "Differences from torch.optim")."""

from __future__ import annotations

import copy
import io
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from attnopt.optim import MirrorDescent, NonFiniteGradientError, _compiled
from optim_conventions import FLAGS, grid, quadratic_closure, weight_bias


def _same_state_dicts(a, b):
    """Equal state dicts: same structure, tensors equal in value (torch's assertEqual)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same_state_dicts(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same_state_dicts(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


def _primed(flag, p, steps=10, named=False, **kw):
    w, b, x = weight_bias()
    params = [("weight", w), ("bias", b)] if named else [w, b]
    opt = MirrorDescent(params, lr=1e-3, p=p, momentum=0.5, **kw, **FLAGS[flag])
    for _ in range(steps):
        opt.step(quadratic_closure(opt, w, b, x))
    return opt, (w, b, x)


def _clone_into(flag, p, opt, wbx, named=False, **kw):
    w, b, x = wbx
    with torch.no_grad():
        wc, bc = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    params = [("weight", wc), ("bias", bc)] if named else [wc, bc]
    oc = MirrorDescent(params, lr=1e-3, p=p, momentum=0.5, **kw, **FLAGS[flag])
    return oc, (wc, bc, x)


@pytest.mark.parametrize("named", [False, True], ids=["params", "named"])
@pytest.mark.parametrize("flag, p", grid())
def test_state_dict_round_trip_is_deterministic(flag, p, named):
    """torch's test_state_dict_deterministic: load a (deep-copied) state dict into a new
    optimizer over equal parameters, then both runs agree bit for bit, their state dicts are
    equal, and repeated groups (param_groups.extend) pack alike; names, if given, are kept."""
    opt, wbx = _primed(flag, p, named=named)
    oc, wbx_c = _clone_into(flag, p, opt, wbx, named=not named)
    saved = copy.deepcopy(opt.state_dict())
    oc.load_state_dict(saved)
    for _ in range(10):
        opt.step(quadratic_closure(opt, *wbx))
        oc.step(quadratic_closure(oc, *wbx_c))
        assert torch.equal(wbx[0], wbx_c[0]) and torch.equal(wbx[1], wbx_c[1])
    strip = lambda sd: {**sd, "param_groups": [{k: v for k, v in g.items() if k != "param_names"}  # noqa: E731
                                               for g in sd["param_groups"]]}
    _same_state_dicts(strip(opt.state_dict()), strip(oc.state_dict()))
    assert oc.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    oc.param_groups.extend(oc.param_groups)
    _same_state_dicts(strip(opt.state_dict())["param_groups"][-1], strip(oc.state_dict())["param_groups"][-1])


@pytest.mark.parametrize("flag, p", grid())
def test_older_state_dicts_load_and_continue_identically(flag, p):
    """torch's test_can_load_older_state_dict: a state dict without the options added over
    time (normalize, eps, maximize, foreach, fused, compiled, capturable, dual_dtype) and
    without the step counters loads, the defaults fill in, and the run continues as the
    uninterrupted one."""
    opt, wbx = _primed(flag, p, steps=3)
    oc, wbx_c = _clone_into(flag, p, opt, wbx)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        for name in ("normalize", "eps", "maximize", "foreach", "fused", "compiled", "capturable", "dual_dtype",
                     "step", "skipped_steps"):
            del group[name]
    oc.load_state_dict(old)
    assert oc.param_groups[0]["dual_dtype"] is None and oc.param_groups[0]["step"] == 0
    for _ in range(3):
        opt.step(quadratic_closure(opt, *wbx))
        oc.step(quadratic_closure(oc, *wbx_c))
    assert torch.equal(wbx[0], wbx_c[0]) and torch.equal(wbx[1], wbx_c[1])
    # unpickling an optimizer saved before the options existed fills them too
    state = opt.__getstate__()
    for name in ("normalize", "maximize"):
        del state["defaults"][name]
        for group in state["param_groups"]:
            del group[name]
    revived = MirrorDescent.__new__(MirrorDescent)
    revived.__setstate__(state)
    assert revived.defaults["maximize"] is False and revived.param_groups[0]["normalize"] is False


@pytest.mark.parametrize("flag, p", grid())
def test_weights_only_save_load_and_deepcopy_and_pickle(flag, p):
    """torch's test_save_load_equality_with_weights_only and
    test_deepcopy_copies_all_public_attrs; and a deep copy or pickle of model and optimizer
    together continues exactly as the original."""
    opt, (w, b, x) = _primed(flag, p, steps=3)
    sd = opt.state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    for weights_only in (False, True):
        buf.seek(0)
        _same_state_dicts(torch.load(buf, weights_only=weights_only), sd)
    public = lambda o: {k for k in o.__dict__ if not k.startswith("_")}  # noqa: E731
    assert public(copy.deepcopy(opt)) == public(opt)
    for clone in (copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))):
        o2, (w2, b2, x2) = clone((opt, (w, b, x)))
        assert o2.nonfinite == opt.nonfinite and o2.implementation == opt.implementation
        o1 = copy.deepcopy((opt, (w, b, x)))  # leave the original alone for the next clone
        for _ in range(3):
            o1[0].step(quadratic_closure(o1[0], *o1[1]))
            o2.step(quadratic_closure(o2, w2, b2, x2))
        assert torch.equal(o1[1][0], w2) and torch.equal(o1[1][1], b2)


def test_state_dict_hooks():
    """torch's state_dict pre/post hook tests: a pre-hook's state entry reaches the dict, a
    post-hook sees the finished dict (with MirrorDescent's "synced_weights") and may replace it."""
    w = torch.nn.Parameter(torch.rand(2, 3))
    opt = MirrorDescent([w], lr=1e-3, p=1.5)
    w.grad = torch.ones_like(w)
    opt.step()

    def pre(o):
        o.state["test"] = 1

    def post(o, sd):
        sd["ran_pre_hook"] = sd["state"].pop("test", None) == 1
        sd["saw_synced_weights"] = "synced_weights" in sd["state"][0]
        return sd

    h1 = opt.register_state_dict_pre_hook(pre)
    assert opt.state_dict()["state"]["test"] == 1
    h2 = opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert sd["ran_pre_hook"] and sd["saw_synced_weights"] and "test" not in sd["state"]
    h1.remove()
    del opt.state["test"]
    assert opt.state_dict()["ran_pre_hook"] is False
    h2.remove()


def test_load_state_dict_hooks_run_first_and_last():
    """torch's load_state_dict pre/post hook tests (prepend included), and the pre-hook runs
    before the checks, so it can turn another optimizer's state dict (here SGD's) into ours."""
    w = torch.nn.Parameter(torch.rand(2, 3))
    opt = MirrorDescent([w], lr=1e-3, p=1.5)
    sd = opt.state_dict()
    opt.register_load_state_dict_pre_hook(lambda o, s: s["param_groups"][0].update(lr=0.002))
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.002

    def replace(o, s):
        s = copy.deepcopy(s)
        s["param_groups"][0]["lr"] = 0.003
        return s

    opt.register_load_state_dict_pre_hook(replace, prepend=True)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.002  # the prepended one ran first, the other overrode it

    def post(o):
        o.state["post_saw_lr"] = o.param_groups[0]["lr"]
        o.state["post_saw_checked_groups"] = o.implementation
    opt.register_load_state_dict_post_hook(post)
    opt.load_state_dict(sd)
    assert opt.state["post_saw_lr"] == 0.002 and opt.state["post_saw_checked_groups"]

    sgd = torch.optim.SGD([torch.nn.Parameter(w.detach().clone())], lr=0.01, momentum=0.9)
    fresh = MirrorDescent([w], lr=1e-3, p=1.5)

    def from_sgd(o, s):
        for group in s["param_groups"]:
            group.setdefault("p", 2.0)  # an SGD checkpoint is MirrorDescent at p = 2
        return s
    fresh.register_load_state_dict_pre_hook(from_sgd)
    fresh.load_state_dict(sgd.state_dict())
    assert fresh.param_groups[0]["p"] == 2.0 and fresh.param_groups[0]["lr"] == 0.01


def test_step_hooks_local_and_global_in_order():
    """torch's step pre/post/all hook tests: global pre, local pre, local post, global post;
    removed handles stop them."""
    params = [torch.tensor([1.0, 1.0])]
    opt, sgd = MirrorDescent(params, p=1.5), torch.optim.SGD(params)
    seen = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: seen.append(0)),
               register_optimizer_step_post_hook(lambda o, a, k: seen.append(5))]
    for o in (opt, sgd):
        handles += [o.register_step_pre_hook(lambda o, a, k: seen.append(1)),
                    o.register_step_post_hook(lambda o, a, k: seen.append(2))]
    try:
        opt.step()
        sgd.step()
        opt.step()
        assert seen == [0, 1, 2, 5] * 3
    finally:
        for h in handles:
            h.remove()
    opt.step()
    assert seen == [0, 1, 2, 5] * 3


@pytest.mark.parametrize("lr", [np.float32(0.01), np.float64(0.01), Fraction(1, 100), 1, torch.tensor(0.01),
                                torch.tensor([0.01])], ids=["np.float32", "np.float64", "Fraction", "int", "0-d", "1-el"])
def test_any_real_number_or_one_element_tensor_is_a_learning_rate(lr):
    """As torch: any real number (numbers.Real) and a 1-element tensor; several elements are a
    ValueError.  A number is kept as a float, a tensor as itself (a scheduler writes into it)."""
    w, b, x = weight_bias()
    opt = MirrorDescent([w, b], lr=lr, p=1.5)
    assert opt.param_groups[0]["lr"] is lr if isinstance(lr, torch.Tensor) else type(opt.param_groups[0]["lr"]) is float
    opt.step(quadratic_closure(opt, w, b, x))
    with pytest.raises(ValueError, match="one element"):
        MirrorDescent([w], lr=torch.tensor([0.01, 0.02]), p=1.5)


def test_default_lr_is_1e_3_and_p_is_required():
    """The default lr is 1e-3 (SGD's and Adam's); p has none, since it is the optimizer's
    geometry: given here or in every group."""
    w = torch.nn.Parameter(torch.randn(3))
    assert MirrorDescent([w], p=1.5).param_groups[0]["lr"] == 1e-3
    with pytest.raises(ValueError, match="needs p"):
        MirrorDescent([w])
    opt = MirrorDescent([{"params": [w], "p": 3.0}])
    assert opt.param_groups[0]["p"] == 3.0


def test_compiled_degrades_to_eager_at_the_recompile_limit(monkeypatch):
    """compiled=True in a process that builds optimizers over many shapes: past the limit of
    graphs the step runs on the eager path with a warning, never an error."""
    monkeypatch.setattr(_compiled, "RECOMPILE_LIMIT", 1)
    torch._dynamo.reset()  # no graphs of earlier tests in this process
    results = []
    for n in (3, 4, 5):
        a, b = torch.nn.Parameter(torch.linspace(-1, 1, n)), torch.nn.Parameter(torch.linspace(-1, 1, n))
        oa, ob = MirrorDescent([a], lr=0.1, p=1.1, compiled=True), MirrorDescent([b], lr=0.1, p=1.1, foreach=False)
        a.grad, b.grad = torch.ones(n), torch.ones(n)
        with pytest.warns(RuntimeWarning, match="limit") if n > 3 else _no_warning():
            oa.step()
        ob.step()
        results.append(torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    assert results == [True, True, True]


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# --------------------------------------------------------------------------- deliberate differences


@pytest.mark.parametrize("flag, p", grid(flags=("default", "foreach", "capturable")))
def test_difference_a_nonfinite_gradient_raises_by_default(flag, p):
    """torch's SGD writes a NaN gradient into the weights; MirrorDescent raises (nothing written)
    by default, because a NaN θ cannot be told from the weights any more and a resumed run would
    carry it; ``nonfinite="skip"`` skips the step, ``"ignore"`` behaves as SGD."""
    w, b, x = weight_bias()
    opt = MirrorDescent([w, b], lr=1e-3, p=p, **FLAGS[flag])
    before = w.detach().clone()
    w.grad, b.grad = torch.full_like(w, float("nan")), torch.zeros_like(b)
    if flag == "capturable":  # decided on the device, raised at the next step
        opt.step()
        with pytest.raises(NonFiniteGradientError):
            opt.step()
    else:
        with pytest.raises(NonFiniteGradientError):
            opt.step()
    assert torch.equal(w, before)
    MirrorDescent([w], lr=1e-3, p=p, nonfinite="ignore").step()
    assert torch.isnan(w).all()


def test_difference_unbounded_ascent_near_p1_saturates_at_the_largest_float():
    """On an unbounded ascent SGD only grows; at p = 1.1 the inverse map |θ|^10 overflows within a
    few steps, and MirrorDescent clamps the weights to the dtype's largest finite value (never
    inf), so the loss overflows instead."""
    w, b, x = weight_bias()
    opt = MirrorDescent([w, b], lr=1e-2, p=1.1, maximize=True, nonfinite="skip")
    sgd_w, sgd_b, _ = weight_bias()
    sgd = torch.optim.SGD([sgd_w, sgd_b], lr=1e-2, maximize=True)
    for _ in range(30):
        opt.step(quadratic_closure(opt, w, b, x))
        sgd.step(quadratic_closure(sgd, sgd_w, sgd_b, x))
    assert torch.isfinite(sgd_w).all() and sgd_w.abs().max() < 1e6
    assert torch.isfinite(w).all() and w.abs().max() == torch.finfo(torch.float32).max


def test_difference_options_torch_has_and_mirror_descent_has_not():
    """Sparse gradients are refused (θ would have to be sparse too), and SGD's dampening,
    nesterov and differentiable options do not exist (a TypeError, not a silent default)."""
    w = torch.nn.Parameter(torch.randn(4))
    opt = MirrorDescent([w], lr=0.1, p=1.5)
    w.grad = torch.randn(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    for name in ("dampening", "nesterov", "differentiable"):
        with pytest.raises(TypeError):
            MirrorDescent([w], lr=0.1, p=1.5, **{name: True})


def test_difference_state_keeps_the_dual_dtype_and_momentum_is_decoupled_from_decay():
    """torch casts loaded state to the parameter's dtype; θ stays float32 for bfloat16 weights
    (it accumulates the updates the weights cannot hold).  With momentum and weight decay the
    decay is decoupled (SGDW), where SGD feeds λw into its momentum buffer."""
    w = torch.nn.Parameter(torch.randn(4).bfloat16())
    opt = MirrorDescent([w], lr=0.1, p=1.5)
    w.grad = torch.randn(4).bfloat16()
    opt.step()
    fresh = MirrorDescent([w], lr=0.1, p=1.5)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[w]["dual"].dtype == torch.float32
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    ours = MirrorDescent([a], lr=0.1, p=2.0, momentum=0.9, weight_decay=0.5)
    sgd = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=0.5)
    for _ in range(3):
        a.grad, b.grad = torch.zeros(3), torch.zeros(3)
        ours.step()
        sgd.step()
    assert torch.allclose(a, torch.full((3,), 0.95**3)) and not torch.allclose(a, b)
