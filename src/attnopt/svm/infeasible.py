"""Infeasible attention SVMs: name the samples responsible (small LPs, error path only)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from attnopt.svm.problem import Problem, SVMInfeasibleError



def _farkas_lp(Mt: np.ndarray) -> Optional[np.ndarray]:
    """λ ≥ 0, Σλ = 1, Mt λ = 0 (a Farkas certificate that M w ≥ 1 is infeasible), or None."""
    from scipy.optimize import linprog

    k = Mt.shape[1]
    A_eq = np.vstack([Mt, np.ones((1, k))])
    b_eq = np.zeros(A_eq.shape[0])
    b_eq[-1] = 1.0
    # scale rows so the equality tolerance is relative
    scale = np.maximum(np.abs(A_eq).max(axis=1), 1e-300)
    res = linprog(np.zeros(k), A_eq=A_eq / scale[:, None], b_eq=b_eq / scale, bounds=(0, None), method="highs")
    if res.status == 0 and res.x is not None:
        return res.x
    return None


def explain_infeasibility(prob: Problem, max_dense: float = 2e7) -> SVMInfeasibleError:
    """Build an :class:`SVMInfeasibleError` naming the samples responsible.

    First each sample alone (attention SVM: sample i is infeasible alone iff x_{iα_i} lies in
    the convex hull of its constrained tokens — a small LP per sample); if every sample is
    feasible alone, one LP for a Farkas certificate ``λ ≥ 0, Σλ = 1, Σ λ_k A_k = 0`` over all
    constraints (when the dense matrix has at most ``max_dense`` entries) whose support names
    the samples that conflict.
    """
    if prob.kind == "att":
        bad = []
        for i in np.unique(prob.rows):  # error path only: one small LP per sample
            Di = prob.D[prob.rows == i]
            if _farkas_lp(Di.T) is not None:
                bad.append(int(i))
        if bad:
            return SVMInfeasibleError(
                f"attention SVM infeasible: for sample(s) {bad[:20]} the selected token x[i, alpha_i] lies in the "
                "convex hull of the other (constrained) tokens of the same sample, so no W separates it",
                samples=bad)
    if prob.m * int(np.prod(prob.shape)) <= max_dense:
        lam = _farkas_lp(prob.dense().T)
        if lam is not None:
            ks = np.flatnonzero(lam > 1e-9 * lam.max())
            samples = np.unique(prob.rows[ks]).tolist()
            pairs = [(int(prob.rows[k]), int(prob.cols[k])) for k in ks]
            what = "attention SVM" if prob.kind == "att" else "decoder SVM"
            return SVMInfeasibleError(
                f"{what} infeasible: the constraints of sample(s) {samples[:20]} contradict each other "
                f"(a nonnegative combination of their constraint matrices is zero; constraints {pairs[:10]})",
                samples=samples, constraints=pairs if prob.kind == "att" else ())
        return SVMInfeasibleError(
            "the solver reports the SVM infeasible, but no Farkas certificate was found by the LP check "
            "(the problem may be nearly infeasible: extremely large margin norm)", samples=[])
    return SVMInfeasibleError(
        "the SVM is infeasible (the multipliers diverge); every sample is feasible alone, and the problem is too "
        "large for the cross-sample LP check, so the conflicting samples are not named", samples=[])


__all__ = ["explain_infeasibility"]
