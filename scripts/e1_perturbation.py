"""E1 per seed under a tiny perturbation of W(0): which numbers are robust (issue 26)?

    python scripts/e1_perturbation.py --out results/synthetic/e1_perturbation
    python scripts/e1_perturbation.py --n-seeds 5 --scale 0.1 --out /tmp/pert     # quick check

The E1 protocol (``attnopt synthetic convergence``: seeds 1..100, p = 1.75 / 2 / 3 with 1,500 /
2,000 / 20,000 iterations) is run with ``train_md`` as drawn, then with W(0) + δ·N(0, 1) ("W0") and with every entry of
the data X, Z multiplied by 1 + δ·N(0, 1) ("data"; the SVMs are solved on the perturbed data),
for each δ of ``--delta`` (default 1e-12, 1e-7 and 1e-4; the noise from a generator seeded 0),
with each step of ``--step`` (default both).  δ = 1e-7 is the size of the float32 rounding by
which the authors' data differ from ours.  Per (step, p, perturbation, δ): the mean ± population std of the
final divergence to the ℓp-AttSVM of the selected tokens in both runs, how many seeds select
other tokens α, and the largest and median change of a seed's final divergence.  Writes
``perturbation.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from attnopt.data.synthetic import convergence_batch
from attnopt.experiments.synthetic.config import default_iterations
from attnopt.experiments.synthetic.md import log_grid, train_md
from attnopt.experiments.synthetic.solves import SVMCache, divergence, mean_std, selected_tokens
from attnopt.files import atomic_write_bytes


def final_divergence(data, p, iterations, cache, seeds, step, tag=None):
    """(α, final divergence) per seed; ``tag`` keys the SVM cache apart for perturbed data."""
    traj = train_md(data.X, data.Y, data.Z, data.v, data.W0, p, 0.1, iterations, log_iters=log_grid(iterations, 2),
                    step=step)
    alpha = selected_tokens(data.X, traj.final_W, data.Z)
    svm = [cache.att((tag, seed), data.X[s], data.Z[s], alpha[s], p) for s, seed in enumerate(seeds)]
    return alpha, divergence(svm, traj.W[-1:], p, drop_unconverged=True)[0]


def compare(step, p, its, target, delta, a0, d0, a1, d1) -> dict:
    ok = np.isfinite(d0) & np.isfinite(d1)
    change = np.abs(d1[ok] - d0[ok])
    (m0, s0), (m1, s1) = mean_std(d0), mean_std(d1)
    return {"step": step, "p": p, "iterations": its, "target": target, "delta": delta, "mean": float(m0), "std": float(s0),
            "mean_perturbed": float(m1), "std_perturbed": float(s1),
            "seeds_alpha_changed": int((a0 != a1).any(axis=1).sum()), "seeds_compared": int(ok.sum()),
            "change_max": float(change.max()), "change_median": float(np.median(change)),
            "divergence": d0.tolist(), "divergence_perturbed": d1.tolist()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for perturbation.json")
    ap.add_argument("--n-seeds", type=int, default=100)
    ap.add_argument("--delta", type=float, action="append", help="perturbation sizes (default 1e-12, 1e-7, 1e-4)")
    ap.add_argument("--step", choices=("exact", "published"), action="append", help="steps (default both)")
    ap.add_argument("--scale", type=float, default=1.0, help="scale the protocol iterations (quick checks)")
    args = ap.parse_args(argv)
    deltas, steps = tuple(args.delta or (1e-12, 1e-7, 1e-4)), tuple(args.step or ("exact", "published"))
    if args.n_seeds < 1 or min(deltas) <= 0 or args.scale <= 0:
        ap.error("need --n-seeds >= 1, --delta > 0 and --scale > 0")
    torch.set_num_threads(1)
    seeds = tuple(range(1, args.n_seeds + 1))
    data = convergence_batch(seeds, 6, 8, 10, query="random", init="normal", init_std=1.0)
    gen = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(getattr(data, k).shape, generator=gen, dtype=data.W0.dtype) for k in ("W0", "X", "Z")}

    def perturbed(target: str, delta: float):
        if target == "W0":
            return replace(data, W0=data.W0 + delta * noise["W0"])
        return replace(data, X=data.X * (1 + delta * noise["X"]), Z=data.Z * (1 + delta * noise["Z"]))

    cache = SVMCache("auto", 1e-6)
    rows = []
    for step in steps:
        for p in (1.75, 2.0, 3.0):
            its = max(1, round(default_iterations(p) * args.scale))
            a0, d0 = final_divergence(data, p, its, cache, seeds, step)
            for target, delta in [(t, d) for t in ("W0", "data") for d in deltas]:
                a1, d1 = final_divergence(perturbed(target, delta), p, its, cache, seeds, step, (target, delta))
                rows.append(compare(step, p, its, target, delta, a0, d0, a1, d1))
                r = rows[-1]
                print(f"{step} p={p:g} {target} delta={delta:g}: D {r['mean']:.3g} ± {r['std']:.3g} -> {r['mean_perturbed']:.3g}"
                      f" ± {r['std_perturbed']:.3g}; alpha changed for {r['seeds_alpha_changed']} of {len(seeds)} "
                      f"seeds; per-seed |dD| max {r['change_max']:.3g}, median {r['change_median']:.3g}", flush=True)
    record = {"experiment": "e1-perturbation",
              "command": "python scripts/e1_perturbation.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "config": {"seeds": [seeds[0], seeds[-1]], "n_seeds": len(seeds), "deltas": list(deltas), "noise_seed": 0,
                         "lr": 0.1, "steps": list(steps), "init": "normal", "init_std": 1.0, "solver": "auto", "tol": 1e-6},
              "rows": rows, "meta": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1}}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "perturbation.json", (json.dumps(record, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
