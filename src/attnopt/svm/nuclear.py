r"""The nuclear-norm AttSVM of the (K, Q) parameterisation, ``min ‖W‖_* s.t. ⟨W, A_k⟩ ≥ 1``
with :math:`A_k = D_k z_k^\top` (:math:`D_k = x_{i\alpha_i} - x_{it}`), by a primal–dual
interior-point method on its semidefinite form — no cvxpy, no dense m × d² matrix.

SDP pair.  With :math:`B_k = \begin{pmatrix}0 & A_k\\ A_k^\top & 0\end{pmatrix}` (2d × 2d),

.. math::
   \text{(P)}\ \min_{X \succeq 0,\ x \ge 0} \operatorname{tr} X \ \text{ s.t. } \langle B_k, X\rangle - x_k = 1,
   \qquad
   \text{(D)}\ \max_{y} \textstyle\sum_k y_k \ \text{ s.t. } S = I - \sum_k y_k B_k \succeq 0,\ y \ge 0.

For X = [[P, W/2], [W/2ᵀ, R]] ⪰ 0 the smallest trace is ‖W‖_*, and ⟨B_k, X⟩ = ⟨A_k, W⟩, so (P)
is the SVM; S ⪰ 0 is ‖Σ y_k A_k‖_op ≤ 1, so (D) is its Lagrange dual (the operator norm is
the dual of the nuclear norm).  The method is Mehrotra's predictor–corrector with the HKM
direction (Helmberg–Rendl–Vanderbei–Wolkowicz; Kojima–Shindoh–Hara; Monteiro): each step solves
the m × m Schur system :math:`M\Delta y = h`, :math:`M_{kl} = \operatorname{tr}(B_k X B_l S^{-1})`
(+ x_k/y_k on the diagonal).  :math:`B_k = a_k b_k^\top + b_k a_k^\top` with
:math:`a_k = (D_k, 0)`, :math:`b_k = (0, z_k)`, so M is four Hadamard products of m × m
matrices such as :math:`D X_{11} D^\top` and :math:`Z_r X_{22} Z_r^\top` — O(m d² + m² d + m³) per
step, 11–15 steps on the benchmark instances (n = 30, T = 8, d = 16–64).

Certificate (recomputed from scratch every step, in float64): W = 2 X₁₂ rescaled to
W / min_k⟨W, A_k⟩ is feasible, so ‖W‖_* bounds the optimum from above; any y ≥ 0 gives the lower
bound Σy / ‖Σ y_k A_k‖_op.  The run stops when their relative gap is ≤ tol.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from attnopt.svm.problem import Problem

STEP_FRACTION = 0.98  # of the largest step that keeps X, S, x, y in their cones


@dataclass
class NuclearOutput:
    W: np.ndarray | None
    lam: np.ndarray | None
    status: str
    iterations: int
    time_s: float
    stats: dict = field(default_factory=dict)


def nuclear_certificate(prob: Problem, W: np.ndarray, lam: np.ndarray, tol: float, viol_tol: float) -> tuple:
    """``(W / min margin, λ / ‖Σλ_k A_k‖_op, stats)`` with the relative gap of the two bounds."""
    margins = prob.A(W)
    mmin = float(margins.min())
    if mmin > 0:
        W, margins = W / mmin, margins / mmin
    primal = float(np.linalg.norm(W, "nuc"))
    lam = np.clip(lam, 0.0, None)
    gop = float(np.linalg.norm(prob.AT(lam), 2))
    lam_s = lam / gop if gop > 0 else np.zeros_like(lam)
    dual = float(lam_s.sum())
    gap = primal - dual if mmin > 0 else math.inf
    rel = gap / primal if primal > 0 and mmin > 0 else math.inf
    viol = max(0.0, 1.0 - float(margins.min()))
    return W, lam_s, dict(primal=primal, dual=dual, gap=gap, rel_gap=rel, max_violation=viol,
                          converged=bool(rel <= tol and viol <= viol_tol))


def _inv_factors(X: np.ndarray, S: np.ndarray) -> list[np.ndarray]:
    """[L⁻¹ of X = L Lᵀ, L⁻¹ of S = L Lᵀ] (both ≻ 0): one batched Cholesky call, then LAPACK's
    triangular inverse (less call overhead than a triangular solve against the identity)."""
    out = []
    for L in np.linalg.cholesky(np.stack((X, S))):
        Li, info = sla.lapack.dtrtri(L, lower=1)
        if info != 0:  # pragma: no cover - a Cholesky factor has a nonzero diagonal
            raise np.linalg.LinAlgError(f"dtrtri failed (info = {info})")
        out.append(np.tril(Li))
    return out


def _max_steps(LXi: np.ndarray, dX: np.ndarray, LSi: np.ndarray, dS: np.ndarray) -> tuple[float, float]:
    """The largest α ≤ 1 with X + α dX ⪰ 0, and the same for S + α dS, from the smallest
    eigenvalue λ of L⁻¹ dX L⁻ᵀ (``LXi`` = L⁻¹ of X = L Lᵀ): α = min(1, −1/λ) when λ < 0.  Both
    in one batched eigvalsh call (the per-call overhead is most of its cost at 2d = 32)."""
    lam = np.linalg.eigvalsh(np.stack((LXi @ dX @ LXi.T, LSi @ dS @ LSi.T)))[:, 0]
    return tuple(1.0 if v >= 0 else min(1.0, -1.0 / v) for v in lam.tolist())


def _ratio(x: np.ndarray, dx: np.ndarray) -> float:
    """The largest α ≤ 1 with x + α dx ≥ 0 (x > 0): min over dx_k < 0 of −x_k/dx_k = −1 / min(dx/x)."""
    r = float(np.min(dx / x))
    return 1.0 if r >= -1.0 else -1.0 / r


_BLAS = []  # the cached threadpoolctl controller ([] until first use, [None] without threadpoolctl)


def _one_blas_thread():
    """OpenBLAS threads make these small products slower, and much slower on a loaded machine
    (163 ms against about 5 s at d = 16 with the default threads, load average 7).  The
    controller is built once: ``threadpool_limits`` rescans the loaded libraries on every call
    (about 0.8 ms, 4 % of a d = 16 solve), a cached controller's ``limit`` does not."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS.append(ThreadpoolController())
        except ImportError:  # pragma: no cover - threadpoolctl comes with scipy's usual installs
            _BLAS.append(None)
    return contextlib.nullcontext() if _BLAS[0] is None else _BLAS[0].limit(limits=1)


class _Schur:
    r"""Builds :math:`M_{kl} = \operatorname{tr}(B_k X B_l S^{-1})` into one reused m × m buffer.

    With :math:`B_k = a_k b_k^\top + b_k a_k^\top`, :math:`a_k = (D_k, 0)`, :math:`b_k = (0, z_{i_k})`:

    .. math::
       M = (D X_{11} D^\top) \circ (Z_r S^{-1}_{22} Z_r^\top) + (Z_r X_{22} Z_r^\top) \circ (D S^{-1}_{11} D^\top)
           + C + C^\top,\qquad C = (D X_{12} Z_r^\top)^\top \circ (D S^{-1}_{12} Z_r^\top).

    The queries repeat per sample (:math:`Z_r = E Z`, E the m × n selector), so the Z-side
    factors are n × n or m × n, expanded to m × m by ``np.repeat`` over the per-sample counts
    (``rows`` is sorted): a contiguous copy, faster than fancy indexing or broadcasting over
    the short per-sample axis.
    """

    def __init__(self, D: np.ndarray, Z: np.ndarray, rows: np.ndarray):
        if np.any(np.diff(rows) < 0):
            raise ValueError("the constraints must be sorted by sample")
        self.D, self.Z = D, Z
        counts = np.bincount(rows, minlength=len(Z))
        self.rep = int(counts[0]) if np.all(counts == counts[0]) else counts  # a scalar repeats faster
        self.M = np.empty((len(D), len(D)))
        self.T = np.empty((len(D), len(D)))

    def _expand(self, P: np.ndarray) -> np.ndarray:
        """E P Eᵀ (m × m) of an n × n matrix P."""
        return np.repeat(np.repeat(P, self.rep, axis=0), self.rep, axis=1)

    def __call__(self, X: np.ndarray, Si: np.ndarray, diag: np.ndarray) -> np.ndarray:
        D, Z, M, T, d, rep = self.D, self.Z, self.M, self.T, self.D.shape[1], self.rep
        np.matmul(D @ X[:d, :d], D.T, out=T)  # D X₁₁ Dᵀ
        np.multiply(T, self._expand(Z @ Si[d:, d:] @ Z.T), out=M)
        np.matmul(D @ Si[:d, :d], D.T, out=T)  # D S⁻¹₁₁ Dᵀ
        T *= self._expand(Z @ X[d:, d:] @ Z.T)
        M += T
        # C[k, l] = (D X₁₂ Zᵀ)[l, i_k] · (D S⁻¹₁₂ Zᵀ)[k, i_l]
        np.multiply(np.repeat((D @ X[:d, d:] @ Z.T).T, rep, axis=0), np.repeat(D @ Si[:d, d:] @ Z.T, rep, axis=1), out=T)
        M += T
        M += T.T
        M.ravel()[:: len(M) + 1] += diag
        return M


def solve_nuclear(prob: Problem, *, tol: float = 1e-6, viol_tol: float = 1e-7, max_iter: int | None = None,
                  time_limit: float | None = None) -> NuclearOutput:
    """Interior-point solve of the nuclear-norm AttSVM (see the module docstring)."""
    with _one_blas_thread():
        return _solve(prob, tol, viol_tol, max_iter, time_limit)


def _solve(prob: Problem, tol: float, viol_tol: float, max_iter: int | None, time_limit: float | None) -> NuclearOutput:
    t0 = time.perf_counter()
    d, m = prob.d, prob.m
    D, Z, rows = prob.D, prob.Z, prob.rows
    Zr = Z[rows]  # (m, d): the query of each constraint
    nu = 2 * d + m  # barrier parameter of the cone
    # the data are at unit scale (att_problem), so the identity is a central enough start
    X, x = np.eye(2 * d), np.ones(m)
    S, s = np.eye(2 * d), np.ones(m)
    y = np.zeros(m)
    schur = _Schur(D, Z, rows)
    max_iter = 100 if max_iter is None else int(max_iter)
    best = None
    status, it = "max_iter", 0

    def A_op(Xs, xs):  # 𝒜(X, x)_k = ⟨B_k, X⟩ − x_k = 2 D_k·(X₁₂ z_k) − x_k
        return 2.0 * np.einsum("kd,kd->k", D @ Xs[:d, d:], Zr) - xs

    def AT_sdp(v):  # Σ v_k B_k
        G = D.T @ (v[:, None] * Zr)
        out = np.zeros((2 * d, 2 * d))
        out[:d, d:], out[d:, :d] = G, G.T
        return out

    for it in range(1, max_iter + 1):
        LXi, LSi = _inv_factors(X, S)
        Si = LSi.T @ LSi
        rp = 1.0 - A_op(X, x)
        Rd = np.eye(2 * d) - AT_sdp(y) - S
        rd = y - s
        mu = (np.vdot(X, S) + x @ s) / nu
        M = schur(X, Si, x / s)  # + δ_kl x_k / s_k
        # LAPACK directly (upper triangle, in place, no copy): the scipy wrappers' checks and copy cost
        # ~10 % of the 210 × 210 factorisation at d = 16
        cho, info = sla.lapack.dpotrf(M.T, lower=0, clean=0, overwrite_a=1)  # M.T: Fortran order, M symmetric
        if info != 0:
            status = "inaccurate"
            break

        G = X @ Rd @ Si
        h0 = rp + A_op(0.5 * (G + G.T), x * rd / s)  # the part of the right-hand side both directions share

        def direction(Rc, rc):
            """HKM direction for the complementarity right-hand sides (Rc for X, rc for x)."""
            h = h0 - A_op(Rc, rc)
            dy = sla.lapack.dpotrs(cho, h, lower=0)[0]
            dS = Rd - AT_sdp(dy)
            ds = rd + dy
            H = X @ dS @ Si
            return Rc - 0.5 * (H + H.T), rc - x * ds / s, dy, dS, ds

        # predictor (σ = 0), then Mehrotra's corrector with σ = (μ_aff/μ)²: the square took 369
        # iterations over 32 random instances (n ≤ 100, d ≤ 64) against 405 for the first power
        # and 407 for the cube (Mehrotra's usual choice)
        dX, dx, dy, dS, ds = direction(-X, -x)
        aX, aS = _max_steps(LXi, dX, LSi, dS)
        ap, ad = min(aX, _ratio(x, dx)), min(aS, _ratio(s, ds))
        mu_aff = (np.vdot(X + ap * dX, S + ad * dS) + (x + ap * dx) @ (s + ad * ds)) / nu
        sigma = min(1.0, (mu_aff / mu) ** 2)
        C = dX @ dS @ Si
        dX, dx, dy, dS, ds = direction(sigma * mu * Si - X - 0.5 * (C + C.T), sigma * mu / s - x - dx * ds / s)
        aX, aS = _max_steps(LXi, dX, LSi, dS)
        ap, ad = STEP_FRACTION * min(aX, _ratio(x, dx)), STEP_FRACTION * min(aS, _ratio(s, ds))
        X, x = X + ap * dX, x + ap * dx
        y, S, s = y + ad * dy, S + ad * dS, s + ad * ds
        X, S = 0.5 * (X + X.T), 0.5 * (S + S.T)
        W = 2.0 * X[:d, d:]
        # certify (an SVD and two products) once the complementarity is near the target
        near = np.vdot(X, S) + x @ s <= 10 * tol * max(1.0, float(np.trace(X)))
        if near and prob.A(W).min() > 0:
            Wc, lam, stats = nuclear_certificate(prob, W, y, tol, viol_tol)
            if best is None or stats["rel_gap"] < best[2]["rel_gap"]:
                best = (Wc, lam, stats)
            if stats["converged"]:
                status = "optimal"
                break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            status = "time_limit"
            break
    elapsed = time.perf_counter() - t0
    if best is None:  # no iterate with all margins positive: infeasible, or out of budget
        W = 2.0 * X[:d, d:]
        return NuclearOutput(None, None, status, it, elapsed, nuclear_certificate(prob, W, y, tol, viol_tol)[2])
    return NuclearOutput(best[0], best[1], status, it, elapsed, best[2])


__all__ = ["NuclearOutput", "solve_nuclear", "nuclear_certificate"]
