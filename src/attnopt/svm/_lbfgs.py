"""Projected L-BFGS (bound-constrained or free) on an array backend, for the fast SVM solvers."""

from __future__ import annotations

import math

import numpy as np



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


__all__ = ["_plbfgs", "_lbfgs_direction"]
