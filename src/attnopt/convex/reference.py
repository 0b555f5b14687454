"""Exact reference solutions with CVXPY (Clarabel by default, SCS as an alternative).

For small instances only: the program is built explicitly (a dense ``(N, m·n·d)`` feature
matrix).  The solver's own primal/dual residuals certify the solution; we additionally
report the objective re-evaluated in float64 by :meth:`ConvexProblem.objective` and the
duality gap of :meth:`ConvexProblem.dual` at the returned point.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from attnopt.convex.programs import ConvexProblem, ProblemError


@dataclasses.dataclass
class CvxpyResult:
    Z: torch.Tensor
    objective: float  # re-evaluated in float64 at the returned Z
    solver_objective: float  # as reported by the solver
    status: str
    solver: str
    time: float  # wall time of problem.solve (including CVXPY's compilation)
    solve_time: float | None  # the solver's own time, when it reports it
    gap: float  # duality gap of ConvexProblem.dual at Z
    rel_gap: float


def build_cvxpy(problem: ConvexProblem):
    """Return ``(cvxpy.Problem, Zvar)`` with ``Zvar`` of shape ``(m·n·d, c)`` (C-order blocks)."""
    import cvxpy as cp

    p = problem.to(device="cpu", dtype=torch.float64)
    N, n, d, m, c = p.N, p.n, p.d, p.m, p.c
    Xf = p.X.reshape(N, n * d).numpy()
    if p.D is None:
        Fm = Xf
    else:
        Dn = p.D.numpy()
        Fm = np.concatenate([Dn[:, j : j + 1] * Xf for j in range(m)], axis=1)  # (N, m n d)
    Zv = cp.Variable((m * n * d, c))
    P = Fm @ Zv
    if p.loss == "squared":
        data = 0.5 * cp.sum_squares(P - p.Y.numpy())
    elif p.loss == "logistic":
        data = cp.sum(cp.logistic(-cp.multiply(p.Y.numpy(), P)))
    else:
        onehot = np.zeros((N, c))
        onehot[np.arange(N), p.Y.numpy()] = 1.0
        data = cp.sum(cp.log_sum_exp(P, axis=1)) - cp.sum(cp.multiply(onehot, P))
    pen = 0
    if p.beta > 0:
        for l in range(c):
            rows = cp.reshape(Zv[:, l], (m * n, d), order="C")
            pen = pen + cp.sum(cp.norm(rows, 2, axis=1))
        obj = data + p.beta * pen
    else:
        obj = data
    return cp.Problem(cp.Minimize(obj)), Zv


def solve_cvxpy(problem: ConvexProblem, solver: str = "CLARABEL", verbose: bool = False, **kwargs) -> CvxpyResult:
    """Solve with CVXPY; ``solver`` is ``"CLARABEL"`` (interior point, exact) or ``"SCS"``."""
    import cvxpy as cp

    if solver not in cp.installed_solvers():
        raise ProblemError(f"solver {solver!r} is not installed (have {cp.installed_solvers()})")
    prob, Zv = build_cvxpy(problem)
    t0 = time.perf_counter()
    prob.solve(solver=solver, verbose=verbose, **kwargs)
    elapsed = time.perf_counter() - t0
    if Zv.value is None:
        raise RuntimeError(f"CVXPY/{solver} returned no solution (status {prob.status})")
    m, c, n, d = problem.z_shape
    Zn = np.asarray(Zv.value)  # (m n d, c)
    Z = torch.from_numpy(Zn.T.reshape(c, m, n, d).transpose(1, 0, 2, 3).copy()).to(problem.device, problem.dtype)
    info = problem.dual(Z)
    stats = getattr(prob, "solver_stats", None)
    return CvxpyResult(
        Z=Z,
        objective=info["primal"],
        solver_objective=float(prob.value),
        status=str(prob.status),
        solver=solver,
        time=elapsed,
        solve_time=None if stats is None else stats.solve_time,
        gap=info["gap"],
        rel_gap=info["rel_gap"],
    )
