r"""Reference solver: cvxpy + Clarabel on the dense constraint matrix (the baseline of issue #3).

The problem ``min ‖w‖_p s.t. M w ≥ 1`` is handed to cvxpy with the dense ``(m, d·d)``
matrix ``M`` (row k = vec(A_k), built in one ``einsum``).  The solver's status is *not* trusted
as the certificate: the multipliers ``constraint.dual_value`` and the primal ``w`` are
re-certified by :func:`attnopt.svm.problem.certify` (dual bound ``Σλ/‖Aᵀλ‖_q``, primal
rescaled to ``W / min margin``).
"""

from __future__ import annotations

import time
import warnings
from typing import Optional

import numpy as np

from attnopt.svm.problem import Problem, SVMInfeasibleError

#: largest dense constraint matrix the reference solver will build (8 bytes per entry)
MAX_DENSE_ENTRIES = 2e8

_STATUS = {"optimal": "optimal", "optimal_inaccurate": "inaccurate"}


def _cvxpy():
    try:
        import cvxpy as cp
    except ImportError as exc:  # pragma: no cover - cvxpy is a dependency
        raise ImportError("solver='cvxpy' needs the cvxpy package (pip install cvxpy clarabel)") from exc
    return cp


def solve_cvxpy(prob: Problem, *, nuclear: bool = False, tol: float = 1e-8, max_iter: Optional[int] = None,
                cvx_solver: str = "CLARABEL", verbose: bool = False):
    """Solve with cvxpy.  Returns ``(W, lam, status, iterations, time_s)``.

    Raises :class:`SVMInfeasibleError` (without naming samples; the caller explains) when the
    solver reports infeasibility.
    """
    cp = _cvxpy()
    entries = prob.m * int(np.prod(prob.shape))
    if entries > MAX_DENSE_ENTRIES:
        raise ValueError(
            f"solver='cvxpy' would build a dense {prob.m} x {int(np.prod(prob.shape))} constraint matrix "
            f"({entries:.2e} entries > {MAX_DENSE_ENTRIES:.0e}); use solver='fast' for problems this large")
    M = prob.dense()
    nvar = int(np.prod(prob.shape))
    w = cp.Variable(nvar)
    if nuclear:
        W = cp.reshape(w, (prob.d, prob.d), order="C")
        obj = cp.normNuc(W)
    else:
        obj = cp.pnorm(w, prob.p)
    cons = [M @ w >= 1]
    problem = cp.Problem(cp.Minimize(obj), cons)
    kw = {}
    if cvx_solver.upper() == "CLARABEL":
        kw = dict(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
        if max_iter is not None:
            kw["max_iter"] = int(max_iter)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # "Solution may be inaccurate": reported through the status ("inaccurate") instead
            warnings.filterwarnings("ignore", message="Solution may be inaccurate", category=UserWarning)
            problem.solve(solver=cvx_solver, verbose=verbose, **kw)
    except cp.error.SolverError as exc:
        raise RuntimeError(f"cvxpy/{cvx_solver} failed: {exc}") from exc
    elapsed = time.perf_counter() - t0
    status = problem.status
    if status in ("infeasible", "infeasible_inaccurate"):
        raise SVMInfeasibleError(f"cvxpy/{cvx_solver} reports the SVM infeasible ({status})")
    if w.value is None or cons[0].dual_value is None:
        raise RuntimeError(f"cvxpy/{cvx_solver} returned no solution (status {status!r})")
    stats = problem.solver_stats
    iters = int(stats.num_iters) if stats is not None and stats.num_iters is not None else 0
    Wv = np.asarray(w.value, dtype=np.float64).reshape(prob.shape)
    lam = np.asarray(cons[0].dual_value, dtype=np.float64).reshape(-1)
    return Wv, lam, _STATUS.get(status, status), iters, elapsed
