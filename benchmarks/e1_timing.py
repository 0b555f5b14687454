"""E1 timing: the batched full protocol (100 seeds × p ∈ {1.75, 2, 3} + the 3×3 matrix) against a
per-seed loop baseline timed in the same run.

    python benchmarks/e1_timing.py                      # full protocol, baseline on 3 seeds
    python benchmarks/e1_timing.py --out runs/e1_full   # also write the run folder
    python benchmarks/e1_timing.py --n-seeds 10 --iters-scale 0.1   # quick check

The batched run is ``attnopt.experiments.synthetic.run_matrix`` (training of all seeds as one
computation, SVMs once per (seed, q, α), token-optimality verdicts) with ``--step exact``
(default) or ``published``.  The baseline trains each seed on its own — with the published
step, ``attnopt.optim.MirrorDescent(normalize=True)`` and a per-seed autograd loop (the
structure of the published code); with the exact step, the same step one seed at a time — on
``--baseline-seeds`` seeds, and extrapolates linearly to all seeds.  SVM solves are the same per seed in both, so the training ratio is the
speed-up of batching; the end-to-end estimate adds the measured SVM time to the baseline.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def baseline_per_seed(seeds, cfg) -> float:
    """Seconds to train ``seeds`` one at a time (same protocol and step as cfg)."""
    from attnopt.data.synthetic import convergence_instance
    from attnopt.experiments.synthetic.md import train_md
    from attnopt.models.attention import attention_output, logistic_loss
    from attnopt.optim import MirrorDescent

    t0 = time.perf_counter()
    for seed in seeds:
        d = convergence_instance(seed, cfg.n, cfg.T, cfg.d, query=cfg.query, init=cfg.init, init_std=cfg.init_std)
        for p in cfg.ps:
            if cfg.step == "exact":
                train_md(d.X, d.Y, d.Z, d.v, d.W0, p, cfg.lr, cfg.iterations_for(p), step="exact")
                continue
            W = torch.nn.Parameter(d.W0.clone())
            opt = MirrorDescent([W], lr=cfg.lr, p=p, normalize=True, eps=cfg.eps)
            for _ in range(cfg.iterations_for(p)):
                opt.zero_grad(set_to_none=True)
                f, _ = attention_output(d.X, W, d.Z, d.v)
                logistic_loss(f, d.Y).backward()
                opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-seeds", type=int, default=100)
    ap.add_argument("--baseline-seeds", type=int, default=3)
    ap.add_argument("--iters-scale", type=float, default=1.0, help="scale the protocol iterations (quick checks)")
    ap.add_argument("--solver", default="auto")
    ap.add_argument("--step", default="exact", choices=("exact", "published"))
    ap.add_argument("--out", type=Path, default=None, help="write the batched run folder here")
    ap.add_argument("--json", type=Path, default=None, help="write the timings as JSON here")
    args = ap.parse_args()

    from attnopt.experiments.synthetic import PROTOCOL_ITERATIONS, MatrixConfig, run_matrix

    iters = {p: max(1, int(round(k * args.iters_scale))) for p, k in PROTOCOL_ITERATIONS.items()}
    cfg = MatrixConfig(n_seeds=args.n_seeds, iterations=iters, solver=args.solver, step=args.step)
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    res = run_matrix(cfg, out=args.out)
    wall = time.perf_counter() - t0
    conv = res.convergence.seconds
    train, svm, extra = conv["train"], conv["svm"], res.seconds["extra_svm"]

    bseeds = list(cfg.seed_list()[: args.baseline_seeds])
    tb = baseline_per_seed(bseeds, cfg)
    tb_all = tb / len(bseeds) * args.n_seeds

    timings = {
        "device": f"CPU ({platform.processor() or platform.machine()}), torch threads 1",
        "n_seeds": args.n_seeds, "iterations": iters, "solver": args.solver, "step": args.step,
        "batched_wall_s": wall, "batched_train_s": train, "svm_and_verdict_s": svm, "matrix_extra_svm_s": extra,
        "svm_solves": res.convergence.cache.solves, "other_s": wall - train - svm - extra,
        "baseline_seeds": len(bseeds), "baseline_train_s": tb, "baseline_train_extrapolated_s": tb_all,
        "train_speedup": tb_all / train if train > 0 else float("nan"),
        "end_to_end_baseline_estimate_s": tb_all + (wall - train),
        "end_to_end_speedup": (tb_all + (wall - train)) / wall,
    }
    print(f"E1 full protocol ({args.n_seeds} seeds x p in {list(iters)} with {list(iters.values())} iterations, "
          f"+ 3x3 matrix), solver={args.solver}, step={args.step}")
    print(f"  batched run: wall {wall:.1f} s = training {train:.1f} s + SVM/verdicts {svm:.1f} s "
          f"({timings['svm_solves']} solves) + matrix SVMs {extra:.1f} s + figures/IO {timings['other_s']:.1f} s")
    print(f"  per-seed loop baseline ({'MirrorDescent' if cfg.step == 'published' else 'the same step'}): {tb:.1f} s for {len(bseeds)} seeds "
          f"-> {tb_all:.1f} s extrapolated to {args.n_seeds} seeds")
    print(f"  training speed-up of batching: {timings['train_speedup']:.1f}x; "
          f"end to end (same SVM time): {timings['end_to_end_speedup']:.1f}x")
    print(f"  full protocol + matrix under 10 minutes: {'yes' if wall < 600 else 'NO'} ({wall / 60:.1f} min)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(timings, indent=2) + "\n")


if __name__ == "__main__":
    main()
