r"""Accelerated proximal gradient (FISTA) for the group-lasso convex attention programs.

Algorithm (Beck–Teboulle FISTA with backtracking and O'Donoghue–Candès gradient restart):

* smooth part ``f(Z) = Σ_i L(P_i(Z), y_i)``, gradient ``Aᵀ ∇_P L``;
* proximal step on ``β Σ_g ‖z_g‖_2`` — the row-wise group soft-threshold
  ``z_g ← max(0, 1 − ηβ/‖z_g‖) z_g`` with step ``η = 1/L``;
* ``L`` starts from ``smoothness(loss) · ‖A‖²`` (power iteration) and is doubled whenever the
  sufficient-decrease test fails (backtracking), so the step is always safe;
* restart: when ``⟨y_k − x_{k+1}, x_{k+1} − x_k⟩ > 0`` (the momentum points against the
  gradient-map direction) the momentum is reset;
* stopping: every ``check_every`` iterations the duality gap of
  :meth:`ConvexProblem.dual` is evaluated at the current iterate; the solver stops when
  ``gap ≤ tol · max(|primal|, tiny)`` — the reported gap is a certificate: the true optimum lies
  in ``[primal − gap, primal]``.

Predictions are linear in ``Z``, so ``A y_k`` is formed from ``A x_k`` and ``A x_{k−1}``
without an extra product: one ``A`` and one ``Aᵀ`` per iteration (plus one ``Aᵀ`` per gap check).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch

from attnopt.convex.programs import ConvexProblem, ProblemError, loss_grad, loss_smoothness, loss_value


def group_soft_threshold(V: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise group soft-threshold (prox of ``tau Σ_g ‖v_g‖_2`` over the last dimension)."""
    norms = torch.linalg.vector_norm(V, dim=-1, keepdim=True)
    scale = torch.clamp(1.0 - tau / torch.clamp(norms, min=torch.finfo(V.dtype).tiny), min=0.0)
    return V * scale


@dataclasses.dataclass
class FistaResult:
    """Outcome of :func:`solve_fista`.

    ``Z`` (shape ``(m, c, n, d)``), ``objective`` (primal), ``dual_objective``, ``gap`` and
    ``rel_gap`` (certificate at the returned ``Z``), ``converged`` (``rel_gap ≤ tol``),
    ``iterations``, ``restarts``, ``lipschitz`` (final step constant), ``time`` (seconds),
    ``history`` (dicts with ``iter``, ``time``, ``objective`` and, at checks, ``gap``).
    """

    Z: torch.Tensor
    objective: float
    dual_objective: float
    gap: float
    rel_gap: float
    converged: bool
    iterations: int
    restarts: int
    lipschitz: float
    time: float
    history: list[dict]


def prox_gradient_step(prob, prox, y: torch.Tensor, Py: torch.Tensor, Lc: float, slack: float):
    """One backtracking proximal-gradient step from ``y`` (shared by every FISTA solver here).

    ``prob`` supplies ``predict``, ``adjoint``, ``Y`` and ``loss``; ``prox(V, step)`` is the
    proximal map of ``step`` times the penalty.  ``Lc`` doubles until the quadratic upper bound
    ``f(x) ≤ f(y) + ⟨∇f(y), x − y⟩ + (Lc/2)‖x − y‖²`` holds (with ``slack`` relative room for
    rounding).  Returns ``(x, predict(x), f(x), Lc)``.
    """
    fy = loss_value(Py, prob.Y, prob.loss)
    g = prob.adjoint(loss_grad(Py, prob.Y, prob.loss))
    while True:
        x_new = prox(y - g / Lc, 1.0 / Lc)
        Px_new = prob.predict(x_new)
        f_new = loss_value(Px_new, prob.Y, prob.loss)
        diff = x_new - y
        bound = fy + (g * diff).sum() + 0.5 * Lc * (diff * diff).sum()
        if f_new <= bound + slack * abs(float(bound)):
            return x_new, Px_new, f_new, Lc
        Lc *= 2.0


def momentum_step(x_new, Px_new, x, Px, y, t: float, restart: bool = True):
    """FISTA extrapolation with gradient-based adaptive restart (O'Donoghue–Candès).

    Returns ``(y, predict(y), t_new, restarted)``; predictions are extrapolated alongside the
    iterates (the data operator is linear), so no extra ``predict`` is needed.
    """
    restarted = bool(restart and float(((y - x_new) * (x_new - x)).sum()) > 0)
    if restarted:
        t = 1.0
    t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
    mom = (t - 1.0) / t_new
    return x_new + mom * (x_new - x), Px_new + mom * (Px_new - Px), t_new, restarted


def solve_fista(
    problem: ConvexProblem,
    tol: float = 1e-8,
    max_iter: int = 10_000,
    Z0: torch.Tensor | None = None,
    check_every: int = 10,
    restart: bool = True,
    lipschitz: float | None = None,
    device=None,
    dtype: torch.dtype | None = None,
    time_limit: float | None = None,
    callback: Callable[[int, torch.Tensor, dict], None] | None = None,
    callback_every: int = 0,
    log_every: int = 1,
) -> FistaResult:
    """Solve a :class:`ConvexProblem` by FISTA; stop on relative duality gap ``≤ tol``.

    Args:
        problem: the program (moved to ``device``/``dtype`` if given; float64 by default).
        tol: relative duality-gap tolerance.
        max_iter: iteration cap (the returned result says ``converged=False`` if hit).
        Z0: warm start ``(m, c, n, d)``.
        check_every: iterations between duality-gap evaluations.
        restart: gradient-based adaptive restart on/off.
        lipschitz: initial Lipschitz estimate (default from power iteration).
        device, dtype: where/in what precision to solve (e.g. ``"cuda"``).
        time_limit: wall-clock cap in seconds.
        callback: ``callback(iteration, Z, info)`` every ``callback_every`` iterations.
        log_every: record the objective in ``history`` every this many iterations.
    """
    if tol <= 0 or not math.isfinite(tol):
        raise ProblemError(f"tol must be positive and finite, got {tol}")
    if max_iter < 1:
        raise ProblemError(f"max_iter must be >= 1, got {max_iter}")
    if check_every < 1:
        raise ProblemError(f"check_every must be >= 1, got {check_every}")
    if device is not None or dtype is not None:
        problem = problem.to(device=device, dtype=dtype)
    prob = problem
    t_start = time.perf_counter()
    beta = prob.beta
    x = prob.zeros() if Z0 is None else prob.check_z(Z0).clone()
    if lipschitz is None:
        Lc = loss_smoothness(prob.loss) * prob.operator_norm_sq()
    else:
        Lc = float(lipschitz)
    if not Lc > 0:  # all-zero data: any step works
        Lc = 1.0
    Px = prob.predict(x)
    fx = loss_value(Px, prob.Y, prob.loss)
    y, Py = x, Px
    t = 1.0
    history: list[dict] = []
    restarts = 0
    slack = max(1e-12, 10 * torch.finfo(prob.dtype).eps)  # rounding room in the descent test
    info = prob.dual(x, Px)
    history.append({"iter": 0, "time": time.perf_counter() - t_start, "objective": info["primal"],
                    "gap": info["gap"], "rel_gap": info["rel_gap"]})
    converged = info["rel_gap"] <= tol
    it = 0
    while not converged and it < max_iter:
        it += 1
        x_new, Px_new, f_new, Lc = prox_gradient_step(
            prob, lambda V, step: group_soft_threshold(V, beta * step), y, Py, Lc, slack)
        y, Py, t, restarted = momentum_step(x_new, Px_new, x, Px, y, t, restart)
        restarts += restarted
        x, Px, fx = x_new, Px_new, f_new
        rec = None
        if it % check_every == 0 or it == max_iter:
            info = prob.dual(x, Px)
            converged = info["rel_gap"] <= tol
            rec = {"iter": it, "time": time.perf_counter() - t_start, "objective": info["primal"],
                   "gap": info["gap"], "rel_gap": info["rel_gap"]}
        elif log_every and it % log_every == 0:
            rec = {"iter": it, "time": time.perf_counter() - t_start,
                   "objective": float(fx + prob.penalty(x))}
        if rec is not None:
            history.append(rec)
        if callback is not None and callback_every and it % callback_every == 0:
            callback(it, x, rec or {"iter": it})
        if time_limit is not None and time.perf_counter() - t_start > time_limit:
            break
    if it % check_every != 0:
        info = prob.dual(x, Px)
        converged = info["rel_gap"] <= tol
    return FistaResult(
        Z=x,
        objective=info["primal"],
        dual_objective=info["dual"],
        gap=info["gap"],
        rel_gap=info["rel_gap"],
        converged=bool(converged),
        iterations=it,
        restarts=restarts,
        lipschitz=Lc,
        time=time.perf_counter() - t_start,
        history=history,
    )
