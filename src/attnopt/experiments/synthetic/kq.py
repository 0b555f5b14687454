r"""E7: the (K, Q) parameterisation.  W = K Qᵀ with K, Q ∈ ℝ^{d×m} trained jointly by normalised
ℓp mirror descent (K and Q normalised separately) on the E1 instances; which max-margin
direction does K Qᵀ approach — the nuclear-norm AttSVM, the Frobenius (ℓ2) one, or the ℓp one?

The gradients come from the same loss as E1: with G = ∂L/∂W (the exact step's scaled
gradient, or autograd's for the published step), ∂L/∂K = G Q and ∂L/∂Q = Gᵀ K.  For each
target SVM S the run reports the cosine ⟨W(k), S⟩/(‖W(k)‖_F ‖S‖_F) and the directional
Bregman divergence D_ψp(S/‖S‖_p, W(k)/‖W(k)‖_p), mean ± std over seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from attnopt.config import ConfigMixin, check_int, check_sequence, config_error
from attnopt.data.synthetic import convergence_batch, kq_init
from attnopt.experiments.synthetic import records
from attnopt.experiments.synthetic.config import DEFAULT_EPS, Iterations, validate
from attnopt.experiments.synthetic.md import log_grid, md_step
from attnopt.experiments.synthetic.records import Table
from attnopt.experiments.synthetic.solves import SVMCache, mean_std, selected_tokens
from attnopt.mirror import directional_bregman
from attnopt.models.attention import attention_output, logistic_loss, scaled_gradients
from attnopt.report.tables import fmt
from attnopt.runtime import ProgressFn

TARGETS = ("nuclear", "l2", "lp")


@dataclass(frozen=True)
class KQConfig(Iterations, ConfigMixin):
    """E7 configuration: ``ranks`` are the inner dimensions m of K, Q ∈ ℝ^{d×m} (m = d and
    m < d); K(0), Q(0) have N(0, init_std²) entries (:func:`attnopt.data.synthetic.kq_init`);
    the rest as in :class:`~attnopt.experiments.synthetic.config.ConvergenceConfig`."""

    ps: tuple[float, ...] = (1.75, 2.0, 3.0)
    ranks: tuple[int, ...] = (10, 3)
    iterations: Any = None
    n_seeds: int = 20
    seed_start: int = 1
    n: int = 6
    T: int = 8
    d: int = 10
    lr: float = 0.1
    step: str = "exact"
    eps: float = DEFAULT_EPS
    init_std: float = 0.1
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 100

    def __post_init__(self) -> None:
        validate(self)
        object.__setattr__(self, "ranks", check_sequence(self, "ranks", self.ranks, _check_rank))

    def seed_list(self) -> tuple[int, ...]:
        return tuple(range(self.seed_start, self.seed_start + self.n_seeds))


def _check_rank(owner: Any, name: str, val: Any) -> int:
    m = check_int(owner, name, val, 1)
    if m > owner.d:
        raise config_error(owner, f"{name} = {m} exceeds d = {owner.d} (K Qᵀ has rank at most d anyway)")
    return m


@dataclass
class KQRun:
    p: float
    m: int
    iterations: int
    iters: np.ndarray
    W: torch.Tensor  # (L, S, d, d): K(k) Q(k)ᵀ
    max_softmax: torch.Tensor  # (L, S)
    loss: torch.Tensor  # (L, S)
    alpha: np.ndarray  # (S, n)
    cosine: dict[str, np.ndarray]  # target -> (L, S)
    divergence: dict[str, np.ndarray]  # target -> (L, S)
    svm_status: dict[str, list[str]]
    rank_final: np.ndarray  # (S,) numerical rank of W(K)
    rank_nuclear: np.ndarray  # (S,) numerical rank of the nuclear-norm SVM solution
    seconds: float


@dataclass
class KQResult:
    config: KQConfig
    runs: dict[tuple[float, int], KQRun]
    summary: dict
    seconds: float
    out: Path | None = None


def train_kq(data, K0, Q0, p: float, lr: float, iterations: int, log_iters: np.ndarray, *, step: str = "exact",
             eps: float = DEFAULT_EPS, progress=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised ℓp-MD on (K, Q); returns W = K Qᵀ, the mean max-softmax and the loss at ``log_iters``."""
    K, Q = K0.clone(), Q0.clone()
    L = log_iters.size
    Ws = torch.empty((L, *K.shape[:-2], K.shape[-2], Q.shape[-2]), dtype=K.dtype)
    sm, loss = torch.empty((L, *K.shape[:-2]), dtype=K.dtype), torch.empty((L, *K.shape[:-2]), dtype=K.dtype)
    j = 0
    for k in range(iterations + 1):
        W = K @ Q.transpose(-2, -1)
        if step == "exact":
            g = scaled_gradients(data.X, data.Y, data.Z, W, data.v)
            G, f, probs = g.W, g.f, g.probs
        else:
            Wg = W.clone().requires_grad_(True)
            f, probs = attention_output(data.X, Wg, data.Z, data.v)
            (G,) = torch.autograd.grad(logistic_loss(f, data.Y).sum(), [Wg])
            f, probs = f.detach(), probs.detach()
        if j < L and log_iters[j] == k:
            Ws[j], sm[j], loss[j] = W, probs.amax(-1).mean(-1), logistic_loss(f, data.Y)
            j += 1
        if k == iterations:
            break
        GK, GQ = G @ Q, G.transpose(-2, -1) @ K  # ∂L/∂K and ∂L/∂Q of L(K Qᵀ)
        step_eps = eps if step == "published" else 0.0
        K, Q = md_step(K, GK, p, lr, eps=step_eps), md_step(Q, GQ, p, lr, eps=step_eps)
        if progress is not None and ((k + 1) % 100 == 0 or k + 1 == iterations):
            progress((k + 1) - 100 * (k // 100))
    return Ws, sm, loss


def _rank(W: np.ndarray) -> int:
    s = np.linalg.svd(W, compute_uv=False)
    return int((s > 1e-3 * s[0]).sum()) if s[0] > 0 else 0


def run_kq(config: KQConfig | Mapping | None = None, *, out: str | Path | None = None,
           progress: ProgressFn | None = None, **overrides: Any) -> KQResult:
    """E7 (see the module docstring)."""
    return records.run(KQConfig, "e7-kq", config, overrides, out, lambda cfg: _kq(cfg, progress), kq_report,
                       _write_kq_files)


def _kq(cfg: KQConfig, progress: ProgressFn | None) -> KQResult:
    t0 = time.perf_counter()
    seeds = cfg.seed_list()
    data = convergence_batch(seeds, cfg.n, cfg.T, cfg.d, init="zeros")
    cache = SVMCache(cfg.solver, cfg.tol)
    runs = {}
    for p in cfg.ps:
        for m in cfg.ranks:
            t1 = time.perf_counter()
            K0, Q0 = kq_init(seeds, cfg.d, m, cfg.init_std)
            K_it = cfg.iterations_for(p)
            label = f"K,Q p={p:g} m={m}"
            cb = (lambda a, label=label, K_it=K_it: progress(label, a, K_it)) if progress else None
            iters = log_grid(K_it, cfg.n_log)
            W, sm, loss = train_kq(data, K0, Q0, p, cfg.lr, K_it, iters, step=cfg.step, eps=cfg.eps, progress=cb)
            alpha = selected_tokens(data.X, W[-1], data.Z)
            sols = {t: [] for t in TARGETS}
            for s, seed in enumerate(seeds):
                X, Z = data.X[s], data.Z[s]
                sols["nuclear"].append(cache.nuclear(seed, X, Z, alpha[s]))
                sols["l2"].append(cache.att(seed, X, Z, alpha[s], 2.0))
                sols["lp"].append(cache.att(seed, X, Z, alpha[s], p))
            cos, div = {}, {}
            for t, outs in sols.items():
                S = torch.stack([torch.from_numpy(o.solution) if o.status == "ok" else torch.full(W.shape[-2:], np.nan,
                                                                                                    dtype=W.dtype)
                                 for o in outs])
                cos[t] = ((W * S).sum((-2, -1)) / (torch.linalg.matrix_norm(W) * torch.linalg.matrix_norm(S))).numpy()
                div[t] = directional_bregman(torch.nan_to_num(S).unsqueeze(0), W, p, dim=(-2, -1), zero="nan").numpy()
                div[t][:, [o.status != "ok" for o in outs]] = np.nan
            runs[(p, m)] = KQRun(
                p, m, K_it, iters, W, sm, loss, alpha, cos, div, {t: [o.status for o in outs] for t, outs in sols.items()},
                np.array([_rank(W[-1, s].numpy()) for s in range(len(seeds))]),
                np.array([_rank(o.solution) if o.usable else -1 for o in sols["nuclear"]]), time.perf_counter() - t1)
    res = KQResult(cfg, runs, {}, time.perf_counter() - t0)
    res.summary = _summary(res)
    return res


def _summary(res: KQResult) -> dict:
    per = {}
    for (p, m), r in res.runs.items():
        tg = {}
        for t in TARGETS:
            cm, cs = mean_std(r.cosine[t][-1])
            dm, ds = mean_std(r.divergence[t][-1])
            tg[t] = {"cosine_final_mean": float(cm), "cosine_final_std": float(cs), "divergence_final_mean": float(dm),
                     "divergence_final_std": float(ds), "svm_not_ok": sum(s != "ok" for s in r.svm_status[t]),
                     "seeds_used": int(np.isfinite(r.cosine[t][-1]).sum())}
        closest = max(TARGETS, key=lambda t: tg[t]["cosine_final_mean"])
        per[f"p={p:g},m={r.m}"] = {
            "p": p, "m": r.m, "iterations": r.iterations, "targets": tg, "closest_by_cosine": closest,
            "max_softmax_final_mean": float(r.max_softmax[-1].mean()), "loss_final_mean": float(r.loss[-1].mean()),
            "rank_final_mean": float(r.rank_final.mean()), "rank_nuclear_svm_mean": float(r.rank_nuclear.mean()),
            "seconds": r.seconds}
    return {"experiment": "e7-kq", "n_seeds": res.config.n_seeds, "per_run": per, "seconds": res.seconds}


def kq_table(res: KQResult) -> Table:
    header = ["p", "m", "iterations"] + [f"cos to {t} SVM" for t in TARGETS] + \
        [f"D_ψp to {t} SVM" for t in TARGETS] + ["closest", "rank W / nuclear SVM", "max-softmax"]
    rows = []
    for key, s in res.summary["per_run"].items():
        tg = s["targets"]
        rows.append([f"{s['p']:g}", str(s["m"]), str(s["iterations"])]
                    + [fmt(tg[t]["cosine_final_mean"], tg[t]["cosine_final_std"], 4) for t in TARGETS]
                    + [fmt(tg[t]["divergence_final_mean"], tg[t]["divergence_final_std"]) for t in TARGETS]
                    + [s["closest_by_cosine"], f"{s['rank_final_mean']:.1f} / {s['rank_nuclear_svm_mean']:.1f}",
                       f"{s['max_softmax_final_mean']:.4f}"])
    return f"E7 (K, Q): final direction of K Qᵀ against each SVM (mean ± std, {res.config.n_seeds} seeds)", header, rows


def _write_kq_files(rd, res: KQResult) -> None:
    from attnopt.report import figures as F

    rows, panels = [], {}
    for (p, m), r in res.runs.items():
        cols = {**{f"cos_{t}": r.cosine[t] for t in TARGETS}, **{f"D_{t}": r.divergence[t] for t in TARGETS},
                "max_softmax": r.max_softmax.numpy(), "loss": r.loss.numpy()}
        rows += records.stat_rows(r.iters, cols, p=p, m=m)
        panels[f"p = {p:g}, m = {m}"] = {t: (r.iters, *mean_std(1.0 - r.cosine[t], axis=1)) for t in TARGETS}
    rd.write_csv("kq_history.csv", rows=rows)
    rd.save_figure("kq.png", F.kq_figure(panels, n_seeds=res.config.n_seeds))


def kq_report(res: KQResult) -> str:
    cfg = res.config
    return "\n".join([
        "# E7 — the (K, Q) parameterisation: which SVM does K Qᵀ approach?", "",
        f"Seeds {cfg.seed_start}..{cfg.seed_start + cfg.n_seeds - 1}, n={cfg.n}, T={cfg.T}, d={cfg.d}, η={cfg.lr}, "
        f"{cfg.step} normalised ℓp-MD on K and Q (each normalised separately), K(0), Q(0) ~ N(0, {cfg.init_std}²), "
        "α = argmax of the final scores; targets: nuclear-norm AttSVM, Frobenius (ℓ2) AttSVM, ℓp-AttSVM of that α.", "",
        records.markdown(kq_table(res)), "",
        f"Wall time {res.seconds:.1f} s. Figure: `kq.png` (1 − cosine against k); data: `kq_history.csv`."])


__all__ = ["KQConfig", "KQRun", "KQResult", "run_kq", "train_kq", "kq_table", "TARGETS"]
