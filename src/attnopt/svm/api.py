"""Public entry points: :func:`att_svm`, :func:`att_svm_nuclear`, :func:`decoder_svm`."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from attnopt.svm.infeasible import explain_infeasibility
from attnopt.svm.nuclear import nuclear_certificate, solve_nuclear
from attnopt.svm.problem import (
    Certificate,
    Problem,
    SVMInfeasibleError,
    SVMInputError,
    SVMResult,
    att_problem,
    check_options,
    check_solver,
    decoder_problem,
    make_result,
)

DEFAULT_ACTIVE_TOL = 1e-4
DEFAULT_VIOL_TOL = 1e-7


def _solve(prob: Problem, solver: str, tol: float, max_iter: Optional[int], device, active_tol: float,
           viol_tol: float, time_limit: Optional[float] = None, threads: Optional[int] = None) -> SVMResult:
    solver = check_solver(solver)
    tol, active_tol, viol_tol, max_iter, time_limit, threads = check_options(
        tol=tol, active_tol=active_tol, viol_tol=viol_tol, max_iter=max_iter, time_limit=time_limit, threads=threads)
    if prob.m == 0:  # no constraints at all (every neighbour set empty): W = 0
        return make_result(prob, np.zeros(prob.shape), np.zeros(0), tol=tol, status="optimal", iterations=0,
                           time_s=0.0, solver="trivial", active_tol=active_tol, viol_tol=viol_tol)
    if solver == "cvxpy":
        from attnopt.svm.reference import solve_cvxpy

        try:
            W, lam, status, iters, elapsed = solve_cvxpy(prob, tol=min(1e-8, tol * 1e-2), max_iter=max_iter)
        except SVMInfeasibleError:
            raise explain_infeasibility(prob) from None
        return make_result(prob, W, lam, tol=tol, status=status, iterations=iters, time_s=elapsed,
                           solver="cvxpy-clarabel", active_tol=active_tol, viol_tol=viol_tol)
    from attnopt.svm.fast import solve_fast

    out = solve_fast(prob, tol=tol, max_iter=max_iter, device=device, time_limit=time_limit, threads=threads)
    if out.status == "infeasible":
        raise explain_infeasibility(prob)
    if out.W is None:  # never found a point with all margins positive: infeasible, or out of budget
        if prob.m * int(np.prod(prob.shape)) <= 2e7:
            err = explain_infeasibility(prob)
            if err.samples:
                raise err
        out.W, out.lam = np.zeros(prob.shape), np.zeros(prob.m)
    return make_result(prob, out.W, out.lam, tol=tol, status=out.status, iterations=out.iterations,
                       time_s=out.time_s, solver=out.info.get("method", "fast"), active_tol=active_tol,
                       viol_tol=viol_tol, info=out.info)


def att_svm(X: Any, Z: Any, alpha: Any, p: float, neighbors: Any = None, solver: str = "auto", tol: float = 1e-6,
            max_iter: Optional[int] = None, device=None, *, nuclear: bool = False,
            active_tol: float = DEFAULT_ACTIVE_TOL, viol_tol: float = DEFAULT_VIOL_TOL,
            time_limit: Optional[float] = None, threads: Optional[int] = None) -> SVMResult:
    r"""Solve the ℓp-AttSVM ``min ‖W‖_p s.t. (x_{iα_i} − x_{it})ᵀ W z_i ≥ 1``.

    Parameters
    ----------
    X : (n, T, d) tokens as rows (numpy or torch, any float dtype; computed in float64).
    Z : (n, d) queries.
    alpha : (n,) int, the selected token of each sample.
    p : the norm exponent, > 1 (the fast solver is tuned for p in [1.1, 10]).
    neighbors : None for the global SVM (all t != alpha_i), or the local SVM's neighbour sets:
        a sequence of n index collections, or an (n, T) boolean mask.
    solver : "auto" (= "fast"), "fast" or "cvxpy" (reference, dense constraints, Clarabel).
    tol : target relative duality gap of the certificate.
    max_iter : iteration cap (solver specific); None for the default.
    device : torch device for the fast solver (CPU by default).
    nuclear : solve the (K, Q)-parameterisation variant ``min ‖W‖_*`` instead (needs p = 2; see
        :func:`att_svm_nuclear`).
    active_tol : constraint (i, t) is reported active when its margin is ≤ 1 + active_tol.
    viol_tol : ``converged`` also needs the returned W to violate no constraint by more.
    time_limit : wall-clock budget in seconds for the fast solver (status "time_limit" when hit).
    threads : torch intra-op threads for the fast solver's torch backend (default 1 on CPU).

    Raises
    ------
    SVMInfeasibleError (a ValueError) naming the infeasible samples in ``.samples``;
    ValueError for malformed input (input of the wrong kind, e.g. non-integer alpha, raises
    SVMInputTypeError, which is both a ValueError and a TypeError).
    """
    if nuclear:
        return att_svm_nuclear(X, Z, alpha, p=p, neighbors=neighbors, solver=solver, tol=tol, max_iter=max_iter,
                               active_tol=active_tol, viol_tol=viol_tol, time_limit=time_limit)
    prob = att_problem(X, Z, alpha, p, neighbors)
    return _solve(prob, solver, tol, max_iter, device, active_tol, viol_tol, time_limit, threads)


def decoder_svm(X: Any, Y: Any, alpha: Any, p: float, solver: str = "auto", tol: float = 1e-6,
                max_iter: Optional[int] = None, device=None, *, active_tol: float = DEFAULT_ACTIVE_TOL,
                viol_tol: float = DEFAULT_VIOL_TOL, time_limit: Optional[float] = None,
                threads: Optional[int] = None) -> SVMResult:
    r"""Solve the decoder ℓp-SVM ``min ‖v‖_p s.t. Y_i x_{iα_i}ᵀ v ≥ 1`` (n constraints, d variables).

    ``active``, ``margins`` and ``dual`` of the result are (n,) arrays.
    """
    prob = decoder_problem(X, Y, alpha, p)
    return _solve(prob, solver, tol, max_iter, device, active_tol, viol_tol, time_limit, threads)


def att_svm_nuclear(X: Any, Z: Any, alpha: Any, p: float = 2.0, neighbors: Any = None, solver: str = "auto",
                    tol: float = 1e-6, max_iter: Optional[int] = None, *, active_tol: float = DEFAULT_ACTIVE_TOL,
                    viol_tol: float = DEFAULT_VIOL_TOL, time_limit: Optional[float] = None) -> SVMResult:
    r"""The (K, Q)-parameterisation variant: ``min ‖W‖_* s.t. (x_{iα_i} − x_{it})ᵀ W z_i ≥ 1``.

    ``solver``: "auto" = "fast", the interior-point method of :mod:`attnopt.svm.nuclear`
    (no cvxpy); "cvxpy" the Clarabel reference.  Certificate for both, computed by attnopt:
    with the multipliers λ, ``Σλ / ‖Σ λ_k A_k‖_op`` (spectral norm, the dual of the nuclear
    norm) is a lower bound; the primal is ``‖W‖_*`` of W rescaled to ``W / min margin``.
    """
    if float(p) != 2.0:
        raise SVMInputError(f"nuclear=True is the p = 2 (K, Q) variant (min ||W||_*); got p = {p!r}")
    solver = check_solver(solver)
    tol, active_tol, viol_tol, max_iter, time_limit, _ = check_options(
        tol=tol, active_tol=active_tol, viol_tol=viol_tol, max_iter=max_iter, time_limit=time_limit, threads=None)
    prob = att_problem(X, Z, alpha, 2.0, neighbors)
    if prob.m == 0:
        return _solve(prob, "fast", tol, max_iter, None, active_tol, viol_tol)
    if solver == "cvxpy":
        from attnopt.svm.reference import solve_cvxpy

        try:
            W, lam, status, iters, elapsed = solve_cvxpy(prob, nuclear=True, tol=min(1e-8, tol * 1e-2),
                                                         max_iter=max_iter)
        except SVMInfeasibleError:
            raise explain_infeasibility(prob) from None
        W, lam, stats = nuclear_certificate(prob, W, lam, tol, viol_tol)
        name = "cvxpy-clarabel"
    else:
        out = solve_nuclear(prob, tol=tol, viol_tol=viol_tol, max_iter=max_iter, time_limit=time_limit)
        if out.W is None:  # never a point with all margins positive: infeasible, or out of budget
            err = explain_infeasibility(prob)
            if err.samples or out.status not in ("max_iter", "time_limit"):
                raise err
            out.W, out.lam = np.zeros(prob.shape), np.zeros(prob.m)
        W, lam, stats, status, iters, elapsed = out.W, out.lam, out.stats, out.status, out.iterations, out.time_s
        name = "fast-nuclear-ipm"
    return make_result(prob, W, lam, tol=tol, status=status, iterations=iters, time_s=elapsed,
                       solver=name, active_tol=active_tol, viol_tol=viol_tol, nuclear=True, stats=stats)


__all__ = ["att_svm", "att_svm_nuclear", "decoder_svm", "SVMResult", "Certificate", "SVMInfeasibleError"]
