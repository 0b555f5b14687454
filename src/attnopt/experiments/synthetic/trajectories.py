r"""Single-instance trajectories: the E1-path (two entries of W(k) against the ℓp-AttSVM ray)
and E2 (joint training of W and v on the spec's two-sample instance).

* :func:`run_path` — one seed, W(0) = 0 by default; the "ray" is the SVM solution rescaled to
  the iterate's ℓp norm, :math:`W^{mm}\,\|W(k)\|_p/\|W^{mm}\|_p`.
* :func:`run_joint` — E2: normalised ℓp-JointGD (W and v normalised separately); the selected
  tokens must be p=1.75 → (1,0), p=2 → (1,0), p=3 → (0,0); W → ℓp-AttSVM, v → decoder ℓp-SVM.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from attnopt.data.synthetic import convergence_instance, joint_instance
from attnopt.experiments.synthetic import records
from attnopt.experiments.synthetic.config import JointConfig, PathConfig
from attnopt.experiments.synthetic.md import Trajectory, log_grid, train_md
from attnopt.experiments.synthetic.records import Table
from attnopt.experiments.synthetic.solves import SVMCache, SVMOutcome, ray, selected_tokens
from attnopt.report.tables import fmt
from attnopt.runtime import ProgressFn


def _train(cfg, data, p: float, progress: ProgressFn | None, label: str, train_v: bool = False) -> Trajectory:
    K = cfg.iterations_for(p)
    cb = (lambda k: progress(f"{label} p={p:g}", k, K)) if progress else None
    return train_md(data.X, data.Y, data.Z, data.v, data.W0, p, cfg.lr, K, log_iters=log_grid(K, cfg.n_log),
                    train_v=train_v, normalize=cfg.normalize, eps=cfg.eps, step=cfg.step, progress=cb)


def _per_p(cfg, data, progress: ProgressFn | None, label: str, run_one: Callable, train_v: bool = False) -> dict:
    """The loop of E1-path and E2: for every p of ``cfg.ps``, train (:func:`_train`), take the
    tokens α the final W selects (argmax of the final scores), then ``run_one(p, traj, α, cache)``
    with one SVM cache for all p.  Returns ``{p: run_one(...)}``."""
    cache = SVMCache(cfg.solver, cfg.tol)
    runs = {}
    for p in cfg.ps:
        tr = _train(cfg, data, p, progress, label, train_v=train_v)
        runs[p] = run_one(p, tr, selected_tokens(data.X, tr.final_W, data.Z), cache)
    return runs


def _curves(runs: Mapping[float, Any], attr: str) -> dict:
    return {f"p = {p:g}": (r.traj.iters, getattr(r.traj, attr).numpy()) for p, r in runs.items()}


@dataclass
class _Result:
    """What E1-path and E2 return: the config, one run per p, the summary, the wall time (s)
    and the run folder (None: nothing written)."""

    config: Any
    runs: dict
    summary: dict
    seconds: float
    out: Path | None = None


# --------------------------------------------------------------------------------------
# E1 path


@dataclass
class PathRun:
    p: float
    iterations: int
    traj: Trajectory
    alpha: np.ndarray
    svm: SVMOutcome
    path: np.ndarray  # (L, 2) the two entries of W(k)
    ray: np.ndarray  # (L, 2) the same entries of W^mm ‖W(k)‖_p / ‖W^mm‖_p (NaN if no SVM)
    divergence: np.ndarray  # (L,)
    verdict: str


class PathResult(_Result):
    """E1-path: ``config`` a :class:`PathConfig`, ``runs`` p → :class:`PathRun`."""


def run_path(config: PathConfig | Mapping | None = None, *, out: str | Path | None = None,
             progress: ProgressFn | None = None, **overrides: Any) -> PathResult:
    """E1-path: one seed, two entries of W(k) against the rescaled ℓp-AttSVM ray, per p."""
    return records.run(PathConfig, "e1-path", config, overrides, out, lambda cfg: _path(cfg, progress),
                       _path_report, _write_path_files)


def _path(cfg: PathConfig, progress: ProgressFn | None) -> PathResult:
    t0 = time.perf_counter()
    data = convergence_instance(cfg.seed, cfg.n, cfg.T, cfg.d, query=cfg.query, init=cfg.init, init_std=cfg.init_std)
    (r1, c1), (r2, c2) = cfg.entries

    def one(p: float, tr: Trajectory, alpha, cache: SVMCache) -> PathRun:
        o, verdict = cache.verdict(cfg.seed, data.X, data.Y, data.Z, data.v, alpha, p)
        rays, D = ray(o, tr.W, p, dim=(-2, -1))
        W = tr.W.numpy()
        return PathRun(p, cfg.iterations_for(p), tr, alpha, o, np.stack([W[:, r1, c1], W[:, r2, c2]], axis=-1),
                       np.stack([rays[:, r1, c1], rays[:, r2, c2]], axis=-1), D, verdict)

    runs = _per_p(cfg, data, progress, "path", one)
    res = PathResult(cfg, runs, {}, time.perf_counter() - t0)
    res.summary = {"experiment": "e1-path", "seed": cfg.seed, "entries": cfg.entries, "seconds": res.seconds,
                   "per_p": {f"{p:g}": {"iterations": r.iterations, "alpha": r.alpha.tolist(), "svm_status": r.svm.status,
                                        "divergence_final": float(r.divergence[-1]), "verdict": r.verdict,
                                        "w_norm_final": float(r.traj.w_norm[-1]),
                                        "max_softmax_final": float(r.traj.max_softmax[-1]),
                                        "loss_final": float(r.traj.loss[-1]),
                                        "path_final": r.path[-1].tolist(), "ray_final": r.ray[-1].tolist()}
                             for p, r in runs.items()}}
    return res


def path_table(res: PathResult) -> Table:
    header = ["p", "iterations", "α", "SVM", "D final", "verdict", "(W_a, W_b) final", "ray final", "max-softmax",
              "loss"]
    rows = [[key, str(s["iterations"]), str(tuple(s["alpha"])), s["svm_status"], fmt(s["divergence_final"]),
             s["verdict"], "({:.3f}, {:.3f})".format(*s["path_final"]), "({:.3f}, {:.3f})".format(*s["ray_final"]),
             f"{s['max_softmax_final']:.4f}", f"{s['loss_final']:.4f}"] for key, s in res.summary["per_p"].items()]
    return f"E1 path (seed {res.config.seed})", header, rows


def _write_path_files(rd, res: PathResult) -> None:
    from attnopt.report import figures as F

    rows = []
    for p, r in res.runs.items():
        tr = r.traj
        rows += records.trace_rows(tr.iters, {"w_a": r.path[:, 0], "w_b": r.path[:, 1], "ray_a": r.ray[:, 0],
                                              "ray_b": r.ray[:, 1], "divergence": r.divergence,
                                              "w_norm": tr.w_norm, "max_softmax": tr.max_softmax, "loss": tr.loss},
                                   p=p)
    rd.write_csv("path_history.csv", rows=rows)
    rd.save_figure("path.png", F.path_figure(
        {f"p = {p:g}": (r.path, r.ray) for p, r in res.runs.items()}, _curves(res.runs, "max_softmax"),
        _curves(res.runs, "loss"), entries=res.config.entries,
        title=f"E1-path: seed {res.config.seed}, W(0) = {res.config.init}"))


def _path_report(res: PathResult) -> str:
    cfg = res.config
    (r1, c1), (r2, c2) = cfg.entries
    return "\n".join([
        "# E1-path — iterate path against the ℓp-AttSVM ray", "",
        f"Seed {cfg.seed}, W(0) = {cfg.init}, η = {cfg.lr}; entries W[{r1},{c1}] and W[{r2},{c2}]. "
        "The ray is W^mm rescaled to the iterate's ℓp norm.", "",
        records.markdown(path_table(res)), "",
        f"Wall time {res.seconds:.1f} s. Figure: `path.png`; data: `path_history.csv`."])


# --------------------------------------------------------------------------------------
# E2 joint


@dataclass
class JointRun:
    p: float
    iterations: int
    traj: Trajectory
    alpha: tuple[int, ...]
    expected: tuple[int, ...] | None
    att_svm: SVMOutcome
    dec_svm: SVMOutcome
    w_path: np.ndarray  # (L, 2): W[0,0], W[0,1]
    w_ray: np.ndarray  # (L, 2)
    v_path: np.ndarray  # (L, d)
    v_ray: np.ndarray  # (L, d)
    divergence_W: np.ndarray  # (L,)
    divergence_v: np.ndarray  # (L,)
    verdict: str
    first_iter_softmax_99: int | None
    first_iter_logistic_99: int | None

    @property
    def matches_spec(self) -> bool | None:
        return None if self.expected is None else tuple(self.alpha) == tuple(self.expected)


class JointResult(_Result):
    """E2: ``config`` a :class:`JointConfig`, ``runs`` p → :class:`JointRun`."""


def _first_reach(iters: np.ndarray, vals: np.ndarray, level: float) -> int | None:
    idx = np.flatnonzero(vals >= level)
    return int(iters[idx[0]]) if idx.size else None


def run_joint(config: JointConfig | Mapping | None = None, *, out: str | Path | None = None,
              progress: ProgressFn | None = None, **overrides: Any) -> JointResult:
    """E2: normalised ℓp-JointGD on the spec's instance; W → ℓp-AttSVM, v → decoder ℓp-SVM."""
    return records.run(JointConfig, "e2-joint", config, overrides, out, lambda cfg: _joint(cfg, progress),
                       _joint_report, _write_joint_files)


def _joint(cfg: JointConfig, progress: ProgressFn | None) -> JointResult:
    t0 = time.perf_counter()
    data = joint_instance()

    def one(p: float, tr: Trajectory, alpha, cache: SVMCache) -> JointRun:
        ao, verdict = cache.verdict(("e2", p), data.X, data.Y, data.Z, tr.final_v, alpha, p)
        do = cache.decoder("e2", data.X, data.Y, alpha, p)
        w_ray, dW = ray(ao, tr.W, p, dim=(-2, -1))
        v_ray, dv = ray(do, tr.v, p, dim=-1)
        return JointRun(p, cfg.iterations_for(p), tr, tuple(int(a) for a in alpha), cfg.expected_for(p), ao, do,
                        tr.W[:, 0, :2].numpy(), w_ray[:, 0, :2], tr.v.numpy(), v_ray, dW, dv, verdict,
                        _first_reach(tr.iters, tr.max_softmax.numpy(), 0.99),
                        _first_reach(tr.iters, tr.logistic_prob.numpy(), 0.99))

    runs = _per_p(cfg, data, progress, "joint", one, train_v=True)
    res = JointResult(cfg, runs, {}, time.perf_counter() - t0)
    res.summary = {
        "experiment": "e2-joint", "seconds": res.seconds,
        "all_match_spec": all(r.matches_spec is not False for r in runs.values()),
        "per_p": {f"{p:g}": {
            "iterations": r.iterations, "alpha": list(r.alpha), "expected": list(r.expected) if r.expected else None,
            "matches_spec": r.matches_spec, "att_svm": r.att_svm.status, "decoder_svm": r.dec_svm.status,
            "divergence_W_final": float(r.divergence_W[-1]), "divergence_v_final": float(r.divergence_v[-1]),
            "max_softmax_final": float(r.traj.max_softmax[-1]), "logistic_prob_final": float(r.traj.logistic_prob[-1]),
            "first_iteration_max_softmax_ge_0.99": r.first_iter_softmax_99,
            "first_iteration_logistic_prob_ge_0.99": r.first_iter_logistic_99,
            "verdict": r.verdict, "W_final": r.traj.final_W.tolist(), "v_final": r.traj.final_v.tolist(),
            "W_svm": None if r.att_svm.solution is None else r.att_svm.solution.tolist(),
            "v_svm": None if r.dec_svm.solution is None else r.dec_svm.solution.tolist()}
            for p, r in runs.items()}}
    return res


def joint_table(res: JointResult) -> Table:
    header = ["p", "iterations", "tokens α", "spec", "match", "D(W, W^mm)", "D(v, v^mm)", "softmax ≥ .99 at k",
              "logistic ≥ .99 at k", "verdict"]
    rows = []
    for key, s in res.summary["per_p"].items():
        m = s["matches_spec"]
        rows.append([key, str(s["iterations"]), str(tuple(s["alpha"])),
                     str(tuple(s["expected"])) if s["expected"] else "–", "yes" if m else ("NO" if m is False else "–"),
                     fmt(s["divergence_W_final"]), fmt(s["divergence_v_final"]),
                     str(s["first_iteration_max_softmax_ge_0.99"]), str(s["first_iteration_logistic_prob_ge_0.99"]),
                     s["verdict"]])
    return "E2 joint: selected tokens", header, rows


def _write_joint_files(rd, res: JointResult) -> None:
    from attnopt.report import figures as F

    rows = []
    for p, r in res.runs.items():
        tr = r.traj
        rows += records.trace_rows(tr.iters, {
            "W00": r.w_path[:, 0], "W01": r.w_path[:, 1], "ray_W00": r.w_ray[:, 0], "ray_W01": r.w_ray[:, 1],
            "v0": r.v_path[:, 0], "v1": r.v_path[:, 1], "ray_v0": r.v_ray[:, 0], "ray_v1": r.v_ray[:, 1],
            "divergence_W": r.divergence_W, "divergence_v": r.divergence_v, "max_softmax": tr.max_softmax,
            "logistic_prob": tr.logistic_prob, "loss": tr.loss}, p=p)
    rd.write_csv("joint_history.csv", rows=rows)
    rd.save_figure("joint.png", F.joint_figure(
        {f"p = {p:g}": (r.w_path, r.w_ray) for p, r in res.runs.items()},
        {f"p = {p:g}": (r.v_path, r.v_ray) for p, r in res.runs.items()},
        _curves(res.runs, "max_softmax"), _curves(res.runs, "logistic_prob")))


def _joint_report(res: JointResult) -> str:
    return "\n".join([
        "# E2 — joint ℓp-JointGD on the two-sample instance", "",
        "n=2, T=3, d=2, z_i = x_{i1} (token 0), W(0)=0, v(0)=0, normalised MD (W and v normalised separately), "
        f"η = {res.config.lr}.", "", records.markdown(joint_table(res)), "",
        f"Wall time {res.seconds:.1f} s. Figure: `joint.png`; data: `joint_history.csv`."])


__all__ = ["PathRun", "PathResult", "JointRun", "JointResult", "run_path", "run_joint", "path_table", "joint_table"]
