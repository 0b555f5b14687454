"""ℓp-AttSVM / decoder SVM: public API, reference solver, closed forms, errors, token optimality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, minimize_scalar

from attnopt.mirror import lp_norm
from attnopt.svm import (
    Certificate,
    OptimalityReport,
    SVMInfeasibleError,
    SVMResult,
    alpha_from_softmax,
    att_svm,
    att_svm_nuclear,
    decoder_svm,
    token_optimality,
)
from attnopt.svm.testing import check_kkt, margins_of, random_instance

SOLVERS = ["fast", "cvxpy"]


# ---------------------------------------------------------------------------------------
# closed forms and brute force


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("p", [1.1, 1.5, 2.0, 3.0, 6.0])
def test_single_constraint_closed_form(solver, p):
    # n = 1, T = 2: one constraint <W, A> >= 1 with A = (x_0 - x_1) z^T: value 1/||A||_q
    rng = np.random.default_rng(1)
    X = rng.standard_normal((1, 2, 3))
    Z = rng.standard_normal((1, 3))
    res = att_svm(X, Z, [0], p, solver=solver, tol=1e-10)
    q = p / (p - 1)
    A = np.outer(X[0, 0] - X[0, 1], Z[0])
    assert res.objective == pytest.approx(1.0 / lp_norm(A, q), rel=1e-6)
    # and the minimiser is the duality map of A: W ∝ sign(A)|A|^{q-1}
    Wstar = np.sign(A) * np.abs(A) ** (q - 1)
    Wstar /= np.sum(Wstar * A)
    # (an interior-point solution is accurate to ~sqrt(tolerance) in W, the objective to ~tolerance)
    atol = (1e-4 if solver == "cvxpy" else 1e-5) * np.abs(Wstar).max()
    np.testing.assert_allclose(res.solution, Wstar, atol=atol)
    assert res.active[0, 1] and not res.active[0, 0]


def _brute_force_value(X, Z, alpha, p):
    """OPT = 1 / min_{λ in simplex} ||Σ λ_k A_k||_q (scale-invariant dual), m = 2: a 1-D search."""
    q = p / (p - 1)
    n, T, _ = X.shape
    As = [np.outer(X[i, alpha[i]] - X[i, t], Z[i]) for i in range(n) for t in range(T) if t != alpha[i]]
    assert len(As) == 2
    f = lambda s: float(np.sum(np.abs(s * As[0] + (1 - s) * As[1]) ** q) ** (1 / q))  # noqa: E731
    grid = np.linspace(0, 1, 2001)
    s0 = grid[np.argmin([f(s) for s in grid])]
    r = minimize_scalar(f, bounds=(max(0, s0 - 1e-3), min(1, s0 + 1e-3)), method="bounded",
                        options=dict(xatol=1e-12))
    return 1.0 / min(r.fun, f(0.0), f(1.0))


def _primal_slsqp(X, Z, alpha, p, w0):
    n, T, d = X.shape
    cons = [{"type": "ineq", "fun": (lambda w, i=i, t=t: (X[i, alpha[i]] - X[i, t]) @ w.reshape(d, d) @ Z[i] - 1)}
            for i in range(n) for t in range(T) if t != alpha[i]]
    r = minimize(lambda w: np.sum(np.abs(w) ** p) ** (1 / p), w0.ravel(), constraints=cons, method="SLSQP",
                 options=dict(ftol=1e-12, maxiter=500))
    return r.fun


@pytest.mark.parametrize("shape", [(1, 3, 2), (2, 2, 2)])
@pytest.mark.parametrize("p", [1.25, 2.0, 3.0, 4.0])
def test_tiny_instances_brute_force(shape, p):
    n, T, d = shape
    for seed in range(3):
        X, Z, alpha = random_instance(n, T, d, seed=seed + 10)
        bf = _brute_force_value(X, Z, alpha, p)
        for solver in SOLVERS:
            res = att_svm(X, Z, alpha, p, solver=solver, tol=1e-9)
            assert res.objective == pytest.approx(bf, rel=1e-6), (solver, seed)
        # an independent primal check (local NLP solver from the fast solution, perturbed)
        slsqp = _primal_slsqp(X, Z, alpha, p, res.solution * 1.1)
        assert slsqp >= bf * (1 - 1e-6)
        assert slsqp == pytest.approx(bf, rel=1e-4)


# ---------------------------------------------------------------------------------------
# reference solver: KKT and certificate


@pytest.mark.parametrize("p", [1.25, 2.0, 3.0])
def test_cvxpy_kkt_and_certificate(p):
    X, Z, alpha = random_instance(6, 4, 5, seed=2)
    res = att_svm(X, Z, alpha, p, solver="cvxpy")
    assert isinstance(res, SVMResult) and isinstance(res.certificate, Certificate)
    assert res.certificate.solver == "cvxpy-clarabel"
    assert res.status == "optimal" and res.converged
    assert res.certificate.rel_gap <= 1e-6
    assert res.certificate.max_violation <= 1e-7
    check_kkt(X, Z, alpha, res, p, stat_tol=1e-4, cs_tol=1e-6)


@pytest.mark.parametrize("p", [1.1, 1.5, 2.0, 3.0, 5.0])
def test_fast_agrees_with_cvxpy(p):
    X, Z, alpha = random_instance(8, 5, 6, seed=3)
    f = att_svm(X, Z, alpha, p, solver="fast")
    c = att_svm(X, Z, alpha, p, solver="cvxpy")
    assert f.converged and c.converged
    assert f.objective == pytest.approx(c.objective, rel=1e-5)
    np.testing.assert_array_equal(f.active, c.active)


def test_inputs_numpy_and_torch_any_float_dtype():
    X, Z, alpha = random_instance(5, 4, 3, seed=4)
    ref = att_svm(X, Z, alpha, 2.0)
    for conv in (lambda a: torch.tensor(a, dtype=torch.float32), lambda a: torch.tensor(a, dtype=torch.float64),
                 lambda a: a.astype(np.float32)):
        X32 = conv(X)
        Z32 = conv(Z)
        res = att_svm(X32, Z32, torch.as_tensor(alpha), 2.0)
        assert res.solution.dtype == np.float64
        # float32 rounding of the data moves the optimum by ~1e-7 relative
        assert res.objective == pytest.approx(ref.objective, rel=1e-5)


def test_result_fields():
    X, Z, alpha = random_instance(4, 5, 3, seed=5)
    res = att_svm(X, Z, alpha, 1.75)
    n, T = 4, 5
    assert res.solution.shape == (3, 3)
    assert res.active.shape == res.margins.shape == res.dual.shape == (n, T)
    assert res.active.dtype == bool
    assert not res.active[np.arange(n), alpha].any()
    assert np.isnan(res.margins[np.arange(n), alpha]).all()
    assert (res.dual[np.arange(n), alpha] == 0).all()
    assert res.p == 1.75 and np.array_equal(res.alpha, alpha)
    assert res.objective == res.certificate.primal
    assert res.certificate.gap == pytest.approx(res.certificate.primal - res.certificate.dual)
    assert res.certificate.iterations > 0 and res.certificate.time_s >= 0
    # active = tight constraints; every multiplier sits on one
    assert np.all(res.dual[~res.active] <= 1e-6 * res.dual.max())
    with pytest.raises(Exception):
        res.objective = 0.0  # frozen


# ---------------------------------------------------------------------------------------
# local SVM (neighbour sets)


@pytest.mark.parametrize("solver", SOLVERS)
def test_local_svm_neighbors(solver):
    X, Z, alpha = random_instance(5, 6, 4, seed=6)
    n, T = 5, 6
    glob = att_svm(X, Z, alpha, 2.0, solver=solver, tol=1e-8)
    # the global SVM restricted to its own active set has the same solution
    nb = [np.flatnonzero(row) for row in glob.active]
    loc = att_svm(X, Z, alpha, 2.0, neighbors=nb, solver=solver, tol=1e-8)
    assert loc.objective == pytest.approx(glob.objective, rel=1e-6)
    np.testing.assert_allclose(loc.solution, glob.solution, atol=1e-5 * np.abs(glob.solution).max())
    # a strict subset of constraints: value can only go down; margins only on neighbours
    nb2 = [[t for t in range(T) if t != alpha[i]][:2] for i in range(n)]
    loc2 = att_svm(X, Z, alpha, 2.0, neighbors=nb2, solver=solver, tol=1e-8)
    mask = np.zeros((n, T), bool)
    for i, ts in enumerate(nb2):
        mask[i, ts] = True
    assert loc2.objective <= glob.objective * (1 + 1e-9)
    assert np.all(np.isnan(loc2.margins[~mask])) and np.all(loc2.dual[~mask] == 0) and not loc2.active[~mask].any()
    check_kkt(X, Z, alpha, loc2, 2.0, mask=mask, stat_tol=1e-4 if solver == "cvxpy" else 1e-6)
    # the same neighbours given as a boolean mask
    loc3 = att_svm(X, Z, alpha, 2.0, neighbors=mask, solver=solver, tol=1e-8)
    assert loc3.objective == pytest.approx(loc2.objective, rel=1e-7)
    loc4 = att_svm(X, Z, alpha, 2.0, neighbors=torch.as_tensor(mask), solver=solver, tol=1e-8)
    assert loc4.objective == pytest.approx(loc2.objective, rel=1e-7)


def test_local_svm_empty_neighbour_sets():
    X, Z, alpha = random_instance(3, 4, 3, seed=7)
    res = att_svm(X, Z, alpha, 2.0, neighbors=[[], [], []])
    assert res.objective == 0.0 and np.all(res.solution == 0) and res.converged
    res = att_svm(X, Z, alpha, 2.0, neighbors=[[], [int((alpha[1] + 1) % 4)], []])
    assert res.converged and np.isnan(res.margins[0]).all()


# ---------------------------------------------------------------------------------------
# decoder SVM


@pytest.mark.parametrize("p", [1.25, 2.0, 4.0])
def test_decoder_svm(p):
    rng = np.random.default_rng(8)
    n, T, d = 6, 4, 8
    X = rng.standard_normal((n, T, d))
    Y = rng.choice([-1.0, 1.0], size=n)
    alpha = rng.integers(0, T, size=n)
    f = decoder_svm(X, Y, alpha, p, tol=1e-8)
    c = decoder_svm(X, Y, alpha, p, solver="cvxpy")
    assert f.solution.shape == (d,) and f.margins.shape == (n,) and f.active.shape == (n,)
    assert f.converged and c.converged
    assert f.objective == pytest.approx(c.objective, rel=1e-5)
    marg = Y * (X[np.arange(n), alpha] @ f.solution)
    np.testing.assert_allclose(marg, f.margins, rtol=1e-12)
    assert marg.min() >= 1 - 1e-9
    # single sample: v = argmin ||v||_p s.t. y x^T v >= 1 has value 1/||x||_q
    one = decoder_svm(X[:1], Y[:1], alpha[:1], p, tol=1e-9)
    assert one.objective == pytest.approx(1 / lp_norm(X[0, alpha[0]], p / (p - 1)), rel=1e-7)


def test_decoder_infeasible_conflicting_labels():
    X = np.array([[[1.0, 2.0]], [[1.0, 2.0]], [[0.5, -1.0]]])
    with pytest.raises(SVMInfeasibleError) as ei:
        decoder_svm(X, [1.0, -1.0, 1.0], [0, 0, 0], 2.0)
    assert sorted(ei.value.samples) == [0, 1]
    with pytest.raises(SVMInfeasibleError) as ei:
        decoder_svm(np.zeros((2, 2, 3)), [1.0, 1.0], [0, 1], 2.0)
    assert ei.value.samples == [0, 1]


# ---------------------------------------------------------------------------------------
# nuclear-norm variant


def test_nuclear_variant():
    X, Z, alpha = random_instance(5, 4, 4, seed=9)
    nuc = att_svm(X, Z, alpha, 2.0, nuclear=True)
    also = att_svm_nuclear(X, Z, alpha)
    assert nuc.nuclear and nuc.converged and nuc.certificate.rel_gap <= 1e-6
    assert nuc.objective == pytest.approx(also.objective, rel=1e-7)
    assert nuc.objective == pytest.approx(np.linalg.norm(nuc.solution, "nuc"), rel=1e-12)
    assert margins_of(X, Z, alpha, nuc.solution)[~np.isnan(nuc.margins)].min() >= 1 - 1e-9
    # the Frobenius (p = 2) solution is feasible, so its nuclear norm bounds the optimum from above
    fro = att_svm(X, Z, alpha, 2.0)
    assert nuc.objective <= np.linalg.norm(fro.solution, "nuc") * (1 + 1e-7)
    with pytest.raises(ValueError, match="p = 2"):
        att_svm(X, Z, alpha, 1.5, nuclear=True)
    ref = att_svm(X, Z, alpha, 2.0, nuclear=True, solver="cvxpy")  # the fast solver is the default
    assert nuc.certificate.solver != ref.certificate.solver
    assert nuc.objective == pytest.approx(ref.objective, rel=1e-5)


# ---------------------------------------------------------------------------------------
# infeasibility


@pytest.mark.parametrize("solver", SOLVERS)
def test_duplicate_token_names_sample(solver):
    X, Z, alpha = random_instance(4, 5, 3, seed=11)
    t = (alpha[2] + 1) % 5
    X[2, t] = X[2, alpha[2]]
    with pytest.raises(SVMInfeasibleError) as ei:
        att_svm(X, Z, alpha, 2.0, solver=solver)
    assert ei.value.samples == [2]
    assert (2, int(t)) in ei.value.constraints
    assert "sample(s) [2]" in str(ei.value)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("solver", SOLVERS)
def test_convex_hull_infeasible_names_sample(solver):
    X, Z, alpha = random_instance(4, 3, 3, seed=12)
    a = alpha[1]
    others = [t for t in range(3) if t != a]
    X[1, a] = 0.3 * X[1, others[0]] + 0.7 * X[1, others[1]]  # inside the hull: no W separates it
    with pytest.raises(SVMInfeasibleError) as ei:
        att_svm(X, Z, alpha, 1.5, solver=solver)
    assert ei.value.samples == [1]


@pytest.mark.parametrize("solver", SOLVERS)
def test_cross_sample_conflict_names_both(solver):
    rng = np.random.default_rng(13)
    a, b, c = rng.standard_normal((3, 3))
    z = rng.standard_normal(3)
    X = np.stack([np.stack([a, b]), np.stack([a, b]), np.stack([c, a])])
    Z = np.stack([z, z, rng.standard_normal(3)])
    # sample 0 selects a over b, sample 1 selects b over a, with the same query: contradiction
    with pytest.raises(SVMInfeasibleError) as ei:
        att_svm(X, Z, [0, 1, 0], 2.0, solver=solver)
    assert sorted(ei.value.samples) == [0, 1]


def test_zero_query_is_infeasible():
    X, Z, alpha = random_instance(3, 3, 2, seed=14)
    Z[0] = 0
    with pytest.raises(SVMInfeasibleError) as ei:
        att_svm(X, Z, alpha, 2.0)
    assert ei.value.samples == [0]


# ---------------------------------------------------------------------------------------
# malformed input


def _ok():
    return random_instance(3, 4, 2, seed=15)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda X, Z, a: (np.zeros((0, 4, 2)), np.zeros((0, 2)), np.zeros(0, int)), "n = 0"),
        (lambda X, Z, a: (X[:, :1], Z, np.zeros(3, int)), "at least 2 tokens"),
        (lambda X, Z, a: (X[0], Z, a), "3 dimensions"),
        (lambda X, Z, a: (X, Z[:2], a), "Z must have shape"),
        (lambda X, Z, a: (X, Z[:, :1], a), "Z must have shape"),
        (lambda X, Z, a: (X, Z, a[:2]), "alpha must have shape"),
        (lambda X, Z, a: (np.where(np.arange(2) == 0, np.nan, X), Z, a), "NaN or inf"),
        (lambda X, Z, a: (X, np.full_like(Z, np.inf), a), "NaN or inf"),
        (lambda X, Z, a: (X, Z, np.array([0, 4, 1])), "out of range"),
        (lambda X, Z, a: (X, Z, np.array([0, -1, 1])), "out of range"),
    ],
)
def test_malformed_input(mutate, match):
    X, Z, a = mutate(*_ok())
    with pytest.raises(ValueError, match=match):
        att_svm(X, Z, a, 2.0)


def test_malformed_scalars_and_options():
    X, Z, a = _ok()
    with pytest.raises(TypeError, match="integer"):
        att_svm(X, Z, a + 0.5, 2.0)
    with pytest.raises(ValueError, match="integer"):  # every input error is a ValueError
        att_svm(X, Z, a + 0.5, 2.0)
    with pytest.raises(ValueError, match="p must be"):
        att_svm(X, Z, a, "two")
    with pytest.raises(TypeError, match="integer"):
        att_svm(X, Z, a.astype(bool), 2.0)
    for p in (1.0, 0.5, -2, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="p must be"):
            att_svm(X, Z, a, p)
    with pytest.raises(ValueError, match="unknown solver"):
        att_svm(X, Z, a, 2.0, solver="mosek")
    with pytest.raises(ValueError, match="tol"):
        att_svm(X, Z, a, 2.0, tol=0)
    with pytest.raises(ValueError, match="one index collection per sample"):
        att_svm(X, Z, a, 2.0, neighbors=[[0]])
    bad = [[t for t in range(4) if t != a[i]] for i in range(3)]
    bad[1] = [7]
    with pytest.raises(ValueError, match="out of range"):
        att_svm(X, Z, a, 2.0, neighbors=bad)
    bad[1] = [int(a[1])]
    with pytest.raises(ValueError, match="contains the selected token"):
        att_svm(X, Z, a, 2.0, neighbors=bad)
    mask = np.ones((3, 4), bool)
    with pytest.raises(ValueError, match="selected token"):
        att_svm(X, Z, a, 2.0, neighbors=mask)
    with pytest.raises(ValueError, match="shape"):
        att_svm(X, Z, a, 2.0, neighbors=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="Y must"):
        decoder_svm(X, np.ones(2), a, 2.0)
    with pytest.raises(ValueError, match="nonzero"):
        decoder_svm(X, np.array([1.0, 0.0, -1.0]), a, 2.0)
    # float alpha with integral values is accepted
    assert att_svm(X, Z, a.astype(float), 2.0).converged


# ---------------------------------------------------------------------------------------
# token optimality


def _toy_sample(v):
    """n = 1, d = 2, z = e1: the SVM reduces to min ||u||_p s.t. (x_0 - x_t)^T u >= 1 for the first
    column u of W.  x_0 = 0, x_1 = (-1, 0) (margin u_1), x_2 = (-3, 5) (margin 3u_1 - 5u_2):
    the solution is u = (1, 0) for every p, so the SVM-neighbours are {1} (token 2 has margin 3)."""
    X = np.array([[[0.0, 0.0], [-1.0, 0.0], [-3.0, 5.0]]])
    Z = np.array([[1.0, 0.0]])
    return X, np.array([1.0]), Z, np.asarray(v, float), np.array([0])


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_token_optimality_hand_made(p):
    # global: scores (0, -1, -8)
    rep = token_optimality(*_toy_sample([1.0, -1.0]), p)
    assert isinstance(rep, OptimalityReport)
    assert rep.verdict == "global" and rep.globally_optimal.all() and rep.locally_optimal.all()
    assert [list(t) for t in rep.neighbors] == [[1]]
    np.testing.assert_allclose(rep.svm.solution, [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    # local, not global: scores (0, -1, 2): token 2 scores higher but is no SVM-neighbour
    rep = token_optimality(*_toy_sample([1.0, 1.0]), p)
    assert rep.verdict == "local" and not rep.globally_optimal[0] and rep.locally_optimal[0]
    np.testing.assert_allclose(rep.scores, [[0.0, -1.0, 2.0]])
    # neither: scores (0, 1, 3): the neighbour (token 1) beats the selected token
    rep = token_optimality(*_toy_sample([-1.0, 0.0]), p)
    assert rep.verdict == "neither" and not rep.locally_optimal[0]
    assert "neither" in rep.summary()


def test_token_optimality_mixed_samples_and_labels():
    X1, Y1, Z1, v, a1 = _toy_sample([1.0, 1.0])
    # a second sample with label -1 whose scores flip sign: selected token 0 beats all
    X = np.concatenate([X1, X1])
    Z = np.concatenate([Z1, Z1])
    Y = np.array([1.0, -1.0])
    rep = token_optimality(X, Y, Z, v, [0, 0], 2.0)
    # sample 0: local not global; sample 1: scores (0, 1, -2) -> neighbour 1 wins -> neither overall
    assert list(rep.globally_optimal) == [False, False]
    assert list(rep.locally_optimal) == [True, False]
    assert rep.verdict == "neither"
    s = rep.summary()
    assert "not locally optimal: samples [1]" in s


def test_token_optimality_infeasible_does_not_crash():
    X, Y, Z, v, a = _toy_sample([1.0, -1.0])
    X = X.copy()
    X[0, 2] = X[0, 0]
    rep = token_optimality(X, Y, Z, v, a, 2.0)
    assert rep.verdict == "neither" and rep.svm is None and rep.infeasible_samples == [0]
    assert "infeasible" in rep.summary()


def test_token_optimality_random_consistency():
    X, Z, alpha = random_instance(6, 5, 4, seed=16)
    rng = np.random.default_rng(16)
    v = rng.standard_normal(4)
    Y = rng.choice([-1.0, 1.0], 6)
    scores = Y[:, None] * (X @ v)
    best = scores.argmax(1)
    rep = token_optimality(X, Y, Z, v, best, 2.0)
    assert rep.verdict == "global"
    rep = token_optimality(X, Y, Z, v, alpha, 2.0)
    assert rep.verdict in ("global", "local", "neither")
    for i in range(6):
        assert rep.globally_optimal[i] == (scores[i, alpha[i]] >= scores[i].max() - 1e-6)
        assert rep.locally_optimal[i] == all(scores[i, alpha[i]] > scores[i, t] for t in rep.neighbors[i])


def test_alpha_from_softmax():
    X, Z, _ = random_instance(5, 6, 3, seed=17)
    W = np.random.default_rng(17).standard_normal((3, 3))
    a = alpha_from_softmax(X, W, Z)
    s = np.stack([X[i] @ W @ Z[i] for i in range(5)])
    probs = np.exp(s - s.max(1, keepdims=True))
    assert np.array_equal(a, probs.argmax(1)) and a.dtype == np.int64
    assert np.array_equal(alpha_from_softmax(torch.tensor(X), torch.tensor(W), torch.tensor(Z)), a)
    with pytest.raises(ValueError, match="W must have shape"):
        alpha_from_softmax(X, W[:2], Z)


def test_cvxpy_refuses_huge_dense_matrix(monkeypatch):
    import attnopt.svm.reference as ref

    monkeypatch.setattr(ref, "MAX_DENSE_ENTRIES", 10)
    X, Z, alpha = random_instance(3, 3, 2, seed=18)
    with pytest.raises(ValueError, match="use solver='fast'"):
        att_svm(X, Z, alpha, 2.0, solver="cvxpy")


# ---------------------------------------------------------------------------------------
# units and options (issue 19 rows 10 and 15)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("scale", [1e-6, 1e-200, 1e200])
def test_any_units_give_the_same_svm(solver, scale):
    """The SVM is homogeneous: X·c gives W/c.  Tiny or huge units are solved at unit scale (no
    false infeasibility, no wrong reason, no OverflowError)."""
    X, Z, a = random_instance(6, 5, 4, seed=3)
    ref = att_svm(X, Z, a, 1.75, solver=solver)
    res = att_svm(X * scale, Z, a, 1.75, solver=solver)
    assert res.converged and res.objective * scale == pytest.approx(ref.objective, rel=1e-6)
    assert margins_of(X, Z, a, res.solution * scale)[~np.isnan(res.margins)].min() >= 1 - 1e-9
    assert res.certificate.dual * scale == pytest.approx(res.certificate.primal * scale, rel=1e-5)
    dec = decoder_svm(X * scale, np.sign(Z[:, 0]), a, 1.75, solver=solver) if solver != "cvxpy" else None
    if dec is not None:
        assert dec.objective * scale == pytest.approx(decoder_svm(X, np.sign(Z[:, 0]), a, 1.75).objective, rel=1e-6)


def test_unrepresentable_solution_is_one_clear_error():
    X, Z, a = random_instance(6, 5, 4, seed=3)
    with pytest.raises(ValueError, match="outside float64") as err:
        att_svm(X * 1e200, Z * 1e200, a, 2.0)  # W* ~ 1e-400
    from attnopt.errors import UserError

    assert isinstance(err.value, UserError) and "\n" not in str(err.value)


def test_bad_options_are_rejected():
    X, Z, a = _ok()
    for kw, match in [(dict(viol_tol=float("nan")), "viol_tol"), (dict(viol_tol=-1), "viol_tol"),
                      (dict(threads=-1), "threads"), (dict(threads=1.5), "threads"),
                      (dict(time_limit=-1), "time_limit"), (dict(time_limit=float("nan")), "time_limit"),
                      (dict(max_iter=0), "max_iter")]:
        with pytest.raises(ValueError, match=match):
            att_svm(X, Z, a, 2.0, **kw)
    assert att_svm(X, Z, a, 2.0, viol_tol=0.0).certificate.max_violation == 0.0
    for Y in ([0.5, 1.0, -1.0], [2.0, -1.0, 1.0]):
        with pytest.raises(ValueError, match="Y must hold labels -1 or \\+1"):
            decoder_svm(X, np.array(Y), a, 2.0)
