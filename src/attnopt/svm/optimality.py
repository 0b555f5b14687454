r"""Global / local optimality of a token selection α (spec section 3).

Token scores :math:`\gamma_{it} = Y_i v^\top x_{it}`.  α is *globally optimal* when
:math:`\alpha_i \in \arg\max_t \gamma_{it}` for every sample.  The SVM-neighbours
:math:`\mathcal T_i` are the active constraints of the ℓp-AttSVM solution for α
(:math:`(x_{i\alpha_i} - x_{it})^\top W^{mm}_\alpha z_i = 1`), and α is *locally optimal*
(Tarzanagh et al.) when :math:`\gamma_{i\alpha_i} > \gamma_{it}` for all i and all
:math:`t \in \mathcal T_i`.  The published experiment code never checks this; it takes α as the
argmax of the final softmax (:func:`alpha_from_softmax`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from attnopt.svm.api import DEFAULT_ACTIVE_TOL, att_svm
from attnopt.svm.problem import SVMInfeasibleError, SVMInputError, SVMResult, as_alpha, as_float_array, check_tol


@dataclass(frozen=True)
class OptimalityReport:
    """Result of :func:`token_optimality`.

    ``scores`` (n, T) γ; ``globally_optimal`` (n,) bool; ``neighbors`` list of n int arrays
    (𝒯_i); ``locally_optimal`` (n,) bool; ``verdict`` in {"global", "local", "neither"};
    ``svm`` the ℓp-AttSVM result used (None when infeasible); ``infeasible_samples`` the samples
    named by the infeasibility error (empty when feasible); ``message`` that error's text.
    """

    scores: np.ndarray
    alpha: np.ndarray
    globally_optimal: np.ndarray
    neighbors: list
    locally_optimal: np.ndarray
    verdict: str
    svm: Optional[SVMResult]
    p: float
    infeasible_samples: list = field(default_factory=list)
    message: str = ""

    def summary(self) -> str:
        n = self.scores.shape[0]
        lines = [f"token selection alpha (n={n}, p={self.p:g}): verdict = {self.verdict}"]
        lines.append(f"  globally optimal samples: {int(self.globally_optimal.sum())}/{n}")
        if self.svm is None:
            lines.append(f"  l_p-AttSVM infeasible for sample(s) {self.infeasible_samples}: {self.message}")
        else:
            c = self.svm.certificate
            lines.append(f"  locally optimal samples:  {int(self.locally_optimal.sum())}/{n} "
                         f"(SVM-neighbours per sample: mean {np.mean([len(t) for t in self.neighbors]):.2f})")
            lines.append(f"  l_p-AttSVM: ||W||_p = {c.primal:.6g}, rel_gap = {c.rel_gap:.2e}, "
                         f"max_violation = {c.max_violation:.1e}, solver = {c.solver}, status = {self.svm.status}")
            if not c.converged:
                lines.append("  WARNING: the SVM did not reach its tolerance; the neighbour sets may be inexact")
        bad_g = np.flatnonzero(~self.globally_optimal)
        if bad_g.size:
            lines.append(f"  not globally optimal: samples {bad_g[:20].tolist()}")
        bad_l = np.flatnonzero(~self.locally_optimal)
        if bad_l.size:
            lines.append(f"  not locally optimal: samples {bad_l[:20].tolist()}")
        return "\n".join(lines)


def alpha_from_softmax(X: Any, W: Any, Z: Any) -> np.ndarray:
    """The published code's α: per sample, the argmax over t of the softmax of ``x_tᵀ W z_i``.

    (The softmax is monotone, so this is the argmax of the scores; ties go to the first token.)
    """
    X = as_float_array(X, "X", 3)
    n, T, d = X.shape
    W = as_float_array(W, "W", 2)
    Z = as_float_array(Z, "Z", 2)
    if W.shape != (d, d):
        raise SVMInputError(f"W must have shape ({d}, {d}), got {W.shape}")
    if Z.shape != (n, d):
        raise SVMInputError(f"Z must have shape ({n}, {d}), got {Z.shape}")
    scores = np.einsum("itd,id->it", X, Z @ W.T)
    return np.argmax(scores, axis=1).astype(np.int64)


def token_optimality(X: Any, Y: Any, Z: Any, v: Any, alpha: Any, p: float, tol: float = 1e-6, *,
                     solver: str = "auto", svm_tol: float = 1e-6, active_tol: float = DEFAULT_ACTIVE_TOL,
                     max_iter: Optional[int] = None, device=None) -> OptimalityReport:
    """Classify the token selection α as globally optimal, locally optimal, or neither.

    ``tol`` is the slack of the global test (γ_{iα_i} ≥ max_t γ_{it} − tol); the local test is
    the paper's strict inequality over the SVM-neighbours, which are the constraints of the
    ℓp-AttSVM(α) solution with margin ≤ 1 + ``active_tol``.  An infeasible SVM gives verdict
    "neither" with the infeasible samples reported (no exception).
    """
    X = as_float_array(X, "X", 3)
    n, T, d = X.shape
    if n == 0 or T < 2:
        raise SVMInputError(f"empty input: X has shape {X.shape} (need n >= 1 samples and T >= 2 tokens)")
    Y = as_float_array(Y, "Y", 1)
    if Y.shape != (n,):
        raise SVMInputError(f"Y must have shape ({n},), got {Y.shape}")
    v = as_float_array(v, "v", 1)
    if v.shape != (d,):
        raise SVMInputError(f"v must have shape ({d},), got {v.shape}")
    a = as_alpha(alpha, n, T)
    tol = check_tol(tol)
    scores = Y[:, None] * np.einsum("itd,d->it", X, v)
    sel = scores[np.arange(n), a]
    glob = sel >= scores.max(axis=1) - tol
    try:
        res = att_svm(X, Z, a, p, solver=solver, tol=svm_tol, max_iter=max_iter, device=device,
                      active_tol=active_tol)
    except SVMInfeasibleError as err:
        return OptimalityReport(scores=scores, alpha=a, globally_optimal=glob,
                                neighbors=[np.zeros(0, dtype=np.int64) for _ in range(n)],
                                locally_optimal=np.zeros(n, dtype=bool), verdict="neither", svm=None, p=float(p),
                                infeasible_samples=list(err.samples), message=str(err))
    nbrs = res.neighbors()
    # γ_{iα} > γ_{it} for every active (i, t); vacuous where 𝒯_i is empty
    beaten = res.active & ~(sel[:, None] > scores)
    local = ~np.any(beaten, axis=1)
    if np.all(glob):
        verdict = "global"
    elif np.all(local):
        verdict = "local"
    else:
        verdict = "neither"
    return OptimalityReport(scores=scores, alpha=a, globally_optimal=glob, neighbors=nbrs, locally_optimal=local,
                            verdict=verdict, svm=res, p=float(p))
