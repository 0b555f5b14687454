"""Benchmark for issue #3: the fast ℓp-AttSVM solver against cvxpy + Clarabel.

Solves the same random instances (tokens and queries ~ N(0, I) rescaled to unit ℓ2 norm, as
in the spec's E1; α = argmax of the scores under a random W, so the problem is feasible) with
``att_svm(..., solver="cvxpy")`` and ``att_svm(..., solver="fast")`` and prints, per size and
p, both wall times (the whole call: assembly, solve and certificate), their ratio, the relative
objective difference, the maximum violation, and the relative duality gap of each certificate.

Usage::

    python benchmarks/svm.py                                  # the full default run
    python benchmarks/svm.py --sizes 50x10x32 --p 2,3         # a quick one
    python benchmarks/svm.py --skip-cvxpy-above 1e6           # cvxpy only on smaller problems
    python benchmarks/svm.py --out docs/svm_benchmark.md      # also write the markdown report
    python benchmarks/svm.py --nuclear --sizes 30x8x16,30x8x64 --repeat 5   # the nuclear-norm AttSVM

Sizes are ``nxTxd`` (n samples, T tokens, dimension d; n·(T−1) constraints, d² variables).
cvxpy is skipped where the dense constraint matrix has more than ``--skip-cvxpy-above``
entries (n·(T−1)·d²).  ``--cvxpy-cache FILE`` stores the cvxpy results (keyed by size, p and
seed) so that a re-run of the fast solver need not repeat the slow reference solves; rows that
reuse a cached cvxpy result are marked.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from attnopt.svm import alpha_from_softmax, att_svm, att_svm_nuclear

DEFAULT_SIZES = "50x10x32,100x16x64,1000x11x384"
DEFAULT_P = "1.25,1.75,2,3"


def instance(n: int, T: int, d: int, seed: int):
    rng = np.random.default_rng([seed, n, T, d])
    X = rng.standard_normal((n, T, d))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    Z = rng.standard_normal((n, d))
    Z /= np.linalg.norm(Z, axis=-1, keepdims=True)
    W0 = rng.standard_normal((d, d))
    alpha = alpha_from_softmax(X, W0, Z)
    return X, Z, alpha


def parse_sizes(s: str):
    out = []
    for part in s.split(","):
        n, T, d = (int(v) for v in part.lower().split("x"))
        out.append((n, T, d))
    return out


def fmt_t(t):
    return "—" if t is None else (f"{t:.3g}" if t < 100 else f"{t:.0f}")


def fmt_e(x):
    return "—" if x is None else f"{x:.1e}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated nxTxd (default {DEFAULT_SIZES})")
    ap.add_argument("--p", default=DEFAULT_P, help=f"comma-separated exponents (default {DEFAULT_P})")
    ap.add_argument("--skip-cvxpy-above", type=float, default=1e7,
                    help="skip cvxpy when n*(T-1)*d^2 (dense matrix entries) exceeds this (default 1e7)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-6, help="relative gap asked of the fast solver")
    ap.add_argument("--repeat", type=int, default=1, help="fast-solver repeats (the minimum time is kept)")
    ap.add_argument("--cvxpy-cache", default=None, help="JSON file caching cvxpy results between runs")
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--note", default="", help="free text added to the report (e.g. machine load)")
    ap.add_argument("--nuclear", action="store_true",
                    help="benchmark att_svm_nuclear (fast interior point vs cvxpy) instead; --p is ignored")
    args = ap.parse_args(argv)
    if args.nuclear:
        args.p = "2"

    sizes = parse_sizes(args.sizes)
    ps = [float(v) for v in args.p.split(",")]
    cache = {}
    if args.cvxpy_cache and os.path.exists(args.cvxpy_cache):
        cache = json.loads(Path(args.cvxpy_cache).read_text())

    # warm-up: imports and first-call costs are not part of the timings
    Xw, Zw, aw = instance(5, 3, 4, 123)
    solve = (lambda X, Z, a, p, **kw: att_svm_nuclear(X, Z, a, **kw)) if args.nuclear else att_svm
    solve(Xw, Zw, aw, 2.0, solver="fast")
    solve(Xw, Zw, aw, 2.0, solver="cvxpy")

    header = ("| n | T | d | constraints | p | cvxpy s | fast s | speed-up | rel. obj. diff | "
              "max viol. fast | rel. gap fast | rel. gap cvxpy | fast evals |")
    sep = "|" + "---|" * 13
    rows = [header, sep]
    print(header)
    print(sep, flush=True)
    for (n, T, d) in sizes:
        X, Z, alpha = instance(n, T, d, args.seed)
        m = n * (T - 1)
        for p in ps:
            best = None
            for _ in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                rf = solve(X, Z, alpha, p, solver="fast", tol=args.tol)
                tf = time.perf_counter() - t0
                if best is None or tf < best[0]:
                    best = (tf, rf)
            tf, rf = best
            key = f"{n}x{T}x{d}|{'nuclear' if args.nuclear else f'p={p}'}|seed={args.seed}"
            tc = obj_c = gap_c = None
            cached = False
            if m * d * d <= args.skip_cvxpy_above:
                if key in cache:
                    tc, obj_c, gap_c = cache[key]["time_s"], cache[key]["objective"], cache[key]["rel_gap"]
                    cached = True
                else:
                    t0 = time.perf_counter()
                    rc = solve(X, Z, alpha, p, solver="cvxpy")
                    tc = time.perf_counter() - t0
                    obj_c, gap_c = rc.objective, rc.certificate.rel_gap
                    cache[key] = dict(time_s=tc, objective=obj_c, rel_gap=gap_c, status=rc.status,
                                      date=_dt.datetime.now().isoformat(timespec="seconds"))
                    if args.cvxpy_cache:
                        Path(args.cvxpy_cache).write_text(json.dumps(cache, indent=1))
            c = rf.certificate
            ratio = None if tc is None else tc / tf
            rel = None if obj_c is None else abs(rf.objective - obj_c) / obj_c
            line = (f"| {n} | {T} | {d} | {m} | {'nuclear' if args.nuclear else f'{p:g}'} | {fmt_t(tc)}{' (cached)' if cached else ''} | {tf:.3g} | "
                    f"{'—' if ratio is None else f'{ratio:.0f}×'} | {fmt_e(rel)} | {fmt_e(c.max_violation)} | "
                    f"{fmt_e(c.rel_gap)}{'' if c.converged else ' (NOT converged: ' + rf.status + ')'} | "
                    f"{fmt_e(gap_c)} | {c.iterations} |")
            rows.append(line)
            print(line, flush=True)

    if args.out:
        cmd = "python benchmarks/svm.py " + " ".join(sys.argv[1:] if argv is None else argv)
        import torch

        text = [
            "# ℓp-AttSVM solver benchmark (issue #3)",
            "",
            f"- date: {_dt.datetime.now().isoformat(timespec='minutes')}",
            f"- machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU; "
            f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
            f"- command: `{cmd}`",
            "- cvxpy: cvxpy + Clarabel on the dense n(T−1)×d² constraint matrix (`solver=\"cvxpy\"`); "
            "fast: `solver=\"fast\"` (float64, CPU).  Times are wall-clock seconds of the whole `att_svm` call.",
            "- rel. obj. diff = |‖W_fast‖_p − ‖W_cvxpy‖_p| / ‖W_cvxpy‖_p; max viol. = max over constraints of "
            "max(0, 1 − margin) of the fast solution; rel. gap = (primal − dual)/primal of each solver's own "
            "certificate (dual bound Σλ/‖Σλ_k A_k‖_q from its multipliers).",
        ]
        if args.repeat > 1:
            text.append(f"- fast s is the minimum over {args.repeat} repeats of the same solve; cvxpy ran once.")
        if any("(cached)" in r for r in rows):
            text.append("- rows marked (cached) reuse the cvxpy result (time, objective, gap) stored by an earlier "
                        f"run of this script in `{args.cvxpy_cache}` for the same instance (same size, p, seed).")
        if args.note:
            text.append(f"- note: {args.note}")
        text += ["", *rows, ""]
        Path(args.out).write_text("\n".join(text))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
