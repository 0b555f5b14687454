"""E1 at small p: how the published normalised step G/(‖G‖_q + ε) depends on ε, and whether its
stall comes from ε or from autograd's cancellation (issue 26).

    python scripts/e1_eps_sensitivity.py --out results/synthetic/e1_eps_sensitivity
    python scripts/e1_eps_sensitivity.py --n-seeds 5 --iters 200 --out /tmp/eps   # quick check

The protocol is the p sweep's (``attnopt synthetic convergence --p 1.1``: seeds 1..100, n = 6,
T = 8, d = 10, η = 0.1, W(0) ~ N(0, 1), 1,500 iterations).  For every ε the update
W⁺ = ∇ψ*(∇ψ(W) − η G/(‖G‖_q + ε)) is run with two gradients:

* ``autograd``: G from autograd, i.e. ``train_md(step="published", eps=ε)``, the published step
  at ε = float64 machine epsilon;
* ``exact``: the same update with the gradient formed without cancellation
  (``attnopt.models.attention.scaled_gradients`` gives g = G·e^{−M} with one log-scale M per
  seed, so G/(‖G‖_q + ε) = g/(‖g‖_q + ε·e^{−M}) is evaluated with no underflow); at ε = 0 this
  is the exact step, ``train_md(step="exact")``.

If the two gradients give the same divergence at the same ε, the stall is set by ε and not by
cancellation.  For each row: the final directional divergence to the ℓp-AttSVM of the selected
tokens (mean ± population std, median), the mean final ‖W‖_p, the first logged k where the mean
‖W‖_p reaches 99 % of its final value (W has stopped moving there), and the true ‖G‖_q at the
final iterate (log10, median and range over the seeds, from the exact gradient).  Writes
``eps_sensitivity.json`` and ``eps_sensitivity.csv`` in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnopt.data.synthetic import convergence_batch
from attnopt.experiments.synthetic.md import DEFAULT_EPS, log_grid, md_step, train_md
from attnopt.experiments.synthetic.solves import SVMCache, divergence, mean_std, selected_tokens
from attnopt.files import atomic_write_bytes
from attnopt.mirror import dual_exponent, lp_norm
from attnopt.models.attention import scaled_gradients

EPSILONS = (DEFAULT_EPS, 1e-30, 1e-100, 1e-300, 0.0)


def train_exact_eps(data, p: float, lr: float, iterations: int, eps: float, grid: np.ndarray):
    """The published update with the exact gradient: W(k) on ``grid`` (L, S, d, d)."""
    W = data.W0.detach().clone()
    Ws = torch.empty((grid.size, *W.shape), dtype=W.dtype)
    j = 0
    for k in range(iterations + 1):
        if j < grid.size and grid[j] == k:
            Ws[j] = W
            j += 1
        if k == iterations:
            break
        g = scaled_gradients(data.X, data.Y, data.Z, W, data.v)
        # ε in the units of the scaled gradient; e^{−M} may overflow to inf, and then the step is 0
        eps_scaled = (eps * torch.exp(-g.log_scale_W)).reshape(-1, 1, 1)
        W = md_step(W, g.W, p, lr, eps=eps_scaled)
    return Ws


def log10_true_grad_norm(data, W: torch.Tensor, p: float) -> np.ndarray:
    """log10 ‖∂L/∂W‖_q per seed at ``W`` (S, d, d), from the scaled exact gradient."""
    g = scaled_gradients(data.X, data.Y, data.Z, W, data.v)
    nrm = lp_norm(g.W, dual_exponent(p), dim=(-2, -1))
    return ((torch.log(nrm) + g.log_scale_W) / math.log(10)).numpy()


def one_row(data, seeds, cache, p, lr, iterations, grid, gradient: str, eps: float) -> dict:
    t0 = time.perf_counter()
    if gradient == "autograd" or eps == 0.0:
        step = "published" if gradient == "autograd" else "exact"
        Ws = train_md(data.X, data.Y, data.Z, data.v, data.W0, p, lr, iterations, log_iters=grid,
                      eps=eps, step=step).W
    else:
        Ws = train_exact_eps(data, p, lr, iterations, eps, grid)
    seconds = time.perf_counter() - t0
    final = Ws[-1]
    alpha = selected_tokens(data.X, final, data.Z)
    svm = [cache.att(seed, data.X[s], data.Z[s], alpha[s], p) for s, seed in enumerate(seeds)]
    D = divergence(svm, Ws, p, drop_unconverged=True)
    m, sd = mean_std(D[-1])
    wn = lp_norm(Ws, p, dim=(-2, -1)).numpy().mean(axis=1)
    k_stop = int(grid[np.flatnonzero(wn >= 0.99 * wn[-1])[0]])
    lg = log10_true_grad_norm(data, final, p)
    return {
        "gradient": gradient, "eps": eps,
        "divergence_final_mean": float(m), "divergence_final_std": float(sd),
        "divergence_final_median": float(np.nanmedian(D[-1])), "seeds_used": int(np.isfinite(D[-1]).sum()),
        "w_norm_final_mean": float(wn[-1]), "k_w_norm_99": k_stop,
        "log10_true_grad_norm_median": float(np.median(lg)),
        "log10_true_grad_norm_min": float(lg.min()), "log10_true_grad_norm_max": float(lg.max()),
        "train_seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for eps_sensitivity.json and .csv")
    ap.add_argument("--p", type=float, default=1.1)
    ap.add_argument("--n-seeds", type=int, default=100)
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args(argv)
    if not 1.0 < args.p or args.n_seeds < 1 or args.iters < 1 or args.lr <= 0:
        ap.error("need p > 1, --n-seeds >= 1, --iters >= 1 and --lr > 0")
    torch.set_num_threads(1)
    seeds = tuple(range(1, args.n_seeds + 1))
    data = convergence_batch(seeds, 6, 8, 10, query="random", init="normal", init_std=1.0)
    grid = log_grid(args.iters, 200)
    cache = SVMCache("auto", 1e-6)
    rows = []
    for eps in EPSILONS:
        for gradient in ("autograd", "exact"):
            row = one_row(data, seeds, cache, args.p, args.lr, args.iters, grid, gradient, eps)
            rows.append(row)
            print(f"{gradient:8s} eps={eps:<9.3g} D = {row['divergence_final_mean']:.3g} ± "
                  f"{row['divergence_final_std']:.3g}  |W|_p = {row['w_norm_final_mean']:.3g}  "
                  f"stops at k = {row['k_w_norm_99']}  log10 |G|_q = {row['log10_true_grad_norm_median']:.1f}",
                  flush=True)
    record = {
        "experiment": "e1-eps-sensitivity",
        "command": "python scripts/e1_eps_sensitivity.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {"p": args.p, "seeds": [seeds[0], seeds[-1]], "n_seeds": len(seeds), "iterations": args.iters,
                   "lr": args.lr, "n": 6, "T": 8, "d": 10, "init": "normal", "init_std": 1.0, "query": "random",
                   "solver": "auto", "tol": 1e-6, "epsilons": list(EPSILONS)},
        "rows": rows,
        "meta": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "eps_sensitivity.json", (json.dumps(record, indent=2) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(args.out / "eps_sensitivity.csv", buf.getvalue().encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
