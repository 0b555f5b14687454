r"""Fast certified solver for the ℓp attention SVMs (issue #3).

Problem
-------
``min ‖W‖_p  s.t.  ⟨W, A_k⟩ ≥ 1`` (k = 1..m), entrywise norm, ``q = p/(p−1)``.  For the
ℓp-AttSVM ``A_{it} = (x_{iα_i} − x_{it}) z_iᵀ`` (rank one); for the decoder SVM
``A_i = Y_i x_{iα_i}``.  Only two products are ever formed (:class:`Ops`):
``A(W)_{it} = (x_{iα_i} − x_{it})ᵀ (W z_i)`` and ``Aᵀλ = Uᵀ Z`` with
``U_i = Σ_t λ_it (x_{iα_i} − x_{it})`` — a batched contraction and a matrix product each,
O(n·T·d + n·d²) work and no m × d² matrix.

Dual (the first phase for every p; the whole run for p ≤ 2)
-----------------------------------------------------------
The minimiser is also that of ``min ½‖W‖_p²`` under the same constraints, whose Lagrange dual
is the smooth bound-constrained problem

    ``max_{λ ≥ 0}  Σ_k λ_k − ½‖Aᵀλ‖_q²``      (conjugate of ½‖·‖_p² is ½‖·‖_q²).

Its gradient is ``1 − A(W(λ))`` with the primal recovery (duality map)

    ``W(λ) = ∇(½‖·‖_q²)(G) = ‖G‖_q^{2−q} sign(G) |G|^{q−1}``,   ``G = Aᵀλ``,

so one evaluation is one ``Aᵀ``, one entrywise power and one ``A``.  At the optimum
``W(λ*) = W*`` and ``Σλ* = ‖W*‖_p²``.  The ½‖·‖² form (rather than (1/q)‖·‖_q^q) is
2-homogeneous, so its curvature does not depend on the overall scale of λ: with q = 11
(p = 1.1) the q-th-power form has curvature varying like |G|⁹ along the iterates.  The powers are
taken of ``G / max|G|`` (no overflow; entries below 1e-30 of the largest underflow to 0, their
true relative size).  The dual is solved by a projected L-BFGS (two-metric projection,
compact-form inverse Hessian, Armijo backtracking along the projection arc) written once for a
numpy backend (small CPU problems, where per-operation overhead dominates: ~1 µs vs ~8 µs per
torch call) and a torch backend (large problems, and any torch device, CUDA included; one
intra-op thread on CPU unless ``threads`` says otherwise).

Switch to a primal augmented Lagrangian (p > 2, when the dual stalls)
--------------------------------------------------------------------
For q < 2 the recovery ``G ↦ |G|^{q−1}`` is only Hölder continuous where entries of G cross
zero; the dual curvature ~|G_j|^{q−2} blows up there and quasi-Newton slows down or stalls
(measured, dual alone, on random unit-norm instances: p = 3 took 92–618 evaluations at
n=50,T=10,d=32 and n=100,T=16,d=64 but 1,250 at n=1000,T=11,d=384; p = 4 up to 2,250 or no
convergence in 6,000; p ≥ 6 never converged in 6,000).  ``½‖W‖_p²`` is C² for p ≥ 2, so for
p > 2 the run watches the gap and, when it improved less than 2× over the last 40 evaluations,
continues with an augmented Lagrangian on the primal, warm-started from the dual's best pair
(``W₀ = W(λ)/min margin``, ``μ₀ = λ``; the ALM multipliers are the same λ as in the dual):
``min_W ½‖W‖_p² + (1/2ρ)(‖max(0, μ − ρ(A W − 1))‖² − ‖μ‖²)`` by L-BFGS to a decreasing gradient
tolerance, then ``μ ← max(0, μ − ρ(AW − 1))``, ρ ×4 when the violation did not drop 4×.
Measured (evaluations to a 1e-6 gap, same instances, 2 seeds each): p = 2.5–3: 55–225
(n ≤ 100) and 165–166 at d = 384; p = 4–6: 322–471; p = 10: 658–1,092.

Certificate (every evaluation; why it is valid)
-----------------------------------------------
Each evaluation yields a pair (W, λ ≥ 0): ``(W(λ), λ)`` on the dual path,
``(W, λ̃ = max(0, μ − ρ(AW − 1)))`` on the ALM path.  Weak duality: for any feasible W' and
λ ≥ 0, ``Σλ ≤ Σλ_k⟨W', A_k⟩ = ⟨W', Aᵀλ⟩ ≤ ‖W'‖_p ‖Aᵀλ‖_q``, so ``Σλ / ‖Aᵀλ‖_q`` is a lower
bound on the optimum; ``W / min_k⟨W, A_k⟩`` is feasible when the smallest margin is positive, so
``‖W‖_p / min_k⟨W, A_k⟩`` is an upper bound.  The run keeps the pair with the smallest relative
gap and stops when it is ≤ tol/2; the returned certificate is then recomputed from scratch in
float64 numpy (:func:`attnopt.svm.problem.certify`), and ``converged`` is judged on that.  The
returned W is the rescaled one (max violation 0 up to rounding).  Budgets (``max_iter``
evaluations, ``time_limit``) end the run with status "max_iter"/"time_limit" and the best
certified pair so far.

Infeasibility: a problem is infeasible iff some λ ≥ 0, λ ≠ 0 has ``Aᵀλ = 0`` (Gordan).  The dual
objective is then unbounded along that ray; when ``‖Aᵀλ‖_q ≤ 1e-11 Σλ max_k‖A_k‖`` the run stops
and the caller names the samples with small LPs (:func:`attnopt.svm.infeasible.explain_infeasibility`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from attnopt.svm._backend import _NumpyBackend, _TorchBackend
from attnopt.svm._lbfgs import _plbfgs
from attnopt.svm.problem import Problem

#: dual+ALM path: switch when the best gap improved less than FACTOR× over the last WINDOW evaluations
STALL_WINDOW = (40, 2.0)
#: problems with n·d² at most this run on the numpy backend on CPU (small-op overhead)
NUMPY_MAX_WORK = 2_000_000


class _Infeasible(Exception):
    """Internal: the dual iterates carry a (near) Farkas certificate of infeasibility."""


class _Done(Exception):
    """Internal: stop the run (target reached, or out of budget)."""


class _Switch(Exception):
    """Internal: the dual iteration stalls (p > 2); continue with the primal ALM."""


# --------------------------------------------------------------------------------------
# structured operators


class Ops:
    """``A(W)`` and ``Aᵀ(λ)`` of a packed problem on a backend.

    The attention constraints are laid out padded, ``Dp`` of shape (n, K, d) with K the largest
    number of constraints of a sample and zero rows in unused slots, so both products are one
    batched contraction and one matrix product:
    ``Aᵀλ = (Σ_k λ_ik Dp_ik)ᵀ Z`` and ``A(W)_ik = Dp_ik · (Z Wᵀ)_i``.  No (m × d²) matrix.
    """

    def __init__(self, prob: Problem, be):
        self.be = be
        self.att = prob.kind == "att"
        self.n, self.d, self.m = prob.n, prob.d, prob.m
        self.shape = (prob.d, prob.d) if self.att else (prob.d,)
        if self.att:
            counts = np.bincount(prob.rows, minlength=prob.n)
            K = int(counts.max())
            self.K = K
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            slot = np.arange(prob.m) - starts[prob.rows]  # rank of constraint k within its sample
            pad = prob.rows * K + slot
            self.dense_layout = bool(np.all(counts == K))  # then pad is the identity
            Dp = np.zeros((prob.n * K, prob.d))
            Dp[pad] = prob.D
            self.Dp = be.asarray(Dp.reshape(prob.n, K, prob.d))
            self.Z = be.asarray(prob.Z)
            self.pad = pad if be.name == "numpy" else torch.as_tensor(pad, device=be.device)
            rn = np.linalg.norm(prob.D, axis=1) * np.linalg.norm(prob.Z[prob.rows], axis=1)
        else:
            self.D = be.asarray(prob.D)
            rn = np.linalg.norm(prob.D, axis=1)
        self.row_norms = rn  # Frobenius norms of the A_k (numpy)

    def _padded(self, lam):
        if self.dense_layout:
            return lam.reshape(self.n, self.K)
        lp = self.be.zeros(self.n * self.K)
        lp[self.pad] = lam
        return lp.reshape(self.n, self.K)

    def AT(self, lam):
        if self.att:
            U = (self._padded(lam)[:, None, :] @ self.Dp)[:, 0, :]  # (n, d): Σ_k λ_ik D_ik
            return U.T @ self.Z
        return self.D.T @ lam

    def A(self, W):
        if self.att:
            V = self.Z @ W.T  # row i: W z_i
            marg = (self.Dp @ V[:, :, None]).reshape(-1)
            return marg if self.dense_layout else marg[self.pad]
        return self.D @ W


def grad_half_sq_norm(be, G, r: float):
    """``(∇ ½‖G‖_r², ‖G‖_r)`` with ``∇ ½‖G‖_r² = ‖G‖_r^{2−r} sign(G)|G|^{r−1}``.

    Evaluated after dividing by ``max|G|``, so neither ``|G|^{r−1}`` nor the norm overflows or
    underflows as a whole for large exponents (r = 11 at p = 1.1); entries below ~1e-30 of the
    largest one round to 0, which is their true relative size.
    """
    a = abs(G)
    mx = float(a.max())
    if mx == 0.0:
        return G * 0.0, 0.0
    a = a * (1.0 / mx)
    ar = a ** (r - 1.0)
    nr = float((ar * a).sum()) ** (1.0 / r)
    grad = be.sign(G) * ar * (mx * nr ** (2.0 - r))
    return grad, mx * nr


def lr_norm(G, r: float) -> float:
    a = abs(G)
    mx = float(a.max())
    if mx == 0.0:
        return 0.0
    return mx * float(((a * (1.0 / mx)) ** r).sum()) ** (1.0 / r)


# --------------------------------------------------------------------------------------
# solver driver


@dataclass
class FastOutput:
    W: Optional[np.ndarray]
    lam: Optional[np.ndarray]
    status: str
    iterations: int
    time_s: float
    info: dict = field(default_factory=dict)


class _Tracker:
    """Keeps the best certified iterate and decides when to stop."""

    def __init__(self, be, tol: float, deadline: Optional[float], max_evals: int):
        self.be = be
        self.tol = tol
        self.deadline = deadline
        self.max_evals = max_evals
        self.evals = 0
        self.best_rel = math.inf
        self.best_upper = math.inf  # smallest primal bound seen, and its W
        self.best_lower = 0.0  # largest dual bound seen, and its λ
        self._W = None
        self._lam = None
        self.reason = None
        self.stall_window = None  # (window, factor): raise _Switch when the gap stalls
        self._hist: list = []

    @property
    def best(self):
        """(W with the smallest upper bound, λ with the largest lower bound), or None."""
        if self._W is None or self._lam is None:
            return None
        return self._W, self._lam

    def offer(self, W, lam, marg_min: float, wp: float, lam_sum: float, gq: float):
        """(W, λ): W's p-norm ``wp`` and smallest margin, λ's sum and ‖Aᵀλ‖_q.  The bounds are
        kept separately (any feasible W bounds any dual-feasible λ), so the gap is
        min upper − max lower over all evaluations so far."""
        self.evals += 1
        if marg_min > 0 and wp / marg_min < self.best_upper:
            self.best_upper = wp / marg_min
            self._W = self.be.copy(W)
        if gq > 0 and lam_sum > 0 and lam_sum / gq > self.best_lower:
            self.best_lower = lam_sum / gq
            self._lam = self.be.copy(lam)
        if self.best is not None:
            self.best_rel = (self.best_upper - self.best_lower) / self.best_upper
            if self.best_rel <= 0.5 * self.tol:
                self.reason = "optimal"
                raise _Done()
        if self.evals >= self.max_evals:
            self.reason = "max_iter"
            raise _Done()
        if self.stall_window is not None:
            window, factor = self.stall_window
            self._hist.append(self.best_rel)
            if len(self._hist) > window and self.best is not None and \
                    self.best_rel > self._hist[-1 - window] / factor:
                raise _Switch()
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.reason = "time_limit"
            raise _Done()


def _dual(ops: Ops, q: float, tr: _Tracker, memory: int = 20):
    r"""Projected L-BFGS on the smooth dual ``min_{λ≥0} ½‖Aᵀλ‖_q² − Σλ``; its gradient is
    ``A(W(λ)) − 1`` with ``W(λ) = ∇½‖·‖_q²(Aᵀλ)``."""
    be = ops.be
    m = ops.m
    anorm = float(ops.row_norms.max())

    def fg(lam):
        G = ops.AT(lam)
        W, gq = grad_half_sq_norm(be, G, q)
        s = float(lam.sum())
        marg = ops.A(W)
        if s > 0 and gq <= 1e-11 * s * anorm:
            raise _Infeasible()
        # ‖W(λ)‖_p = ‖Aᵀλ‖_q exactly (the ½‖·‖² duality map preserves the norm)
        tr.offer(W, lam, float(marg.min()), gq, s, gq)
        return 0.5 * gq * gq - s, marg - 1.0

    ones = be.ones(m)
    g1 = lr_norm(ops.AT(ones), q)
    x0 = ones * (m / g1**2 if g1 > 0 else 1.0)  # the best multiple of the all-ones vector
    _plbfgs(be, fg, x0, bounded=True, memory=memory)
    tr.reason = tr.reason or "stalled"


def _primal_alm(ops: Ops, p: float, q: float, tr: _Tracker, rho: Optional[float] = None, inner_max: int = 500,
                memory: int = 20, omega0: float = 1e-2, omega_decay: float = 0.3, rho_mult: float = 3.0,
                verbose: bool = False, W0=None, mu0=None):
    r"""Augmented Lagrangian on the primal ``min ½‖W‖_p² s.t. A W ≥ 1`` (smooth for p ≥ 2):
    inner L-BFGS on ``½‖W‖_p² + (1/2ρ)(‖max(0, μ − ρ(AW − 1))‖² − ‖μ‖²)``, outer
    ``μ ← max(0, μ − ρ(AW − 1))``.  The certificate uses ``λ̃ = max(0, μ − ρ(AW − 1))``."""
    be = ops.be
    m = ops.m
    if W0 is None:
        W0, _ = grad_half_sq_norm(be, ops.AT(be.ones(m)), q)
        W0 = W0 * (1.0 / float(ops.A(W0).min()))
    if rho is None:
        # rho_mult × (mean diagonal curvature of ½‖W‖_p² at W0) / (mean squared norm of the A_k)
        nw = lr_norm(W0, p)
        h = (p - 1.0) * float(((abs(W0) * (1.0 / nw)) ** (p - 2.0)).mean())
        rho = rho_mult * h / float(np.mean(ops.row_norms**2))
    state = dict(mu=be.zeros(m) if mu0 is None else mu0, rho=rho)

    def fg(x):
        W = x.reshape(ops.shape)
        gW, nw = grad_half_sq_norm(be, W, p)
        marg = ops.A(W)
        mu, r = state["mu"], state["rho"]
        lt = be.clamp0(mu - r * (marg - 1.0))
        G = ops.AT(lt)
        val = 0.5 * nw * nw + (float(lt @ lt) - float(mu @ mu)) / (2 * r)
        tr.offer(W, lt, float(marg.min()), nw, float(lt.sum()), lr_norm(G, q))
        return val, (gW - G).reshape(-1)

    x = W0.reshape(-1)
    prev_viol = math.inf
    gscale = float(be.norm(grad_half_sq_norm(be, W0, p)[0]))
    omega = omega0
    while True:
        e0 = tr.evals
        x = _plbfgs(be, fg, x, bounded=False, memory=memory, max_iter=inner_max, gtol=omega * gscale)
        omega = max(omega * omega_decay, 1e-14)
        marg = ops.A(x.reshape(ops.shape))
        if verbose:
            print(f"  alm outer: inner evals {tr.evals - e0}, viol {float(be.clamp0(1.0 - marg).max()):.2e}, "
                  f"rho {state['rho']:.2e}, best rel {tr.best_rel:.2e}")
        viol = float(be.clamp0(1.0 - marg).max())
        state["mu"] = be.clamp0(state["mu"] - state["rho"] * (marg - 1.0))
        if viol > 0.25 * prev_viol:
            state["rho"] *= 4.0
        prev_viol = viol


def solve_fast(prob: Problem, *, tol: float = 1e-6, max_iter: Optional[int] = None, device=None,
               time_limit: Optional[float] = None, threads: Optional[int] = None, method: str = "auto",
               backend: str = "auto", memory: int = 20) -> FastOutput:
    """Run the fast solver; returns the best certified iterate (W, λ) found (as numpy)."""
    p, q = prob.p, prob.q
    if method == "auto":
        method = "dual" if p <= 2.0 else "dual+alm"
    if method not in ("dual", "alm", "dual+alm"):
        raise ValueError(f"unknown fast method {method!r}")
    if max_iter is None:
        max_iter = 50_000
    work = prob.n * prob.d * (prob.d if prob.kind == "att" else 1)
    on_cpu = device is None or torch.device(device).type == "cpu"
    if backend == "auto":
        backend = "numpy" if on_cpu and work <= NUMPY_MAX_WORK else "torch"
    if backend == "numpy":
        if not on_cpu:
            raise ValueError("backend='numpy' runs on the CPU only; use backend='torch' with a device")
        be = _NumpyBackend()
    elif backend == "torch":
        if threads is None and on_cpu:
            # one intra-op thread by default: on the shared 2-core machine two threads were 3×
            # slower per evaluation under load (188 vs 61 ms at n=1000, T=11, d=384)
            threads = 1
        be = _TorchBackend(device, threads)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + float(time_limit)
    tr = _Tracker(be, tol, deadline, max_iter)
    infeasible = False
    switched_at = None
    with be.threads():
        ops = Ops(prob, be)
        try:
            if method == "dual":
                _dual(ops, q, tr, memory=memory)
            elif method == "alm":
                _primal_alm(ops, p, q, tr, memory=memory)
            else:  # dual while it makes progress, then the ALM warm-started from its best pair
                tr.stall_window = STALL_WINDOW
                try:
                    _dual(ops, q, tr, memory=memory)
                    raise _Switch()  # the dual stopped by itself short of the target
                except _Switch:
                    tr.stall_window = None
                    tr.reason = None
                    switched_at = tr.evals
                    if tr.best is not None:
                        W, lam = tr.best
                        _primal_alm(ops, p, q, tr, memory=memory, W0=W * (1.0 / float(ops.A(W).min())), mu0=lam)
                    else:
                        _primal_alm(ops, p, q, tr, memory=memory)
        except _Done:
            pass
        except _Infeasible:
            infeasible = True
    elapsed = time.perf_counter() - t0
    info = dict(method=f"fast-{method}", evaluations=tr.evals, stop=tr.reason, backend=be.name,
                switched_to_alm_at=switched_at)
    if infeasible:
        return FastOutput(None, None, "infeasible", tr.evals, elapsed, info)
    if tr.best is None:
        return FastOutput(None, None, tr.reason or "inaccurate", tr.evals, elapsed, info)
    W, lam = tr.best
    return FastOutput(be.to_numpy(W).copy(), be.to_numpy(lam).copy(), tr.reason or "inaccurate", tr.evals,
                      elapsed, info)
