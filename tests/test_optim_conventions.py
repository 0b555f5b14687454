"""torch's generic optimizer tests (``TestOptimRenewed`` in torch's test/test_optim.py), rewritten
for MirrorDescent: the update, its implementations and parameter groups.  State dicts, hooks,
copies and the deliberate differences are in ``test_optim_conventions_state.py``.

Every test runs over every implementation flag and p ∈ {1.1, 1.75, 2, 3} (the compiled path
sampled, see ``optim_conventions.py``).  Not ported, because they do not apply to a dense
first-order CPU optimizer: the sparse (Rosenbrock, SparseAdam) and second-order (LBFGS) tests,
the CUDA-only ones (peak memory, 2^32-element tensors, multi-GPU, CUDA state dicts, fused
CPU-vs-CUDA, default-to-foreach on CUDA, set_default_dtype with foreach; the CUDA paths have
test_optim_cuda.py), ``test_load_nontensor_step`` (MirrorDescent keeps no per-parameter step
tensor) and ``test_fused_error_on_params_on_meta``.  The zero-gradient no-op is
test_optim_unchanged.py's.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.optim.lr_scheduler import ExponentialLR, LinearLR, ReduceLROnPlateau, StepLR

from attnopt.optim import MirrorDescent
from optim_conventions import (
    FLAGS,
    exhaustive_run,
    grid,
    option_sets,
    quadratic_closure,
    tiny_mlp,
    weight_bias,
)

SCHEDULERS = {"none": [], "step": [lambda o: StepLR(o, step_size=5, gamma=0.9)],
              "linear+exp": [lambda o: LinearLR(o, start_factor=0.4, total_iters=4), lambda o: ExponentialLR(o, 0.95)],
              "plateau": [lambda o: ReduceLROnPlateau(o, factor=0.5, patience=1)]}


def _step_schedulers(schedulers, loss):
    for s in schedulers:
        s.step(loss.item()) if isinstance(s, ReduceLROnPlateau) else s.step()


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "noncontiguous"])
@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("flag, p", grid())
def test_goes_right_direction(flag, p, sched, contiguous, request):
    """20 steps on ‖Wx + b‖² lower it (raise it with maximize), with and without LR schedulers,
    on contiguous and non-contiguous parameters; step(closure) returns the closure's loss."""
    if flag == "compiled" and not exhaustive_run(request) and (sched != "step" or not contiguous):
        pytest.skip("compiled: one scheduler on contiguous parameters in normal runs (-m exhaustive: all)")
    for kw in option_sets(flag, exhaustive_run(request)):
        w, b, x = weight_bias(contiguous)
        # an unbounded ascent at p = 1.1 overflows within 20 steps (a documented difference, see
        # test_optim_conventions_state.py): its inf gradients are skipped, not raised
        skip = {"nonfinite": "skip"} if kw.get("maximize") else {}
        opt = MirrorDescent([w, b], p=p, **kw, **FLAGS[flag], **skip)
        schedulers = [make(opt) for make in SCHEDULERS[sched]]
        closure = quadratic_closure(opt, w, b, x)
        initial = closure().item()
        for _ in range(20):
            loss = opt.step(closure)
            assert isinstance(loss, torch.Tensor) and loss.requires_grad  # the closure ran with grad on
            _step_schedulers(schedulers, loss)
        final = closure().item()
        assert (final > initial) if kw.get("maximize") else (final < initial), (kw, initial, final)


@pytest.mark.parametrize("flag, p", grid())
def test_param_groups_with_scheduler_and_the_default_lr(flag, p):
    """Two groups, only the second with its own lr: the first takes the default 1e-3 (as SGD's
    and Adam's); with a StepLR both go the right way."""
    w, b, x = weight_bias()
    opt = MirrorDescent([{"params": [w]}, {"params": [b], "lr": 2e-3}], p=p, **FLAGS[flag])
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.defaults["lr"] == 1e-3
    sched = StepLR(opt, step_size=5, gamma=0.9)
    closure = quadratic_closure(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
        sched.step()
    assert closure().item() < initial
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.9**4)


@pytest.mark.parametrize("flag, p", grid())
def test_tensor_lr_matches_float_lr(flag, p):
    """A 0-d tensor lr gives the same steps as the float, bit for bit (it is read on the host)."""
    a, b = weight_bias(), weight_bias()
    oa = MirrorDescent(a[:2], lr=1e-3, p=p, momentum=0.5, **FLAGS[flag])
    ob = MirrorDescent(b[:2], lr=torch.tensor(1e-3), p=p, momentum=0.5, **FLAGS[flag])
    for _ in range(5):
        oa.step(quadratic_closure(oa, *a))
        ob.step(quadratic_closure(ob, *b))
    assert all(torch.equal(x, y) for x, y in zip(a[:2], b[:2]))


def _compare_with_forloop(flag, p, dtype, kw):
    """torch's ``_compare_between``: the tiny MLP plus a 0-d parameter, 7 steps with the grads
    of step 2 missing and a layer frozen on steps 3–4, against the single-tensor loop."""
    runs = []
    for f in ("single", flag):
        model, x = tiny_mlp(dtype)
        scalar = torch.nn.Parameter(torch.tensor(0.3, dtype=dtype))
        empty = torch.nn.Parameter(torch.empty(0, 3, dtype=dtype))  # zero-size
        params = list(model.parameters()) + [scalar, empty]
        opt = MirrorDescent(params, p=p, **copy.deepcopy(kw), **FLAGS[f])
        trace = []
        for i in range(7):
            opt.zero_grad()
            model[2].requires_grad_(i not in (3, 4))
            if i != 2:
                (model(x).sum() + scalar.pow(2) + empty.sum()).backward()
            opt.step()
            trace.append([t.detach().clone() for t in params])
        runs.append((opt, params, trace))
    (o1, p1, t1), (o2, p2, t2) = runs
    for s1, s2 in zip(t1, t2):
        for x, y in zip(s1, s2):
            torch.testing.assert_close(x, y, rtol=5 * 1.3e-6 if dtype != torch.float64 else 1e-7, atol=1e-5)
    for x, y in zip(p1, p2):
        for name in ("dual", "momentum_buffer"):
            if name in o1.state[x]:
                torch.testing.assert_close(o1.state[x][name], o2.state[y][name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag, p", grid(flags=("default", "foreach", "fused-cpu", "capturable", "compiled")))
def test_implementations_match_the_forloop(flag, p, request):
    """torch's ``test_foreach_matches_forloop`` / ``test_fused_matches_forloop``: every path
    equals the single-tensor loop (float64, and float32 for the paths with their own kernels),
    state included, over every option set."""
    dtypes = [torch.float64] + ([torch.float32] if flag in ("default", "fused-cpu", "compiled") else [])
    for dtype in dtypes:
        for kw in option_sets(flag, exhaustive_run(request)):
            _compare_with_forloop(flag, p, dtype, kw)


@pytest.mark.parametrize("flag", [f for f in FLAGS if f != "compiled"] + [pytest.param("compiled", marks=pytest.mark.slow)])
def test_p2_is_sgd(flag):
    """p = 2 is torch.optim.SGD: plain, with momentum (dampening 0), with weight decay (no
    momentum: SGD's L2 term equals the decoupled shrink) and maximize, to rounding."""
    for kw in (dict(lr=0.01), dict(lr=0.01, momentum=0.9), dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, maximize=True)):
        a, b = weight_bias(), weight_bias()
        ours = MirrorDescent(a[:2], p=2.0, **kw, **FLAGS[flag])
        sgd = torch.optim.SGD(b[:2], **kw)
        for _ in range(10):
            ours.step(quadratic_closure(ours, *a))
            sgd.step(quadratic_closure(sgd, *b))
        for x, y in zip(a[:2], b[:2]):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flag, p", grid())
def test_step_is_a_noop_without_grads_and_zero_grad_sets_none(flag, p):
    """No gradient (requires_grad False, or zero_grad's None): nothing changes and no state
    is built; ``zero_grad()`` sets grads to None, ``zero_grad(set_to_none=False)`` zeros them;
    ``step(closure)`` returns the closure's value."""
    params = [torch.randn(2, 3), torch.randn(4)]
    old = [x.clone() for x in params]
    opt = MirrorDescent(params, lr=0.1, p=p, **FLAGS[flag])
    assert opt.step(lambda: torch.tensor([1.0])).item() == 1.0
    assert all(torch.equal(x, y) for x, y in zip(params, old)) and not opt.state
    w, b, x = weight_bias()
    opt = MirrorDescent([w, b], lr=0.1, p=p, **FLAGS[flag])
    quadratic_closure(opt, w, b, x)()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(w.grad, torch.zeros_like(w))
    opt.zero_grad()
    assert w.grad is None and b.grad is None
    before = [w.detach().clone(), b.detach().clone()]
    opt.step()
    assert torch.equal(w, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("flag, p", grid())
def test_param_groups_weight_decay_and_lr(flag, p):
    """A group with weight decay and one without both train; a group at lr 1e-28 with random
    gradients keeps its weights bit for bit (θ does not move, so w is not rewritten)."""
    w, b, x = weight_bias()
    opt = MirrorDescent([dict(params=[w], weight_decay=0.1), dict(params=[b], weight_decay=0.0)], lr=1e-3, p=p,
                        **FLAGS[flag])
    closure = quadratic_closure(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        opt.step(closure)
    assert closure().item() < initial
    w, b, x = weight_bias(seed=3)
    irrelevant = torch.nn.Parameter(torch.randn(2))
    kept = irrelevant.detach().clone()
    opt = MirrorDescent([dict(params=[w, b], lr=1e-3), dict(params=[irrelevant])], lr=1e-28, p=p, **FLAGS[flag])
    closure = quadratic_closure(opt, w, b, x)
    initial = closure().item()
    for _ in range(20):
        loss = closure()
        irrelevant.grad = torch.rand_like(irrelevant)
        opt.step()
    assert loss.item() < initial and torch.equal(irrelevant, kept)


@pytest.mark.parametrize("flag, p", grid())
def test_add_param_group_and_groups_appended_directly(flag, p):
    """add_param_group fills the defaults and refuses a parameter already present or a bad
    value (the optimizer unchanged); a group appended to ``param_groups`` directly (as some
    libraries do) also gets the defaults, prints and steps; the state is never empty."""
    w, b, x = weight_bias()
    opt = MirrorDescent([w], lr=1e-3, p=p, momentum=0.5, **FLAGS[flag])
    opt.add_param_group({"params": [b], "lr": 2e-3})
    assert opt.param_groups[1]["momentum"] == 0.5 and opt.param_groups[1]["step"] == 0
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [w]})
    with pytest.raises(ValueError, match="learning rate"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": -1.0})
    assert len(opt.param_groups) == 2
    extra = torch.nn.Parameter(torch.randn(3))
    opt.param_groups.append({"params": [extra], "lr": 5e-3})
    assert "Parameter Group 2" in repr(opt) and "momentum: 0.5" in repr(opt).split("Parameter Group 2")[1]
    before = extra.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        ((w.mv(x) + b).pow(2).sum() + extra.pow(2).sum()).backward()
        opt.step()
    assert not torch.equal(extra, before) and opt.param_groups[2]["step"] == 3
    assert all(len(s) > 0 for s in opt.state.values())  # torch's test_non_empty_state
    opt.param_groups.pop()
    opt.step()  # a removed group is forgotten too
    assert opt.param_groups[0]["step"] == 4


@pytest.mark.parametrize("flag, p", grid())
def test_optimizer_can_be_printed(flag, p):
    params = [torch.nn.Parameter(torch.randn(2, 3)) for _ in range(2)]
    for kw in option_sets(flag):
        text = repr(MirrorDescent(params, p=p, **kw, **FLAGS[flag]))
        assert text.startswith("MirrorDescent (") and f"p: {p}" in text and "implementation: " in text


def test_complex_parameters_are_refused():
    """Difference: torch's SGD steps a complex tensor as its real view; MirrorDescent refuses it
    with a TypeError, because the ℓp potential of a complex entry has no single meaning
    (|Re|^p + |Im|^p, or |z|^p?).  Pass ``torch.view_as_real(z)`` for the first."""
    with pytest.raises(TypeError, match="floating-point parameters"):
        MirrorDescent([torch.randn(3, dtype=torch.complex64, requires_grad=True)], p=1.5)
    real = torch.view_as_real(torch.randn(3, dtype=torch.complex64)).clone().requires_grad_()
    opt = MirrorDescent([real], lr=0.1, p=1.5)
    real.grad = torch.ones_like(real)
    opt.step()


@pytest.mark.parametrize("flag, p", grid())
def test_zero_size_zero_dim_and_non_contiguous_tensors_with_gradients(flag, p):
    """A (0,)-shaped and a 0-d parameter step with the rest; a non-contiguous gradient on a
    contiguous parameter is taken as is (equal to its contiguous copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ws = [torch.nn.Parameter(torch.randn(0)), torch.nn.Parameter(torch.tensor(0.7)),
              torch.nn.Parameter(torch.randn(6, 4))]
        twin = [torch.nn.Parameter(x.detach().clone()) for x in ws]
        oa = MirrorDescent(ws, lr=0.05, p=p, **FLAGS[flag])
        ob = MirrorDescent(twin, lr=0.05, p=p, **FLAGS[flag])
        g = torch.randn(4, 6).t()  # non-contiguous
        for params, grad in ((ws, g), (twin, g.contiguous())):
            params[0].grad, params[1].grad, params[2].grad = torch.randn(0), torch.tensor(0.3), grad
        oa.step()
        ob.step()
    assert ws[0].shape == (0,) and not torch.equal(ws[1], torch.tensor(0.7))
    torch.testing.assert_close(ws[2], twin[2], rtol=1e-6, atol=1e-8)
