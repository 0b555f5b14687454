"""E7 per seed: does each seed's K Qᵀ move toward the nuclear-norm AttSVM between the protocol's
iteration count and a longer run (issue 26)?

    python scripts/e7_drift.py --out results/synthetic/e7_kq_drift              # 40,000 iterations
    python scripts/e7_drift.py --n-seeds 3 --long 300 --out /tmp/drift           # quick check

The setting is ``attnopt synthetic kq``'s (seeds 1..20, E1 instances with W = K Qᵀ, K(0), Q(0)
~ N(0, 0.1²), exact normalised ℓp-MD on K and Q, η = 0.1), one run per (p, m) of
``attnopt.experiments.synthetic.kq.train_kq`` logged at the protocol's iteration count (1,500 /
2,000 / 20,000 for p = 1.75 / 2 / 3) and at ``--long``.  At each of the two iterates the
selected tokens α are read off and the cosine of K Qᵀ with the nuclear-norm AttSVM of that α
is taken (so the number at the protocol count is the one ``attnopt synthetic kq`` reports).
Per (p, m): the mean cosine at both counts, how many seeds' cosine fell, and how many seeds
changed α.  Writes ``drift.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnopt.data.synthetic import convergence_batch, kq_init
from attnopt.experiments.synthetic.config import default_iterations
from attnopt.experiments.synthetic.kq import train_kq
from attnopt.experiments.synthetic.solves import SVMCache, selected_tokens
from attnopt.files import atomic_write_bytes


def cosines(cache: SVMCache, data, seeds, W: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(α per seed, cosine of W_s with the nuclear AttSVM of α_s per seed; NaN where unsolved)."""
    alpha = selected_tokens(data.X, W, data.Z)
    cos = np.full(len(seeds), np.nan)
    for s, seed in enumerate(seeds):
        o = cache.nuclear(seed, data.X[s], data.Z[s], alpha[s])
        if o.status == "ok":
            S = torch.from_numpy(o.solution)
            cos[s] = float((W[s] * S).sum() / (torch.linalg.matrix_norm(W[s]) * torch.linalg.matrix_norm(S)))
    return alpha, cos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for drift.json")
    ap.add_argument("--n-seeds", type=int, default=20)
    ap.add_argument("--long", type=int, default=40_000, help="the longer iteration count")
    ap.add_argument("--p", type=float, action="append", help="p values (default 1.75, 2, 3)")
    ap.add_argument("--m", type=int, action="append", help="inner dimensions (default 10, 3)")
    args = ap.parse_args(argv)
    ps, ms = tuple(args.p or (1.75, 2.0, 3.0)), tuple(args.m or (10, 3))
    if args.n_seeds < 1 or args.long < 1 or any(p <= 1 for p in ps) or any(not 1 <= m <= 10 for m in ms):
        ap.error("need --n-seeds >= 1, --long >= 1, p > 1 and 1 <= m <= 10")
    torch.set_num_threads(1)
    seeds = tuple(range(1, args.n_seeds + 1))
    data = convergence_batch(seeds, 6, 8, 10, init="zeros")
    cache = SVMCache("auto", 1e-6)
    rows = []
    for p in ps:
        short = default_iterations(p)
        for m in ms:
            t0 = time.perf_counter()
            K0, Q0 = kq_init(seeds, 10, m, 0.1)
            grid = np.unique(np.array([min(short, args.long), args.long], dtype=np.int64))
            W, _, _ = train_kq(data, K0, Q0, p, 0.1, int(grid[-1]), grid, step="exact")
            a0, c0 = cosines(cache, data, seeds, W[0])
            a1, c1 = cosines(cache, data, seeds, W[-1])
            ok = np.isfinite(c0) & np.isfinite(c1)
            row = {"p": p, "m": m, "iterations_protocol": int(grid[0]), "iterations_long": int(grid[-1]),
                   "cos_protocol_mean": float(np.nanmean(c0)), "cos_long_mean": float(np.nanmean(c1)),
                   "cos_protocol_min": float(np.nanmin(c0)), "cos_long_min": float(np.nanmin(c1)),
                   "seeds_compared": int(ok.sum()), "seeds_cos_fell": int((c1[ok] < c0[ok]).sum()),
                   "seeds_alpha_changed": int(sum((a0[s] != a1[s]).any() for s in range(len(seeds)))),
                   "cos_protocol": c0.tolist(), "cos_long": c1.tolist(), "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"p={p:g} m={m}: cos {row['cos_protocol_mean']:.4f} at {grid[0]} -> {row['cos_long_mean']:.4f} "
                  f"at {grid[-1]}; fell for {row['seeds_cos_fell']} of {row['seeds_compared']} seeds, "
                  f"alpha changed for {row['seeds_alpha_changed']}", flush=True)
    record = {"experiment": "e7-kq-drift",
              "command": "python scripts/e7_drift.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": {"seeds": [seeds[0], seeds[-1]], "n_seeds": len(seeds), "ps": list(ps), "ranks": list(ms),
                         "long": args.long, "lr": 0.1, "init_std": 0.1, "step": "exact", "solver": "auto", "tol": 1e-6},
              "rows": rows, "meta": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "drift.json", (json.dumps(record, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
