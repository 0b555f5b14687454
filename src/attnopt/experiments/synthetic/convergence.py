r"""E1 (directional convergence of normalised ℓp-AttGD) and the E1-matrix.

* :func:`run_convergence` — all seeds of one p are trained as *one* batched computation
  (leading seed dimension), the iterates W(k) are stored on a log-spaced grid, and after
  training the ℓp-AttSVM of the selected tokens α = argmax of the final scores is solved per
  seed (cached) and the directional Bregman divergence
  :math:`D_{\psi_p}(W^{mm}/\|W^{mm}\|_p,\; W(k)/\|W(k)\|_p)` is evaluated, batched, on the grid.
  Every seed also gets a token-optimality verdict (global / local / neither).  The rate of
  :math:`D` is fitted against :math:`\log k` (claim 2).
* :func:`run_matrix` — every (p trained, q SVM) with the *same* α (from the p-run) and the
  same W(0); reuses the convergence trajectories (only extra SVM solves).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from attnopt.config import ConfigError
from attnopt.data.synthetic import SyntheticData, convergence_batch
from attnopt.experiments.synthetic import records
from attnopt.experiments.synthetic.config import SPEC_MATRIX_P3, ConvergenceConfig, MatrixConfig, lookup
from attnopt.experiments.synthetic.md import Trajectory, log_grid, train_md
from attnopt.experiments.synthetic.rate import RateFit, fit_rate, fit_window
from attnopt.experiments.synthetic.solves import SVMCache, SVMOutcome, divergence, mean_std, selected_tokens
from attnopt.runtime import ProgressFn, report


@dataclass
class PRun:
    """One trained p: trajectory of all seeds, selected tokens, matched SVMs, divergence."""

    p: float
    iterations: int
    traj: Trajectory
    alpha: np.ndarray  # (S, n)
    svm: list[SVMOutcome]  # q = p, per seed
    divergence: np.ndarray  # (L, S), NaN for unusable seeds
    verdicts: list[str]  # per seed: global / local / neither / unavailable
    svm_seconds: float = 0.0  # matched SVMs + verdicts

    @property
    def iters(self) -> np.ndarray:
        return self.traj.iters

    def svm_counts(self) -> dict[str, int]:
        return _counts(("ok", "unconverged", "infeasible", "error"), [o.status for o in self.svm])

    def verdict_counts(self) -> dict[str, int]:
        return _counts(("global", "local", "neither", "unavailable"), self.verdicts)


def _counts(kinds: tuple[str, ...], values: list[str]) -> dict[str, int]:
    out = dict.fromkeys(kinds, 0)
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


@dataclass
class ConvergenceResult:
    config: ConvergenceConfig
    seeds: tuple[int, ...]
    data: SyntheticData
    runs: dict[float, PRun]
    fits: dict[float, RateFit]
    summary: dict
    seconds: dict
    cache: SVMCache = field(repr=False, default=None)
    out: Path | None = None


def _train_p(cfg: ConvergenceConfig, data: SyntheticData, p: float, progress: ProgressFn | None) -> Trajectory:
    K = cfg.iterations_for(p)
    label = f"train p={p:g}"
    cb = (lambda k: progress(label, k, K)) if progress else None
    return train_md(data.X, data.Y, data.Z, data.v, data.W0, p, cfg.lr, K, log_iters=log_grid(K, cfg.n_log),
                    normalize=cfg.normalize, eps=cfg.eps, step=cfg.step, progress=cb)


def run_convergence(config: ConvergenceConfig | Mapping | None = None, *, out: str | Path | None = None,
                    progress: ProgressFn | None = None, cache: SVMCache | None = None,
                    **overrides: Any) -> ConvergenceResult:
    """E1: batched normalised ℓp-AttGD over all seeds, for each p; see the module docstring."""
    return records.run(ConvergenceConfig, "e1-convergence", config, overrides, out,
                       lambda cfg: _convergence(cfg, progress, cache), records.convergence_report,
                       records.write_convergence_files)


def _convergence(cfg: ConvergenceConfig, progress: ProgressFn | None, cache: SVMCache | None) -> ConvergenceResult:
    t_start = time.perf_counter()
    seeds = cfg.seed_list()
    data = convergence_batch(seeds, cfg.n, cfg.T, cfg.d, query=cfg.query, init=cfg.init, init_std=cfg.init_std)
    cache = cache or SVMCache(cfg.solver, cfg.tol)
    runs: dict[float, PRun] = {}
    fits: dict[float, RateFit] = {}
    train_s = svm_s = 0.0
    for p in cfg.ps:
        traj = _train_p(cfg, data, p, progress)
        train_s += traj.seconds
        alpha = selected_tokens(data.X, traj.final_W, data.Z)
        t0 = time.perf_counter()
        svm, verdicts = [], []
        for s, seed in enumerate(seeds):
            if cfg.verdicts:  # token_optimality solves the matched SVM; the cache keeps it
                o, v = cache.verdict(seed, data.X[s], data.Y[s], data.Z[s], data.v[s], alpha[s], p)
            else:
                o, v = cache.att(seed, data.X[s], data.Z[s], alpha[s], p), "unavailable"
            svm.append(o)
            verdicts.append(v)
            report(progress, f"SVM p={p:g}", 1, len(seeds))
        t_svm = time.perf_counter() - t0
        svm_s += t_svm
        D = divergence(svm, traj.W, p, cfg.drop_unconverged)
        runs[p] = PRun(p, cfg.iterations_for(p), traj, alpha, svm, D, verdicts, t_svm)
        mean, _ = mean_std(D, axis=1)
        k_from, k_to = fit_window(traj, cfg.fit_from)
        fits[p] = fit_rate(traj.iters, mean, k_from, per_seed=D, k_to=k_to)
    seconds = dict(train=train_s, svm=svm_s, total=time.perf_counter() - t_start)
    res = ConvergenceResult(cfg, seeds, data, runs, fits, {}, seconds, cache)
    res.summary = _convergence_summary(res)
    return res


def final(arr: np.ndarray) -> tuple[float, float]:
    """Mean ± std over seeds at the last logged iteration of an (L, S) array."""
    m, s = mean_std(arr[-1])
    return float(m), float(s)


def _convergence_summary(res: ConvergenceResult) -> dict:
    per_p = {}
    for p, run in res.runs.items():
        D = run.divergence
        dm, ds = final(D)
        per_p[f"{p:g}"] = {
            "p": p,
            "iterations": run.iterations,
            "seeds": len(res.seeds),
            "divergence_final_mean": dm,
            "divergence_final_std": ds,
            "divergence_final_median": float(np.nanmedian(D[-1])) if np.isfinite(D[-1]).any() else math.nan,
            "divergence_initial_mean": float(mean_std(D[0])[0]),
            "seeds_used": int(np.isfinite(D[-1]).sum()),
            "svm": run.svm_counts(),
            "svm_issues": {f"seed {res.seeds[s]}": f"{o.status}: {o.message}"[:300]
                           for s, o in enumerate(run.svm) if o.status != "ok"},
            "verdicts": run.verdict_counts(),
            "loss_final_mean": float(run.traj.loss[-1].mean()),
            "max_softmax_final_mean": float(run.traj.max_softmax[-1].mean()),
            "w_norm_final_mean": float(run.traj.w_norm[-1].mean()),
            "rate_fit": res.fits[p].summary(),
            "train_seconds": run.traj.seconds,
            "svm_seconds": run.svm_seconds,
        }
    return {"experiment": "e1-convergence", "seeds": [res.seeds[0], res.seeds[-1]] if res.seeds else [],
            "n_seeds": len(res.seeds), "per_p": per_p, "seconds": res.seconds,
            "svm_solves": res.cache.solves if res.cache else 0}


# --------------------------------------------------------------------------------------
# E1 matrix


@dataclass
class MatrixResult:
    config: MatrixConfig
    convergence: ConvergenceResult
    qs: tuple[float, ...]
    divergence: dict[tuple[float, float], np.ndarray]  # (p, q) -> (L_p, S)
    svm: dict[tuple[float, float], list[SVMOutcome]]
    table: list[dict]
    summary: dict
    seconds: dict
    out: Path | None = None

    def final(self, p: float, q: float) -> tuple[float, float]:
        return final(self.divergence[(p, q)])


def run_matrix(config: MatrixConfig | Mapping | None = None, *, out: str | Path | None = None,
               progress: ProgressFn | None = None, convergence: ConvergenceResult | None = None,
               **overrides: Any) -> MatrixResult:
    """E1-matrix: D_ψp(W_q^mm(α_p)/‖·‖_p, W_p(k)/‖·‖_p) for every (p, q), same α and W(0).

    Reuses ``convergence`` (its trajectories and SVM cache) when given; otherwise runs
    :func:`run_convergence` first with the same configuration.  The run folder then holds the
    convergence outputs too.
    """
    if convergence is not None and config is None:
        cfg = MatrixConfig.from_dict(convergence.config.to_dict(), **overrides)
    else:
        cfg = MatrixConfig.coerce(config, **overrides)
    if convergence is not None and convergence.config != cfg.convergence():
        raise ConfigError("run_matrix: the given convergence result was run with a different configuration")
    res = records.run(MatrixConfig, "e1-matrix", cfg, {}, out, lambda cfg: _matrix(cfg, progress, convergence),
                      records.matrix_report, records.write_matrix_files)
    if res.out is not None:
        res.convergence.out = res.out
    return res


def _matrix(cfg: MatrixConfig, progress: ProgressFn | None, convergence: ConvergenceResult | None) -> MatrixResult:
    t_start = time.perf_counter()
    if convergence is None:
        convergence = run_convergence(cfg.convergence(), progress=progress)
    qs = cfg.q_list()
    data, seeds, cache = convergence.data, convergence.seeds, convergence.cache
    t0 = time.perf_counter()
    solves0 = cache.solves
    div, svms = {}, {}
    for p, run in convergence.runs.items():
        for q in qs:
            alpha = run.alpha if cfg.alpha_from == "p" else lookup(convergence.runs, q).alpha
            outs = []
            for s, seed in enumerate(seeds):
                outs.append(cache.att(seed, data.X[s], data.Z[s], alpha[s], q))
                report(progress, f"SVM p={p:g} q={q:g}", 1, len(seeds))
            svms[(p, q)] = outs
            div[(p, q)] = divergence(outs, run.traj.W, p, cfg.drop_unconverged)
    t_svm = time.perf_counter() - t0
    table = []
    for p in convergence.runs:
        for q in qs:
            m, s = final(div[(p, q)])
            table.append({"p_trained": p, "q_svm": q, "iterations": convergence.runs[p].iterations,
                          "divergence_final_mean": m, "divergence_final_std": s,
                          "divergence_initial_mean": float(mean_std(div[(p, q)][0])[0]),
                          "seeds_used": int(np.isfinite(div[(p, q)][-1]).sum()),
                          "matched": bool(math.isclose(p, q)),
                          "svm_not_ok": int(sum(o.status != "ok" for o in svms[(p, q)]))})
    seconds = dict(convergence=convergence.seconds, extra_svm=t_svm, extra_svm_solves=cache.solves - solves0,
                   total=convergence.seconds["total"] + (time.perf_counter() - t_start))
    res = MatrixResult(cfg, convergence, qs, div, svms, table, {}, seconds)
    res.summary = _matrix_summary(res)
    return res


def _matrix_summary(res: MatrixResult) -> dict:
    diag_below = {}
    for p in res.convergence.runs:
        m = {q: res.final(p, q)[0] for q in res.qs}
        matched = [q for q in res.qs if math.isclose(q, p)]
        if matched:
            others = [v for q, v in m.items() if not math.isclose(q, p) and math.isfinite(v)]
            diag_below[f"{p:g}"] = bool(others) and all(m[matched[0]] < v for v in others)
    return {"experiment": "e1-matrix", "table": res.table, "matched_is_smallest": diag_below,
            "spec_p3_readoff": {f"{q:g}": v for q, v in SPEC_MATRIX_P3.items()},
            "convergence": res.convergence.summary, "seconds": res.seconds}


__all__ = ["PRun", "ConvergenceResult", "MatrixResult", "run_convergence", "run_matrix", "final"]
