"""Matplotlib figures for the synthetic experiments (Agg backend, PNG via ``RunDir.save_figure``).

Every function takes plain arrays (no experiment objects) and returns a ``Figure``:

* :func:`mean_std_axes` — mean curves with a shaded ± std band on one axes;
* :func:`convergence_figure` — E1: divergence, max-softmax, ‖W‖_p and loss vs iteration;
* :func:`matrix_figure` — E1-matrix: a grid of curves, one panel per (p trained, q SVM);
* :func:`rate_figure` — D vs log k with the fitted rates (claim 2);
* :func:`sweep_figure` — final divergence against p;
* :func:`verdict_figure` — token-optimality verdict counts per p;
* :func:`path_figure` — E1-path: two entries of W(k) vs the rescaled SVM ray;
* :func:`joint_figure` — E2: W and v paths vs their SVM rays, softmax and logistic probability.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Series = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # label -> (x, mean, std)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _xpos(x: np.ndarray) -> np.ndarray:
    """Iterations on a log axis: k = 0 is drawn at k = 1/2 (so the initial point is visible)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x, 0.5)


def mean_std_axes(ax, series: Series, *, xlabel: str = "iteration k", ylabel: str = "", title: str = "",
                  logx: bool = True, logy: bool = False, legend: bool = True, colors: Sequence | None = None) -> None:
    """Plot mean curves with shaded ± std bands on ``ax``."""
    colors = list(colors) if colors is not None else _colors(len(series))
    for (label, (x, m, s)), c in zip(series.items(), colors):
        x = _xpos(x) if logx else np.asarray(x, dtype=np.float64)
        m, s = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
        ax.plot(x, m, color=c, label=label, lw=1.6)
        lo, hi = m - s, m + s
        if logy:
            lo = np.where(lo > 0, lo, np.nan)
            lo = np.where(np.isfinite(lo), lo, m / 10.0)
        ax.fill_between(x, lo, hi, color=c, alpha=0.18, lw=0)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if legend and series:
        ax.legend(fontsize=8)


def convergence_figure(divergence: Series, max_softmax: Series, w_norm: Series, loss: Series, *, title: str = ""):
    """2×2 panels: directional Bregman divergence (log-log), max-softmax, ‖W(k)‖_p, loss."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    mean_std_axes(axes[0, 0], divergence, ylabel=r"$D_{\psi_p}(W^{mm}/\|W^{mm}\|_p,\ W(k)/\|W(k)\|_p)$",
                  title="directional Bregman divergence", logy=True)
    mean_std_axes(axes[0, 1], max_softmax, ylabel="mean max softmax probability", title="token selection")
    mean_std_axes(axes[1, 0], w_norm, ylabel=r"$\|W(k)\|_p$", title="norm growth", logy=True)
    mean_std_axes(axes[1, 1], loss, ylabel="logistic loss", title="training loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def matrix_figure(grid: Mapping[tuple[float, float], tuple[np.ndarray, np.ndarray, np.ndarray]],
                  ps: Sequence[float], qs: Sequence[float], *, n_seeds: int | None = None,
                  note: str = "same α and W(0)"):
    """One panel per trained p (rows) and SVM exponent q (columns); matched panels highlighted."""
    fig, axes = plt.subplots(len(ps), len(qs), figsize=(3.6 * len(qs), 2.9 * len(ps)), squeeze=False, sharey=True)
    for i, p in enumerate(ps):
        for j, q in enumerate(qs):
            ax = axes[i, j]
            x, m, s = grid[(p, q)]
            matched = math.isclose(p, q)
            c = "tab:red" if matched else "tab:blue"
            mean_std_axes(ax, {f"q = {q:g}": (x, m, s)}, xlabel="iteration k" if i == len(ps) - 1 else "",
                          ylabel=f"D (trained p = {p:g})" if j == 0 else "", logy=True, legend=False, colors=[c])
            fin = m[-1] if len(m) else float("nan")
            ax.set_title(f"p = {p:g}, q = {q:g}: final {fin:.3g}", fontsize=9, fontweight="bold" if matched else None)
    sub = "E1-matrix: $D_{\\psi_p}(W_q^{mm}/\\|\\cdot\\|_p,\\ W_p(k)/\\|\\cdot\\|_p)$, " + note
    if n_seeds:
        sub += f" (mean ± std, {n_seeds} seeds)"
    fig.suptitle(sub)
    fig.tight_layout()
    return fig


def rate_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], fits: Mapping[str, Any] | None = None):
    """Left: D against log k (log y) with the (log k)^b fit; right: D against 1/log k with the linear fit."""
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.2))
    cols = _colors(len(curves))
    for (label, (k, D)), c in zip(curves.items(), cols):
        k = np.asarray(k, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        sel = k >= 2
        lk = np.log(k[sel])
        a0.plot(lk, D[sel], color=c, label=label, lw=1.6)
        a1.plot(1.0 / lk, D[sel], color=c, label=label, lw=1.6)
        f = fits.get(label) if fits else None
        if f is not None and getattr(f, "points", 0) >= 3:
            kk = np.linspace(np.log(max(f.k_from, 2)), np.log(max(f.k_to, 3)), 100)
            if math.isfinite(f.polylog_slope):
                a0.plot(kk, np.exp(f.polylog_intercept) * kk ** f.polylog_slope, "--", color=c, lw=1,
                        label=f"fit (log k)^{f.polylog_slope:.2f}, R²={f.polylog_r2:.3f}")
            if math.isfinite(f.inv_log_slope):
                a1.plot(1.0 / kk, f.inv_log_intercept + f.inv_log_slope / kk, "--", color=c, lw=1,
                        label=f"fit {f.inv_log_intercept:.3g} + {f.inv_log_slope:.3g}/log k")
    a0.set_yscale("log")
    a0.set_xlabel("log k")
    a0.set_ylabel("mean matched divergence D")
    a0.set_title("D against log k (log scale) with D ∝ (log k)^b")
    a1.set_xlabel("1 / log k")
    a1.set_ylabel("mean matched divergence D")
    a1.set_title("D against 1/log k with D = c + e/log k")
    for a in (a0, a1):
        a.grid(True, alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def sweep_figure(ps: Sequence[float], final_mean: Sequence[float], final_std: Sequence[float],
                 iterations: Sequence[int] | None = None):
    """Final matched divergence (mean ± std over seeds) against p."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ps, final_mean, yerr=final_std, fmt="o-", capsize=3)
    if iterations is not None:
        for p, m, k in zip(ps, final_mean, iterations):
            if np.isfinite(m):
                ax.annotate(f"{k}", (p, m), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("p (trained and SVM)")
    ax.set_ylabel("final D (mean ± std)")
    ax.set_yscale("log")
    ax.set_title("final matched divergence vs p (labels: iterations)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def verdict_figure(counts: Mapping[str, Mapping[str, int]]):
    """Stacked bars: seeds whose selected α is globally / locally optimal / neither / unavailable, per p."""
    kinds = ["global", "local", "neither", "unavailable"]
    colors = ["tab:green", "tab:orange", "tab:red", "tab:gray"]
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(counts)
    bottom = np.zeros(len(labels))
    for kind, c in zip(kinds, colors):
        vals = np.array([counts[l].get(kind, 0) for l in labels], dtype=float)
        ax.bar(labels, vals, bottom=bottom, color=c, label=kind)
        bottom += vals
    ax.set_xlabel("p")
    ax.set_ylabel("seeds")
    ax.set_title("token optimality of the selected α (final softmax argmax)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _path_axes(ax, path: np.ndarray, ray: np.ndarray, label: str, c, names: tuple[str, str]) -> None:
    ax.plot(path[:, 0], path[:, 1], "-", color=c, lw=1.6, label=f"{label}: iterate")
    ax.plot(path[-1, 0], path[-1, 1], "o", color=c, ms=4)
    if np.isfinite(ray).all():
        end = ray[-1]
        ax.plot([0, end[0]], [0, end[1]], "--", color="k", lw=1, label=f"{label}: ℓp-SVM ray")
    ax.plot([0], [0], "k+", ms=8)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _curves_axes(ax, curves: Mapping[str, tuple], colors: Sequence, ylabel: str) -> None:
    """Plain per-label curves ``label -> (iterations, values)`` on a log iteration axis."""
    for (label, (k, v)), c in zip(curves.items(), colors):
        ax.plot(_xpos(k), v, color=c, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("iteration k")
    ax.set_ylabel(ylabel)
    ax.set_title(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def path_figure(paths: Mapping[str, tuple[np.ndarray, np.ndarray]], max_softmax: Mapping[str, tuple],
                loss: Mapping[str, tuple], *, entries=((1, 2), (3, 4)), title: str = ""):
    """One path panel per p (iterate vs SVM ray), then max-softmax and loss vs iteration."""
    n = len(paths)
    fig, axes = plt.subplots(1, n + 2, figsize=(4.2 * (n + 2), 4))
    cols = _colors(n)
    (r1, c1), (r2, c2) = entries
    names = (f"W[{r1},{c1}]", f"W[{r2},{c2}]")
    for ax, ((label, (path, ray)), c) in zip(axes[:n], zip(paths.items(), cols)):
        _path_axes(ax, path, ray, label, c, names)
        ax.set_title(f"{label}: path vs ℓp-AttSVM ray")
    _curves_axes(axes[n], max_softmax, cols, "mean max softmax probability")
    _curves_axes(axes[n + 1], loss, cols, "logistic loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def joint_figure(w_paths: Mapping[str, tuple[np.ndarray, np.ndarray]], v_paths: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 max_softmax: Mapping[str, tuple], logistic: Mapping[str, tuple]):
    """E2: rows of (W[0,0], W[0,1]) path, v path, max-softmax and logistic probability per p."""
    n = len(w_paths)
    fig, axes = plt.subplots(2, n + 1, figsize=(4.2 * (n + 1), 8), squeeze=False)
    cols = _colors(n)
    for j, ((label, (path, ray)), c) in enumerate(zip(w_paths.items(), cols)):
        _path_axes(axes[0, j], path, ray, label, c, ("W[0,0]", "W[0,1]"))
        axes[0, j].set_title(f"{label}: W vs ℓp-AttSVM ray")
    for j, ((label, (path, ray)), c) in enumerate(zip(v_paths.items(), cols)):
        _path_axes(axes[1, j], path[:, :2], ray[:, :2], label, c, ("v[0]", "v[1]"))
        axes[1, j].set_title(f"{label}: v vs ℓp-SVM ray")
    _curves_axes(axes[0, n], max_softmax, cols, "mean max softmax probability")
    _curves_axes(axes[1, n], logistic, cols, "mean logistic probability σ(Y f)")
    fig.suptitle("E2: joint ℓp-JointGD on the two-sample instance")
    fig.tight_layout()
    return fig


__all__ = [
    "mean_std_axes", "convergence_figure", "matrix_figure", "rate_figure", "sweep_figure", "verdict_figure",
    "path_figure", "joint_figure",
]
