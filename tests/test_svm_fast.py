"""The fast certified ℓp-AttSVM solver (issue #3): certificates, KKT, backends, limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnopt.mirror import lp_norm
from attnopt.svm import SVMInfeasibleError, att_svm, decoder_svm
from attnopt.svm import fast as fastmod
from attnopt.svm.problem import att_problem, decoder_problem
from attnopt.svm.testing import check_kkt, margins_of, random_instance

P_ALL = [1.1, 1.25, 1.75, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("p", P_ALL)
def test_certificate_on_random_instances(p):
    for seed, (n, T, d) in enumerate([(12, 6, 8), (30, 8, 12)]):
        X, Z, alpha = random_instance(n, T, d, seed=100 + seed)
        res = att_svm(X, Z, alpha, p)  # default tol 1e-6
        c = res.certificate
        assert res.status == "optimal" and c.converged, (res.status, c)
        assert 0 <= c.gap and c.rel_gap <= 1e-6
        assert c.max_violation <= 1e-7
        assert c.solver.startswith("fast")
        # the bound is honest: recompute primal and dual from the returned arrays
        m = margins_of(X, Z, alpha, res.solution)
        mask = ~np.isnan(res.margins)
        assert m[mask].min() >= 1 - 1e-7
        assert lp_norm(res.solution, p) == pytest.approx(c.primal, rel=1e-12)
        check_kkt(X, Z, alpha, res, p, stat_tol=1e-2, cs_tol=1e-6)


@pytest.mark.parametrize("p", P_ALL + [6.0, 10.0])
def test_kkt_to_1e6(p):
    X, Z, alpha = random_instance(10, 5, 6, seed=7)
    res = att_svm(X, Z, alpha, p, tol=1e-10)
    assert res.converged and res.certificate.rel_gap <= 1e-10
    check_kkt(X, Z, alpha, res, p, stat_tol=1e-6, cs_tol=1e-9)


@pytest.mark.parametrize("p", [1.25, 1.75, 2.0, 3.0, 4.0, 8.0])
def test_fast_vs_cvxpy_objective(p):
    X, Z, alpha = random_instance(15, 6, 6, seed=8)
    f = att_svm(X, Z, alpha, p, solver="fast")
    c = att_svm(X, Z, alpha, p, solver="cvxpy")
    assert f.objective == pytest.approx(c.objective, rel=1e-5)
    # both certificates bracket the same optimum
    assert f.certificate.dual <= c.certificate.primal * (1 + 1e-12)
    assert c.certificate.dual <= f.certificate.primal * (1 + 1e-12)


@pytest.mark.parametrize("p", [1.1, 6.0, 10.0])
def test_extreme_p_certified(p):
    X, Z, alpha = random_instance(20, 6, 8, seed=9)
    res = att_svm(X, Z, alpha, p)
    assert res.converged and res.certificate.rel_gap <= 1e-6 and res.certificate.max_violation <= 1e-7


@pytest.mark.parametrize("kind", ["att", "att-local", "decoder"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_structured_operators_match_dense(kind, backend):
    X, Z, alpha = random_instance(5, 4, 3, seed=10)
    rng = np.random.default_rng(10)
    if kind == "decoder":
        prob = decoder_problem(X, rng.choice([-1.0, 1.0], 5), alpha, 2.0)
    else:
        nb = None if kind == "att" else [[t for t in range(4) if t != alpha[i]][: 1 + i % 3] for i in range(5)]
        prob = att_problem(X, Z, alpha, 2.0, nb)
    be = fastmod._NumpyBackend() if backend == "numpy" else fastmod._TorchBackend("cpu")
    ops = fastmod.Ops(prob, be)
    M = prob.dense()
    W = rng.standard_normal(prob.shape)
    lam = rng.random(prob.m)
    np.testing.assert_allclose(be.to_numpy(ops.A(be.asarray(W))), M @ W.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(be.to_numpy(ops.AT(be.asarray(lam))).ravel(), M.T @ lam, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(prob.A(W), M @ W.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(prob.AT(lam).ravel(), M.T @ lam, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [1.25, 2.0, 5.0])
def test_torch_backend_matches_numpy(p):
    X, Z, alpha = random_instance(10, 5, 6, seed=11)
    prob = att_problem(X, Z, alpha, p)
    a = fastmod.solve_fast(prob, backend="numpy")
    b = fastmod.solve_fast(prob, backend="torch", device="cpu")
    assert a.status == b.status == "optimal"
    assert b.info["backend"] == "torch" and a.info["backend"] == "numpy"
    assert lp_norm(a.W / prob.A(a.W).min(), p) == pytest.approx(lp_norm(b.W / prob.A(b.W).min(), p), rel=1e-6)
    # the public entry point with a device goes through torch
    res = att_svm(torch.tensor(X), torch.tensor(Z), alpha, p, device="cpu")
    assert res.converged


def test_decoder_fast_large_p_and_torch():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((8, 3, 12))
    Y = rng.choice([-1.0, 1.0], 8)
    alpha = rng.integers(0, 3, 8)
    for p in (1.1, 3.0, 7.0):
        f = decoder_svm(X, Y, alpha, p)
        c = decoder_svm(X, Y, alpha, p, solver="cvxpy")
        assert f.converged and f.objective == pytest.approx(c.objective, rel=1e-5)
    g = decoder_svm(X, Y, alpha, 2.0, device="cpu")
    assert g.converged


def test_budget_limits_are_reported_honestly():
    X, Z, alpha = random_instance(30, 8, 10, seed=13)
    res = att_svm(X, Z, alpha, 1.25, max_iter=3)
    assert res.status == "max_iter" and not res.converged
    c = res.certificate
    if c.dual > 0:  # whatever was reached, the bounds stay valid
        assert c.dual <= c.primal * (1 + 1e-12)
    res = att_svm(X, Z, alpha, 1.25, time_limit=1e-9)
    assert res.status == "time_limit" and not res.converged
    assert res.certificate.rel_gap > 1e-6  # inf when no feasible point was reached
    with pytest.raises(ValueError, match="max_iter"):
        att_svm(X, Z, alpha, 2.0, max_iter=0)


@pytest.mark.parametrize("p", [1.5, 2.0, 4.0])
def test_fast_solver_detects_infeasibility_itself(p):
    # the selected token is the midpoint of two others: the dual runs off along a Farkas ray
    X, Z, alpha = random_instance(3, 3, 4, seed=14)
    a = alpha[0]
    o = [t for t in range(3) if t != a]
    X[0, a] = 0.5 * (X[0, o[0]] + X[0, o[1]])
    prob = att_problem(X, Z, alpha, p)
    out = fastmod.solve_fast(prob, max_iter=20000)
    assert out.status == "infeasible"
    with pytest.raises(SVMInfeasibleError) as ei:
        att_svm(X, Z, alpha, p)
    assert ei.value.samples == [0]


def test_switch_from_dual_to_alm_is_recorded():
    X, Z, alpha = random_instance(30, 8, 10, seed=16)
    res = att_svm(X, Z, alpha, 8.0)
    assert res.converged and res.info["method"] == "fast-dual+alm"
    assert res.info["switched_to_alm_at"] is not None
    assert att_svm(X, Z, alpha, 1.5).info["method"] == "fast-dual"


def test_medium_instance_quick():
    X, Z, alpha = random_instance(50, 10, 32, seed=15)
    for p in (1.25, 2.0, 3.0):
        res = att_svm(X, Z, alpha, p)
        assert res.converged and res.certificate.max_violation <= 1e-7
        assert res.certificate.iterations < 5000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 4),
    T=st.integers(2, 4),
    d=st.integers(1, 4),
    p=st.floats(1.1, 10.0),
    seed=st.integers(0, 10_000),
)
def test_property_certificate_or_named_infeasibility(n, T, d, p, seed):
    X, Z, alpha = random_instance(n, T, d, seed=seed)
    try:
        res = att_svm(X, Z, alpha, p)
    except SVMInfeasibleError as err:
        # d = 1 (or T > d + 1) can put the selected token inside the hull of the others
        assert err.samples, str(err)
        return
    c = res.certificate
    assert c.dual <= c.primal * (1 + 1e-12)
    assert c.converged, (res.status, c)
    assert c.max_violation <= 1e-7
