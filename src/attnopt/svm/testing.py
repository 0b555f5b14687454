"""Helpers for tests and benchmarks of the SVM solvers: random instances and an independent
(naive, from-scratch) KKT / certificate check."""

from __future__ import annotations

import numpy as np

from attnopt.mirror import lp_norm
from attnopt.svm import alpha_from_softmax


def random_instance(n: int, T: int, d: int, seed: int = 0):
    """Spec E1-style data: tokens and queries ~ N(0, I) rescaled to unit ℓ2 norm; α = argmax of
    the scores under a random W (feasible: continuous data has distinct tokens)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, d))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    Z = rng.standard_normal((n, d))
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True)
    alpha = alpha_from_softmax(X, rng.standard_normal((d, d)), Z)
    return X, Z, alpha


def margins_of(X, Z, alpha, W):
    """(n, T) constraint values (x_{iα} − x_{it})ᵀ W z_i, computed naively."""
    n = X.shape[0]
    D = X[np.arange(n), alpha][:, None, :] - X
    return np.einsum("itd,de,ie->it", D, W, Z)


def adjoint_of(X, Z, alpha, lam):
    """Σ_{i,t} λ_it (x_{iα} − x_{it}) z_iᵀ, computed naively."""
    n = X.shape[0]
    D = X[np.arange(n), alpha][:, None, :] - X
    return np.einsum("it,itd,ie->de", lam, D, Z)


def check_kkt(X, Z, alpha, res, p, *, stat_tol=1e-6, cs_tol=1e-6, feas_tol=1e-9, mask=None):
    """KKT of min ‖W‖_p s.t. margins ≥ 1 from scratch: feasibility, λ ≥ 0, complementary
    slackness Σλ(m−1)/Σλ, stationarity sign(W)|W/‖W‖_p|^{p−1} = G/‖G‖_q with G = Σλ A (checked as
    W/‖W‖_p = sign(G)|G/‖G‖_q|^{q−1} when p < 2)."""
    n, T, _ = X.shape
    if mask is None:
        mask = np.ones((n, T), bool)
        mask[np.arange(n), alpha] = False
    W = res.solution
    lam = res.dual
    q = p / (p - 1)
    m = margins_of(X, Z, alpha, W)
    assert np.all(m[mask] >= 1 - feas_tol), m[mask].min()
    np.testing.assert_allclose(res.margins[mask], m[mask], rtol=1e-9, atol=1e-9)
    assert np.all(np.isnan(res.margins[~mask]))
    assert np.all(lam >= 0) and np.all(lam[~mask] == 0)
    cs = float(np.sum(lam[mask] * (m[mask] - 1)) / lam.sum())
    assert 0 <= cs <= cs_tol, cs
    G = adjoint_of(X, Z, alpha, lam)
    # the same equation in its well-conditioned direction (exponent >= 1 on the rounded side)
    if p >= 2:
        lhs = np.sign(W) * np.abs(W / lp_norm(W, p)) ** (p - 1)
        rhs = G / lp_norm(G, q)
    else:
        lhs = W / lp_norm(W, p)
        rhs = np.sign(G) * np.abs(G / lp_norm(G, q)) ** (q - 1)
    assert np.abs(lhs - rhs).max() <= stat_tol, np.abs(lhs - rhs).max()
    # the certificate recomputed independently: res.dual is scaled to ‖Σλ A‖_q = 1
    assert abs(lp_norm(G, q) - 1.0) < 1e-9
    c = res.certificate
    assert abs(c.dual - lam.sum()) <= 1e-9 * c.dual
    assert abs(c.primal - lp_norm(W, p)) <= 1e-12 * c.primal
    assert c.dual <= c.primal * (1 + 1e-12)
    assert abs(c.max_violation - max(0.0, 1.0 - m[mask].min())) <= 1e-12
