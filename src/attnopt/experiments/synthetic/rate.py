r"""The rate of the matched divergence (claim 2 of the paper, marked [check] in the spec):
fits of the mean curve :math:`\bar D(k)` against :math:`\log k` on the window where the
tokens are selected and the iterate still moves."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from attnopt.experiments.synthetic.md import Trajectory


@dataclass
class RateFit:
    """Fits of the mean matched divergence D̄(k) for k in [k_from, k_to] (logged iterations).

    * ``polylog``: log D = a + b·log log k  (D ∝ (log k)^b; ``slope`` = b)
    * ``inv_log``: D = c + e / log k        (``slope`` = e, ``intercept`` = c)
    * ``power``:   log D = a + b·log k      (D ∝ k^b)
    ``r2`` is the coefficient of determination of log D for every model (comparable).
    """

    k_from: int
    k_to: int
    points: int
    polylog_slope: float = math.nan
    polylog_intercept: float = math.nan
    polylog_r2: float = math.nan
    inv_log_slope: float = math.nan
    inv_log_intercept: float = math.nan
    inv_log_r2: float = math.nan
    power_slope: float = math.nan
    power_intercept: float = math.nan
    power_r2: float = math.nan
    seed_polylog_slopes: list[float] = field(default_factory=list)

    @property
    def best(self) -> str:
        r2 = {"polylog": self.polylog_r2, "inv_log": self.inv_log_r2, "power": self.power_r2}
        r2 = {k: v for k, v in r2.items() if math.isfinite(v)}
        return max(r2, key=r2.get) if r2 else "none"

    def summary(self) -> dict:
        """The fit as plain numbers (per-seed slopes as their mean and std)."""
        out = dataclasses.asdict(self)
        slopes = out.pop("seed_polylog_slopes")
        out["best"] = self.best
        out["seed_polylog_slope_mean"] = float(np.mean(slopes)) if slopes else math.nan
        out["seed_polylog_slope_std"] = float(np.std(slopes)) if slopes else math.nan
        return out


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else math.nan


def fit_rate(iters: np.ndarray, D: np.ndarray, k_from: int, per_seed: np.ndarray | None = None,
             k_to: int | None = None) -> RateFit:
    """Fit D̄(k) against log k on ``k_from <= k <= k_to`` (see :class:`RateFit`)."""
    iters = np.asarray(iters, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    k_to = int(iters[-1]) if k_to is None and iters.size else (0 if k_to is None else int(k_to))
    sel = (iters >= max(k_from, 2)) & (iters <= k_to) & np.isfinite(D) & (D > 0)
    fit = RateFit(int(max(k_from, 2)), k_to, int(sel.sum()))
    if sel.sum() < 3:
        return fit
    k, y = iters[sel], D[sel]
    lk, ly = np.log(k), np.log(y)
    llk = np.log(lk)
    b, a = np.polyfit(llk, ly, 1)
    fit.polylog_slope, fit.polylog_intercept, fit.polylog_r2 = float(b), float(a), _r2(ly, a + b * llk)
    e, c = np.polyfit(1.0 / lk, y, 1)
    pred = c + e / lk
    fit.inv_log_slope, fit.inv_log_intercept = float(e), float(c)
    fit.inv_log_r2 = _r2(ly, np.log(pred)) if np.all(pred > 0) else math.nan
    b, a = np.polyfit(lk, ly, 1)
    fit.power_slope, fit.power_intercept, fit.power_r2 = float(b), float(a), _r2(ly, a + b * lk)
    if per_seed is not None:
        slopes = []
        for s in range(per_seed.shape[1]):
            ys = per_seed[sel, s]
            if np.all(np.isfinite(ys)) and np.all(ys > 0):
                slopes.append(float(np.polyfit(llk, np.log(ys), 1)[0]))
        fit.seed_polylog_slopes = slopes
    return fit


def fit_window(traj: Trajectory, fit_from: int | None = None) -> tuple[int, int]:
    """The iterations over which the asymptotic rate is fitted.

    Start (unless ``fit_from`` is given): the first logged k where the mean max-softmax
    probability reaches 0.99, i.e. the tokens are selected and the norm-growth phase of the
    theory has begun (fallback max(10, K/100)).  End: the first logged k where the mean ‖W(k)‖_p
    reaches 99% of its final value — beyond it W has stopped moving (with the published
    ε ≈ 2.2e-16 the step is no longer normalised once ‖∇L‖_q < ε, see
    :mod:`attnopt.experiments.synthetic.md`), so those iterations say nothing about the rate;
    K when the norm is still growing.
    """
    iters = traj.iters
    K = int(iters[-1])
    if fit_from is None:
        sm = traj.max_softmax.numpy().reshape(len(iters), -1).mean(axis=1)
        hit = np.flatnonzero(sm >= 0.99)
        fit_from = int(iters[hit[0]]) if hit.size else max(10, K // 100)
    wn = traj.w_norm.numpy().reshape(len(iters), -1).mean(axis=1)
    reach = np.flatnonzero(wn >= 0.99 * wn[-1])
    k_to = int(iters[reach[0]]) if reach.size else K
    if k_to <= fit_from:
        k_to = K
    return int(max(fit_from, 2)), k_to


__all__ = ["RateFit", "fit_rate", "fit_window"]
