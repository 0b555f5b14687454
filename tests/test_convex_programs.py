"""Convex attention programs: recovery identity, FISTA vs CVXPY, duality gap, Carathéodory, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnopt.convex import (
    ProblemError,
    SimplexAttention,
    SoftmaxAttention,
    convex_to_heads,
    group_soft_threshold,
    heads_predict,
    heads_to_convex,
    make_problem,
    make_sequence_problem,
    nonconvex_objective,
    project_simplex,
    reduce_support,
    sample_gates,
    sequence_nonconvex_objective,
    sequence_to_heads,
    solve_cvxpy,
    solve_fista,
    solve_sequence_cvxpy,
    solve_sequence_fista,
    sparsity_report,
    train_baseline,
)
from attnopt.convex.programs import loss_conjugate, loss_grad, loss_value


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems (tests/conftest.py)


def _instance(kind: str, N=16, n=5, d=3, c=3, m=0, seed=0, beta=1.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, d, generator=g, dtype=torch.float64)
    if kind == "squared":
        y = torch.randn(N, generator=g, dtype=torch.float64)
    elif kind == "squared_vec":
        y = torch.randn(N, c, generator=g, dtype=torch.float64)
        kind = "squared"
    elif kind == "logistic":
        y = torch.randint(0, 2, (N,), generator=g).double() * 2 - 1
    elif kind == "cross_entropy":
        y = torch.randint(0, c, (N,), generator=g)
    else:
        raise AssertionError(kind)
    gates = sample_gates(X, m, seed=seed)[0] if m else None
    return make_problem(X, y, kind, beta=beta, gates=gates, num_classes=c if kind == "cross_entropy" else None)


CASES = [
    ("squared", 0),
    ("squared_vec", 0),
    ("logistic", 0),
    ("cross_entropy", 0),
    ("squared", 4),
    ("logistic", 3),
    ("cross_entropy", 3),
]


# ---------------------------------------------------------------- recovery identity


@settings(max_examples=25, deadline=None)
@given(
    case=st.sampled_from(CASES),
    seed=st.integers(0, 10_000),
    N=st.integers(2, 12),
    n=st.integers(1, 6),
    d=st.integers(1, 4),
    sparsity=st.floats(0.0, 0.9),
)
def test_recovery_identity_random_z(case, seed, N, n, d, sparsity):
    """Any Z (not only optima): the recovered heads give the same predictions and objective."""
    kind, m = case
    prob = _instance(kind, N=N, n=n, d=d, m=m, seed=seed, beta=0.7)
    g = torch.Generator().manual_seed(seed + 1)
    Z = torch.randn(prob.z_shape, generator=g, dtype=torch.float64)
    Z[torch.rand(prob.z_shape[:3], generator=g) < sparsity] = 0.0
    heads = convex_to_heads(prob, Z)
    nc = nonconvex_objective(prob, heads)
    conv = prob.objective(Z)
    assert nc["objective"] == pytest.approx(conv, rel=1e-6, abs=1e-12)
    torch.testing.assert_close(nc["predictions"], prob.predict(Z), rtol=1e-10, atol=1e-10)
    assert nc["max_simplex_violation"] == 0.0
    assert heads.num_heads == sparsity_report(prob, Z)["num_heads"]
    torch.testing.assert_close(heads_to_convex(prob, heads), Z, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,m", CASES)
def test_recovery_at_optimum_same_objective_and_predictions(kind, m):
    prob = _instance(kind, m=m, seed=3, beta=0.5)
    res = solve_fista(prob, tol=1e-9)
    assert res.converged
    heads = convex_to_heads(prob, res.Z)
    nc = nonconvex_objective(prob, heads)
    assert nc["objective"] == pytest.approx(res.objective, rel=1e-6)
    P = prob.predict(res.Z)
    torch.testing.assert_close(nc["predictions"], P)
    if prob.loss == "cross_entropy":
        assert torch.equal(nc["predictions"].argmax(1), P.argmax(1))
    else:
        assert torch.equal(torch.sign(nc["predictions"]), torch.sign(P))


def test_nonconvex_to_convex_lower_bound():
    """Heads → Z: same predictions, convex penalty ≤ non-convex penalty (so convex ≤ non-convex)."""
    prob = _instance("squared_vec", m=3, seed=5, beta=0.9)
    g = torch.Generator().manual_seed(0)
    H = 7
    W = project_simplex(torch.randn(H, prob.n, generator=g, dtype=torch.float64))
    from attnopt.convex import Heads

    heads = Heads(W=W, V=torch.randn(H, prob.d, generator=g, dtype=torch.float64),
                  B=torch.randn(H, prob.c, generator=g, dtype=torch.float64),
                  pattern=torch.arange(H) % prob.m)
    Z = heads_to_convex(prob, heads)
    torch.testing.assert_close(prob.predict(Z), heads_predict(prob, heads))
    assert prob.objective(Z) <= nonconvex_objective(prob, heads)["objective"] + 1e-12


# ---------------------------------------------------------------- FISTA vs CVXPY, gap


@pytest.mark.parametrize("kind,m", CASES)
def test_fista_matches_cvxpy(kind, m):
    prob = _instance(kind, N=20, n=6, d=4, m=m, seed=11, beta=0.8)
    ref = solve_cvxpy(prob, solver="CLARABEL")
    res = solve_fista(prob, tol=1e-9)
    assert ref.status == "optimal"
    assert res.converged
    assert abs(res.objective - ref.objective) <= 1e-5 * abs(ref.objective)
    # the certificate brackets the exact optimum: dual ≤ p* ≤ primal
    assert res.dual_objective <= ref.objective + 1e-7 * abs(ref.objective)
    assert res.objective >= ref.objective - 1e-7 * abs(ref.objective)


def test_fista_matches_scs_loosely():
    prob = _instance("squared", N=15, n=5, d=3, seed=2, beta=1.0)
    ref = solve_cvxpy(prob, solver="SCS", eps=1e-9, max_iters=200_000)
    res = solve_fista(prob, tol=1e-10)
    assert abs(res.objective - ref.objective) <= 1e-5 * abs(ref.objective)


@pytest.mark.parametrize("kind,m", CASES[:4])
def test_duality_gap_certified(kind, m):
    prob = _instance(kind, seed=7, beta=0.6)
    res = solve_fista(prob, tol=1e-8)
    assert res.converged and 0 <= res.rel_gap <= 1e-8
    info = prob.dual(res.Z)
    assert info["gap"] >= -1e-9 * abs(info["primal"])  # weak duality
    assert info["dual_norm"] <= prob.beta * (1 + 1e-3)  # KKT: near-feasible residual
    # weak duality at an arbitrary point too
    Z = torch.randn(prob.z_shape, dtype=torch.float64)
    info = prob.dual(Z)
    assert info["gap"] >= 0


def test_conjugates_fenchel_young_equality():
    """L(p) + L*(∇L(p)) = p·∇L(p) (equality in Fenchel–Young) for all three losses."""
    g = torch.Generator().manual_seed(0)
    P = torch.randn(10, 3, generator=g, dtype=torch.float64)
    for loss, Y in [
        ("squared", torch.randn(10, 3, generator=g, dtype=torch.float64)),
        ("logistic", torch.randint(0, 2, (10, 3), generator=g).double() * 2 - 1),
        ("cross_entropy", torch.randint(0, 3, (10,), generator=g)),
    ]:
        R = loss_grad(P, Y, loss)
        lhs = loss_value(P, Y, loss) + loss_conjugate(R, Y, loss)
        assert float(lhs) == pytest.approx(float((P * R).sum()), rel=1e-10, abs=1e-10)


def test_beta_above_lambda_max_gives_zero():
    prob = _instance("logistic", seed=1)
    prob.beta = 1.01 * prob.lambda_max()
    res = solve_fista(prob, tol=1e-10)
    assert res.converged and float(res.Z.abs().max()) == 0.0


def test_fista_restart_and_no_restart_agree():
    prob = _instance("squared_vec", seed=4, beta=0.3)
    a = solve_fista(prob, tol=1e-10, restart=True)
    b = solve_fista(prob, tol=1e-10, restart=False, max_iter=50_000)
    assert a.converged and b.converged
    assert a.objective == pytest.approx(b.objective, rel=1e-8)


def test_group_soft_threshold():
    V = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    out = group_soft_threshold(V, 1.0)
    torch.testing.assert_close(out, torch.tensor([[2.4, 3.2], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64))


# ---------------------------------------------------------------- Carathéodory


@pytest.mark.parametrize("kind,m", [("squared", 0), ("logistic", 0), ("squared", 3)])
def test_caratheodory_bound(kind, m):
    """N samples, many more token rows than N + 1: an optimum with ≤ N + 1 non-zero rows."""
    N, n, d = 5, 24, 2
    prob = _instance(kind, N=N, n=n, d=d, m=m, seed=9, beta=0.05)
    res = solve_fista(prob, tol=1e-10, max_iter=50_000)
    assert res.converged
    Zr = reduce_support(prob, res.Z)
    rows = sparsity_report(prob, Zr)["num_heads"]
    assert rows <= N + 1
    assert prob.objective(Zr) <= res.objective * (1 + 1e-9)
    # the recovered network of the reduced optimum has ≤ N + 1 heads and the same objective
    nc = nonconvex_objective(prob, convex_to_heads(prob, Zr))
    assert nc["num_heads"] <= N + 1
    assert nc["objective"] == pytest.approx(prob.objective(Zr), rel=1e-6)
    # and FISTA's own optimum is already that sparse on these instances
    assert sparsity_report(prob, res.Z)["num_heads"] <= N + 1


# ---------------------------------------------------------------- sequence output


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_sequence_output_fista_cvxpy_recovery(loss):
    g = torch.Generator().manual_seed(0)
    N, n, d, c = 6, 4, 2, 2
    X = torch.randn(N, n, d, generator=g, dtype=torch.float64)
    Y = torch.randn(N, n, c, generator=g, dtype=torch.float64)
    if loss == "logistic":
        Y = torch.sign(Y)
    prob = make_sequence_problem(X, Y, loss, beta=0.7)
    res = solve_sequence_fista(prob, tol=1e-9)
    ref = solve_sequence_cvxpy(prob)
    assert res.converged
    assert abs(res.objective - ref.objective) <= 1e-5 * abs(ref.objective)
    heads = sequence_to_heads(prob, res.C)
    nc = sequence_nonconvex_objective(prob, heads)
    assert nc["objective"] == pytest.approx(res.objective, rel=1e-6)
    assert bool((heads.W >= 0).all()) and float(heads.W.sum(-1).max()) <= 1 + 1e-12


# ---------------------------------------------------------------- baselines


def test_baselines_train_and_stay_above_convex_optimum():
    prob = _instance("squared", N=20, n=5, d=3, seed=0, beta=1.0)
    opt = solve_fista(prob, tol=1e-10).objective
    for simplex in ("softmax", "projection"):
        model = SimplexAttention(prob.n, prob.d, prob.c, num_heads=8, simplex=simplex)
        hist = train_baseline(model, prob, steps=300, lr=2e-2, log_every=100)
        assert hist[-1]["objective"] < hist[0]["objective"]
        assert hist[-1]["objective"] >= opt - 1e-9
        W = model.attention()
        W = W.detach()
        assert float((W.sum(1) - 1).abs().max()) < 1e-9 and bool((W >= 0).all())
    sm = SoftmaxAttention(prob.d, prob.c, num_heads=2, head_dim=3)
    hist = train_baseline(sm, prob, steps=100, lr=1e-2, log_every=50, optimizer="sgd")
    assert math.isfinite(hist[-1]["objective"])


def test_project_simplex_matches_definition():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(50, 7, generator=g, dtype=torch.float64) * 3
    P = project_simplex(V)
    assert bool((P >= 0).all())
    torch.testing.assert_close(P.sum(1), torch.ones(50, dtype=torch.float64))
    # optimality: (V - P) is constant on the support and not larger off it
    for v, p in zip(V, P):
        r = v - p
        sup = p > 0
        assert float(r[sup].max() - r[sup].min()) < 1e-10
        if (~sup).any():
            assert float(r[~sup].max()) <= float(r[sup].min()) + 1e-10


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    X = torch.randn(4, 3, 2)
    y = torch.randn(4)
    with pytest.raises(ProblemError, match="beta must be non-negative"):
        make_problem(X, y, beta=-1.0)
    with pytest.raises(ProblemError, match="beta must be finite"):
        make_problem(X, y, beta=float("nan"))
    with pytest.raises(ProblemError, match=r"X must have shape \(N, n, d\)"):
        make_problem(torch.randn(4, 6), y)
    with pytest.raises(ProblemError, match="rows but X has N = 4"):
        make_problem(X, torch.randn(5))
    Xn = X.clone()
    Xn[0, 0, 0] = float("nan")
    with pytest.raises(ProblemError, match="X contains 1 NaN"):
        make_problem(Xn, y)
    with pytest.raises(ProblemError, match="y contains"):
        make_problem(X, torch.tensor([1.0, float("inf"), 0.0, 0.0]))
    with pytest.raises(ProblemError, match=r"labels in \{-1, \+1\}"):
        make_problem(X, torch.tensor([0.0, 1.0, 1.0, 0.0]), "logistic")
    with pytest.raises(ProblemError, match="unknown loss"):
        make_problem(X, y, "hinge")
    with pytest.raises(ProblemError, match="out of range"):
        make_problem(X, torch.tensor([0, 1, 2, 3]), "cross_entropy", num_classes=3)
    with pytest.raises(ProblemError, match="gates must have shape"):
        make_problem(X, y, gates=torch.ones(3, 2))
    with pytest.raises(ProblemError, match="only 0 and 1"):
        make_problem(X, y, gates=torch.full((4, 2), 0.5))
    prob = make_problem(X, y)
    with pytest.raises(ProblemError, match="Z must have shape"):
        prob.objective(torch.zeros(2, 2))
    with pytest.raises(ProblemError, match="Z contains"):
        prob.objective(torch.full((3, 2), float("nan")))
    with pytest.raises(ProblemError, match="tol must be positive"):
        solve_fista(prob, tol=-1.0)
    with pytest.raises(ProblemError, match="Y must have shape"):
        make_sequence_problem(X, torch.randn(4, 2))
    with pytest.raises(ProblemError, match="beta must be non-negative"):
        make_sequence_problem(X, torch.randn(4, 3), beta=-0.1)


def test_fista_float32_and_device_argument():
    prob = _instance("logistic", seed=2, beta=0.5)
    ref = solve_fista(prob, tol=1e-10)
    r32 = solve_fista(prob, tol=1e-5, dtype=torch.float32, device="cpu")
    assert r32.Z.dtype == torch.float32 and r32.converged
    assert r32.objective == pytest.approx(ref.objective, rel=1e-4)


def test_sparse_operator_matches_dense():
    """One-hot features use a sparse A / Aᵀ; both paths give the same numbers."""
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, 9, (40, 3), generator=g)
    X = torch.nn.functional.one_hot(tok, 9).double()
    y = torch.randint(0, 4, (40,), generator=g)
    D = sample_gates(X, 3, seed=1)[0]
    dense = make_problem(X, y, "cross_entropy", beta=0.3, gates=D, num_classes=4, sparse=False)
    sparse = make_problem(X, y, "cross_entropy", beta=0.3, gates=D, num_classes=4, sparse=True)
    Z = torch.randn(dense.z_shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sparse.predict(Z), dense.predict(Z))
    R = torch.randn(40, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(sparse.adjoint(R), dense.adjoint(R))
    a, b = solve_fista(dense, tol=1e-9), solve_fista(sparse, tol=1e-9)
    assert a.objective == pytest.approx(b.objective, rel=1e-8)
