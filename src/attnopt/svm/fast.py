r"""Fast certified solver for the ℓp attention SVMs (issue #3).

Problem (notation of :mod:`attnopt.svm.problem`): ``min ‖W‖_p s.t. ⟨W, A_k⟩ ≥ 1`` (k = 1..m),
entrywise norm, q = p/(p−1).  For the ℓp-AttSVM ``A_{it} = (x_{iα_i} − x_{it}) z_iᵀ``; for the
decoder SVM ``A_i = Y_i x_{iα_i}``.

METHOD: (docstring finalised below, see ``__doc__`` extension at the end of the module).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import scipy.linalg as sla
import torch

from attnopt.svm.problem import Problem

#: above this p the primal augmented-Lagrangian path is used (see the module docstring)
P_SWITCH = 3.0
#: problems with n·d² at most this run on the numpy backend on CPU (small-op overhead)
NUMPY_MAX_WORK = 2_000_000


class _Infeasible(Exception):
    """Internal: the dual iterates carry a (near) Farkas certificate of infeasibility."""


class _Done(Exception):
    """Internal: stop the run (target reached, or out of budget)."""


# --------------------------------------------------------------------------------------
# array backend: the same solver code runs on numpy (small CPU problems: ~1 µs per
# operation instead of ~8) and on torch (large problems, any device)


class _NumpyBackend:
    name = "numpy"

    def __init__(self):
        self.dtype = np.float64

    def asarray(self, x):
        return np.array(x, dtype=np.float64, copy=True)

    def to_numpy(self, x):
        return np.asarray(x)

    def zeros(self, shape):
        return np.zeros(shape)

    def ones(self, shape):
        return np.ones(shape)

    def clamp0(self, x):
        return np.maximum(x, 0.0)

    def norm(self, x, axis=None):
        return np.linalg.norm(x, axis=axis)

    def sign(self, x):
        return np.sign(x)

    def mask(self, cond):
        return cond.astype(np.float64)

    def triu(self, M):
        return np.triu(M)

    def diagonal(self, M):
        return np.diagonal(M)

    def diagm(self, v):
        return np.diag(v)

    def solve_tri(self, R, b, upper):
        return sla.solve_triangular(R, b, lower=not upper, check_finite=False)

    def cat_rows(self, S, v):
        return np.concatenate([S, v[None, :]], axis=0)

    def all_finite(self, x):
        return bool(np.all(np.isfinite(x)))

    def copy(self, x):
        return x.copy()

    def threads(self):
        return contextlib.nullcontext()


class _TorchBackend:
    name = "torch"

    def __init__(self, device=None, threads: Optional[int] = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = torch.float64
        self._threads = threads

    def asarray(self, x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device).clone()

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def zeros(self, shape):
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def ones(self, shape):
        return torch.ones(shape, device=self.device, dtype=self.dtype)

    def clamp0(self, x):
        return torch.clamp(x, min=0.0)

    def norm(self, x, axis=None):
        return torch.linalg.vector_norm(x, dim=axis)

    def sign(self, x):
        return torch.sign(x)

    def mask(self, cond):
        return cond.to(self.dtype)

    def triu(self, M):
        return torch.triu(M)

    def diagonal(self, M):
        return torch.diagonal(M)

    def diagm(self, v):
        return torch.diag(v)

    def solve_tri(self, R, b, upper):
        return torch.linalg.solve_triangular(R, b.unsqueeze(1), upper=upper).squeeze(1)

    def cat_rows(self, S, v):
        return torch.cat([S, v.unsqueeze(0)], dim=0)

    def all_finite(self, x):
        return bool(torch.isfinite(x).all())

    def copy(self, x):
        return x.clone()

    @contextlib.contextmanager
    def threads(self):
        """Temporarily set torch's intra-op thread count (restored afterwards)."""
        if self._threads is None:
            yield
            return
        old = torch.get_num_threads()
        torch.set_num_threads(int(self._threads))
        try:
            yield
        finally:
            torch.set_num_threads(old)


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
            self.DpT = self.Dp.transpose(0, 2, 1) if be.name == "numpy" else self.Dp.transpose(1, 2)
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
# projected L-BFGS


def _lbfgs_direction(be, g, S, Y, gamma: float):
    r"""``H g`` for the L-BFGS inverse-Hessian approximation in compact form (Byrd, Nocedal &
    Schnabel 1994), ``H0 = γ I``: with S, Y the (k, m) stored pairs (rows), ``R = triu(S Yᵀ)``,
    ``D = diag(S Yᵀ)``, ``a = S g``, ``b = Y g``, ``r = R⁻¹ a``:
    ``H g = γ g + Sᵀ R⁻ᵀ((D + γ Y Yᵀ) r − γ b) − γ Yᵀ r`` — a handful of array operations
    whatever k is (the two-loop recursion needs O(k) small ones)."""
    SY = S @ Y.T
    YY = Y @ Y.T
    R = be.triu(SY)
    a = S @ g
    b = Y @ g
    r = be.solve_tri(R, a, upper=True)
    rhs = be.diagonal(SY) * r + gamma * (YY @ r) - gamma * b
    top = be.solve_tri(R.T, rhs, upper=False)
    return gamma * g + S.T @ top - gamma * (Y.T @ r)


def _plbfgs(be, fg, x, *, bounded: bool, memory: int = 20, max_iter: int = 10**9, gtol: float = 0.0):
    r"""Projected L-BFGS for ``min f(x)`` (s.t. ``x ≥ 0`` when ``bounded``).

    Two-metric projection (Bertsekas 1982; Kim, Sra & Dhillon 2010): the coordinates within ε
    of the bound with a positive gradient are sent to the bound; on the other ("free")
    coordinates the direction is the L-BFGS product with the stored pairs restricted to them
    (pairs whose restricted curvature sᵀy is not positive are dropped); the step is a
    backtracking Armijo search along the projection arc ``P(x + t d)``.  Returns ``x``.
    ``fg(x)`` returns ``(f, g)`` (f a float) and may raise to stop the run.
    """
    f, g = fg(x)
    S = be.zeros((0, x.shape[0]))
    Y = be.zeros((0, x.shape[0]))
    fails = 0
    it = 0
    eps_mach = float(np.finfo(np.float64).eps)
    while it < max_iter:
        it += 1
        if bounded:
            pg = x - be.clamp0(x - g)
            eps = min(float(be.norm(pg)), 1e-3 * float(x.max()) + 1e-300)
            F = be.mask(~((x <= eps) & (g > 0)))
            gF = g * F
            SF, YF = S * F, Y * F
        else:
            F = None
            gF = g
            SF, YF = S, Y
            if gtol > 0 and float(be.norm(g)) <= gtol:
                return x
        d = None
        if S.shape[0]:
            sy = (SF * YF).sum(1)
            keep = sy > 1e-10 * be.norm(SF, axis=1) * be.norm(YF, axis=1)
            if not bool(keep.all()):
                SF, YF, sy = SF[keep], YF[keep], sy[keep]
            if SF.shape[0]:
                gamma = float(sy[-1]) / float(YF[-1] @ YF[-1])
                d = -_lbfgs_direction(be, gF, SF, YF, gamma)
                if not be.all_finite(d):
                    d = None
        if d is None:
            d = gF * (-max(float(abs(x).max()), 1e-3) / max(float(abs(gF).max()), 1e-300))
        if F is not None:
            d = d * F - x * (1.0 - F)  # held coordinates go straight to the bound
        if not float(g @ d) < 0:  # not a descent direction: restart from the scaled gradient
            S, Y = S[:0], Y[:0]
            d = gF * (-max(float(abs(x).max()), 1e-3) / max(float(abs(gF).max()), 1e-300))
            if F is not None:
                d = d - x * (1.0 - F)
            if not float(g @ d) < 0:
                return x
        # backtracking Armijo along the projection arc
        t = 1.0
        slack = 4 * eps_mach * abs(f)
        for ls in range(50):
            xn = x + t * d
            if bounded:
                xn = be.clamp0(xn)
            fn, gn = fg(xn)
            dec = float(g @ (xn - x))
            if math.isfinite(fn) and fn <= f + 1e-4 * min(dec, 0.0) + slack:
                break
            t *= 0.5 if ls < 3 else 0.1
        else:
            fails += 1
            S, Y = S[:0], Y[:0]
            if fails >= 3:
                return x
            continue
        s_new = xn - x
        y_new = gn - g
        if float(s_new @ y_new) > 0:
            keep_n = max(memory - 1, 0)
            S = be.cat_rows(S[S.shape[0] - keep_n:] if keep_n else S[:0], s_new)
            Y = be.cat_rows(Y[Y.shape[0] - keep_n:] if keep_n else Y[:0], y_new)
            fails = 0
        x, f, g = xn, fn, gn
    return x


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
        self.best = None  # (W, lam)
        self.reason = None

    def offer(self, W, lam, marg_min: float, wp: float, lam_sum: float, gq: float):
        """(W, λ): W's p-norm ``wp`` and smallest margin, λ's sum and ‖Aᵀλ‖_q."""
        self.evals += 1
        if marg_min > 0 and gq > 0 and lam_sum > 0:
            primal = wp / marg_min
            dual = lam_sum / gq
            rel = (primal - dual) / primal
            if rel < self.best_rel:
                self.best_rel = rel
                self.best = (self.be.copy(W), self.be.copy(lam))
            if rel <= 0.5 * self.tol:
                self.reason = "optimal"
                raise _Done()
        if self.evals >= self.max_evals:
            self.reason = "max_iter"
            raise _Done()
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
                verbose: bool = False):
    r"""Augmented Lagrangian on the primal ``min ½‖W‖_p² s.t. A W ≥ 1`` (smooth for p ≥ 2):
    inner L-BFGS on ``½‖W‖_p² + (1/2ρ)(‖max(0, μ − ρ(AW − 1))‖² − ‖μ‖²)``, outer
    ``μ ← max(0, μ − ρ(AW − 1))``.  The certificate uses ``λ̃ = max(0, μ − ρ(AW − 1))``."""
    be = ops.be
    m = ops.m
    W0, _ = grad_half_sq_norm(be, ops.AT(be.ones(m)), q)
    W0 = W0 * (1.0 / float(ops.A(W0).min()))
    if rho is None:
        # rho_mult × (mean diagonal curvature of ½‖W‖_p² at W0) / (mean squared norm of the A_k)
        nw = lr_norm(W0, p)
        h = (p - 1.0) * float(((abs(W0) * (1.0 / nw)) ** (p - 2.0)).mean())
        rho = rho_mult * h / float(np.mean(ops.row_norms**2))
    state = dict(mu=be.zeros(m), rho=rho)

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
        method = "dual" if p <= P_SWITCH else "alm"
    if method not in ("dual", "alm"):
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
        be = _TorchBackend(device, threads)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + float(time_limit)
    tr = _Tracker(be, tol, deadline, max_iter)
    infeasible = False
    with be.threads():
        ops = Ops(prob, be)
        try:
            if method == "dual":
                _dual(ops, q, tr, memory=memory)
            else:
                _primal_alm(ops, p, q, tr, memory=memory)
        except _Done:
            pass
        except _Infeasible:
            infeasible = True
    elapsed = time.perf_counter() - t0
    info = dict(method=f"fast-{method}", evaluations=tr.evals, stop=tr.reason, backend=be.name)
    if infeasible:
        return FastOutput(None, None, "infeasible", tr.evals, elapsed, info)
    if tr.best is None:
        return FastOutput(None, None, tr.reason or "inaccurate", tr.evals, elapsed, info)
    W, lam = tr.best
    return FastOutput(be.to_numpy(W).copy(), be.to_numpy(lam).copy(), tr.reason or "inaccurate", tr.evals,
                      elapsed, info)
