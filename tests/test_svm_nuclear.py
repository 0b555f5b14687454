"""The fast nuclear-norm AttSVM (interior point, attnopt.svm.nuclear) against cvxpy and from
first principles: feasibility, a dual point checked by its own spectral norm, weak duality."""

import numpy as np
import pytest

from attnopt.svm import SVMInfeasibleError, alpha_from_softmax, att_svm_nuclear
from attnopt.svm.testing import adjoint_of, margins_of, random_instance


def _check_certificate(X, Z, alpha, res, tol):
    W, lam = res.solution, res.dual
    m = margins_of(X, Z, alpha, W)
    mask = ~np.isnan(res.margins)
    assert m[mask].min() >= 1 - 1e-9  # feasible
    assert np.all(lam >= 0)
    G = adjoint_of(X, Z, alpha, lam)
    assert np.linalg.norm(G, 2) == pytest.approx(1.0, rel=1e-9)  # λ is dual feasible: ‖Σλ A‖_op = 1
    lower, upper = lam.sum(), np.linalg.norm(W, "nuc")
    assert lower <= upper * (1 + 1e-12)  # weak duality
    assert (upper - lower) / upper <= tol
    assert res.objective == pytest.approx(upper, rel=1e-12)


@pytest.mark.parametrize("n,T,d,seed", [(5, 4, 4, 0), (8, 6, 5, 1), (12, 5, 8, 2), (3, 3, 6, 3)])
def test_fast_matches_cvxpy_and_certifies(n, T, d, seed):
    X, Z, alpha = random_instance(n, T, d, seed=seed)
    fast = att_svm_nuclear(X, Z, alpha, solver="fast")
    ref = att_svm_nuclear(X, Z, alpha, solver="cvxpy")
    assert fast.converged and fast.status == "optimal" and fast.certificate.solver == "fast-nuclear-ipm"
    assert fast.objective == pytest.approx(ref.objective, rel=1e-5)
    _check_certificate(X, Z, alpha, fast, 1e-6)
    _check_certificate(X, Z, alpha, ref, 1e-6)
    assert att_svm_nuclear(X, Z, alpha).certificate.solver == "fast-nuclear-ipm"  # auto = fast


def test_low_rank_solution_is_found():
    """All samples share one query: every A_k = D_k zᵀ has the same right factor, so the nuclear
    optimum is rank one, W = u zᵀ with u the ℓ2 max-margin separator of the D_k."""
    X, Z, _ = random_instance(6, 5, 6, seed=4)
    Z[:] = Z[0]
    alpha = alpha_from_softmax(X, np.random.default_rng(4).normal(size=(6, 6)), Z)  # feasible: some W selects it
    res = att_svm_nuclear(X, Z, alpha, tol=1e-8)
    s = np.linalg.svd(res.solution, compute_uv=False)
    assert s[1] <= 1e-6 * s[0]
    _check_certificate(X, Z, alpha, res, 1e-8)


def test_infeasible_names_the_sample():
    X, Z, alpha = random_instance(4, 5, 3, seed=11)
    others = [t for t in range(5) if t != alpha[1]]
    X[1, alpha[1]] = X[1, others].mean(axis=0)  # the selected token inside the hull of the others
    with pytest.raises(SVMInfeasibleError) as err:
        att_svm_nuclear(X, Z, alpha)
    assert 1 in err.value.samples


@pytest.mark.parametrize("scale", [1e-6, 1e-200, 1e200])
def test_units_do_not_matter(scale):
    X, Z, alpha = random_instance(6, 4, 5, seed=5)
    ref = att_svm_nuclear(X, Z, alpha)
    res = att_svm_nuclear(X * scale, Z, alpha)
    assert res.converged  # (the nuclear norm is not strictly convex: compare optima, not solutions)
    assert res.objective * scale == pytest.approx(ref.objective, rel=2e-6)
    assert margins_of(X, Z, alpha, res.solution * scale)[~np.isnan(res.margins)].min() >= 1 - 1e-9


def test_budget_is_reported():
    X, Z, alpha = random_instance(10, 6, 8, seed=6)
    res = att_svm_nuclear(X, Z, alpha, max_iter=3)
    assert res.status == "max_iter" or not res.converged
    with pytest.raises(ValueError, match="time_limit"):
        att_svm_nuclear(X, Z, alpha, time_limit=-1)


def _dense_schur(D, Z, rows, X, Si):
    """M_kl = tr(B_k X B_l S⁻¹) from the 2d × 2d matrices B_k themselves (the definition)."""
    d = D.shape[1]
    B = []
    for k in range(len(rows)):
        A = np.outer(D[k], Z[rows[k]])
        Bk = np.zeros((2 * d, 2 * d))
        Bk[:d, d:], Bk[d:, :d] = A, A.T
        B.append(Bk)
    return np.array([[np.trace(Bk @ X @ Bl @ Si) for Bl in B] for Bk in B])


@pytest.mark.parametrize("counts", [[3, 3, 3, 3], [3, 1, 4, 2]])
def test_schur_complement_matches_its_definition(counts):
    """Both ways of expanding the per-sample factors (equal counts: a scalar repeat; uneven: per-sample counts)."""
    from attnopt.svm.nuclear import _Schur

    rng = np.random.default_rng(7)
    n, d = len(counts), 3
    rows = np.repeat(np.arange(n), counts)
    D, Z = rng.normal(size=(len(rows), d)), rng.normal(size=(n, d))
    G, H = rng.normal(size=(2 * d, 2 * d)), rng.normal(size=(2 * d, 2 * d))
    X, Si = G @ G.T + np.eye(2 * d), H @ H.T + np.eye(2 * d)
    schur = _Schur(D, Z, rows)
    assert isinstance(schur.rep, int) == (len(set(counts)) == 1)
    diag = rng.uniform(size=len(rows))
    M = schur(X, Si, diag)
    np.testing.assert_allclose(M, _dense_schur(D, Z, rows, X, Si) + np.diag(diag), rtol=1e-12, atol=1e-12)


def test_uneven_neighbors_match_cvxpy():
    """Samples with different numbers of constraints (the gathered Schur complement)."""
    X, Z, alpha = random_instance(8, 6, 5, seed=12)
    rng = np.random.default_rng(12)
    neighbors = [[t for t in rng.permutation(6)[: 2 + i % 4] if t != alpha[i]] for i in range(8)]
    fast = att_svm_nuclear(X, Z, alpha, neighbors=neighbors)
    ref = att_svm_nuclear(X, Z, alpha, neighbors=neighbors, solver="cvxpy")
    assert fast.converged and fast.objective == pytest.approx(ref.objective, rel=1e-5)
    _check_certificate(X, Z, alpha, fast, 1e-6)
