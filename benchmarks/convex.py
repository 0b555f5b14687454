"""Benchmark of the convex attention solvers, in one run.

Part 1 — FISTA (torch) vs CVXPY/Clarabel on random group-lasso instances of growing size
(attention-only, scalar output, squared loss by default; data ``X`` Gaussian, targets from a
teacher with 4 non-zero token rows plus noise, ``β = 0.1 λ_max``).  FISTA stops at relative
duality gap ``--tol``; CVXPY runs in a child process that is killed after
``--cvxpy-limit`` seconds, and sizes beyond the first killed one are run with FISTA only.
Reported: wall times (CVXPY's including its compilation, and the solver's own time), the
relative objective difference, and the speed-up.

Part 2 — time to objective on one instance: the convex program (FISTA) vs the non-convex
simplex-attention model (softmax- and projection-parameterised, Adam, learning-rate sweep)
which has the same objective, and standard softmax attention with weight decay (Adam), whose
objective is in its own terms (its data-fit loss is comparable).

Usage::

    python benchmarks/convex.py --out runs/bench-convex            # full
    python benchmarks/convex.py --quick --out /tmp/bench           # seconds
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time

import torch

from attnopt.convex import (SimplexAttention, SoftmaxAttention, make_problem, solve_cvxpy, solve_fista,
                            sparsity_report, train_baseline)
from attnopt.report.runs import make_run_dir

FULL_SIZES = [(100, 16, 8), (200, 32, 16), (400, 32, 32), (800, 64, 32), (1600, 64, 64), (2400, 96, 64),
              (3200, 128, 64), (6400, 128, 128)]
QUICK_SIZES = [(50, 8, 4), (100, 16, 8)]


def instance(N: int, n: int, d: int, loss: str = "squared", seed: int = 0, beta_rel: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, n, d, generator=g, dtype=torch.float64)
    Zt = torch.zeros(n, d, dtype=torch.float64)
    Zt[: min(4, n)] = torch.randn(min(4, n), d, generator=g, dtype=torch.float64) / d**0.5
    f = torch.einsum("ikq,kq->i", X, Zt) + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    y = f if loss == "squared" else torch.where(f >= 0, 1.0, -1.0).double()
    p = make_problem(X, y, loss, beta=0.0)
    p.beta = beta_rel * p.lambda_max()
    return p


def _cvxpy_child(args, q) -> None:
    N, n, d, loss, seed = args
    torch.set_num_threads(1)
    p = instance(N, n, d, loss, seed)
    r = solve_cvxpy(p, solver="CLARABEL")
    q.put({"objective": r.objective, "time": r.time, "solve_time": r.solve_time, "status": r.status})


def run_cvxpy_limited(args, limit: float) -> dict | None:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    proc = ctx.Process(target=_cvxpy_child, args=(args, q))
    t0 = time.perf_counter()
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return None
    try:
        out = q.get(timeout=5)
    except Exception:
        return None
    out["wall"] = time.perf_counter() - t0
    return out


def part1(sizes, loss: str, tol: float, limit: float, seed: int) -> list[dict]:
    rows = []
    cvx_alive = True
    for N, n, d in sizes:
        p = instance(N, n, d, loss, seed)
        solve_fista(p, tol=tol, max_iter=5)  # warm-up (allocations)
        t = time.perf_counter()
        r = solve_fista(p, tol=tol, max_iter=100_000)
        tf = time.perf_counter() - t
        row = {"N": N, "n": n, "d": d, "variables": n * d, "loss": loss, "fista_s": tf,
               "fista_iters": r.iterations, "fista_rel_gap": r.rel_gap, "fista_objective": r.objective,
               "heads": sparsity_report(p, r.Z)["num_heads"]}
        if cvx_alive:
            c = run_cvxpy_limited((N, n, d, loss, seed), limit)
            if c is None:
                cvx_alive = False
                row.update({"cvxpy_s": None, "cvxpy_status": f"killed after {limit:.0f} s"})
            else:
                row.update({"cvxpy_s": c["time"], "cvxpy_solver_s": c["solve_time"], "cvxpy_status": c["status"],
                            "cvxpy_objective": c["objective"],
                            "rel_obj_diff": (r.objective - c["objective"]) / abs(c["objective"]),
                            "speedup": c["time"] / tf,
                            "speedup_vs_solver_time": (c["solve_time"] or float("nan")) / tf})
        else:
            row.update({"cvxpy_s": None, "cvxpy_status": "not run (smaller size already over the limit)"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def part2(N: int, n: int, d: int, seed: int, budget: float, lrs, steps: int) -> dict:
    p = instance(N, n, d, "squared", seed)
    t = time.perf_counter()
    r = solve_fista(p, tol=1e-10, max_iter=100_000, log_every=1)
    opt = r.objective
    out = {"instance": {"N": N, "n": n, "d": d, "beta": p.beta}, "convex_optimum": opt,
           "convex_data_loss": float(p.data_loss(r.Z)), "runs": []}

    def time_to(hist, level):
        for h in hist:
            if h["objective"] <= level:
                return h["time"]
        return None

    out["runs"].append({"model": "convex (FISTA)", "lr": None, "final_objective": r.objective,
                        "time_to_1pct": time_to(r.history, opt * 1.01), "time_to_0.1pct": time_to(r.history, opt * 1.001),
                        "time_to_1e-6": time_to(r.history, opt * (1 + 1e-6)), "total_s": time.perf_counter() - t,
                        "final_loss": float(p.data_loss(r.Z))})
    heads = max(32, sparsity_report(p, r.Z)["num_heads"] + 1)
    for simplex in ("softmax", "projection"):
        for lr in lrs:
            m = SimplexAttention(n, d, 1, heads, simplex=simplex, init_scale=0.1, seed=seed)
            h = train_baseline(m, p, steps=steps, lr=lr, log_every=5, time_limit=budget)
            out["runs"].append({"model": f"simplex ({simplex}, {heads} heads, Adam)", "lr": lr,
                                "final_objective": h[-1]["objective"], "final_loss": h[-1]["loss"],
                                "time_to_1pct": time_to(h, opt * 1.01), "time_to_0.1pct": time_to(h, opt * 1.001),
                                "time_to_1e-6": time_to(h, opt * (1 + 1e-6)), "total_s": h[-1]["time"],
                                "steps": h[-1]["step"]})
            print(json.dumps(out["runs"][-1]), flush=True)
    for lr in lrs:
        m = SoftmaxAttention(d, 1, num_heads=4, head_dim=8, readout=0, seed=seed)
        h = train_baseline(m, p, steps=steps, lr=lr, log_every=5, time_limit=budget)
        out["runs"].append({"model": "softmax MHA (4×8, weight decay, Adam; own objective)", "lr": lr,
                            "final_objective": h[-1]["objective"], "final_loss": h[-1]["loss"],
                            "time_to_1pct": None, "time_to_0.1pct": None, "time_to_1e-6": None,
                            "total_s": h[-1]["time"], "steps": h[-1]["step"]})
        print(json.dumps(out["runs"][-1]), flush=True)
    return out


def _fmt(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def markdown(rows, p2) -> str:
    lines = ["## FISTA vs CVXPY/Clarabel", "",
             "| N | n | d | n·d | FISTA s | FISTA it. | FISTA rel. gap | CVXPY s (solver s) | rel. obj. diff | speed-up (vs solver) | heads |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cv = "killed" if r.get("cvxpy_status", "").startswith("killed") else (
            "—" if r.get("cvxpy_s") is None else f"{r['cvxpy_s']:.2f} ({_fmt(r.get('cvxpy_solver_s'))})")
        lines.append(f"| {r['N']} | {r['n']} | {r['d']} | {r['variables']} | {r['fista_s']:.3f} | {r['fista_iters']} | "
                     f"{r['fista_rel_gap']:.1e} | {cv} | {_fmt(r.get('rel_obj_diff'), '.1e')} | "
                     f"{_fmt(r.get('speedup'), '.0f')}× ({_fmt(r.get('speedup_vs_solver_time'), '.0f')}×) | {r['heads']} |")
    if p2:
        i = p2["instance"]
        lines += ["", f"## Time to objective (N={i['N']}, n={i['n']}, d={i['d']}, squared loss, β={i['beta']:.4g}; "
                  f"convex optimum {p2['convex_optimum']:.8g}, its data loss {p2['convex_data_loss']:.6g})", "",
                  "| model | lr | steps | final objective | final data loss | s to 1% | s to 0.1% | s to 1e-6 | total s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in p2["runs"]:
            lines.append(f"| {r['model']} | {_fmt(r['lr'])} | {r.get('steps', '—')} | {r['final_objective']:.8g} | "
                         f"{r['final_loss']:.6g} | {_fmt(r['time_to_1pct'])} | {_fmt(r['time_to_0.1pct'])} | "
                         f"{_fmt(r['time_to_1e-6'])} | {r['total_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--loss", default="squared", choices=["squared", "logistic"])
    ap.add_argument("--tol", type=float, default=1e-7, help="FISTA relative duality-gap tolerance")
    ap.add_argument("--cvxpy-limit", type=float, default=120.0, help="seconds before a CVXPY solve is killed")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per baseline run (part 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: same as Clarabel, and stable on shared cores)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = make_run_dir(args.out, "bench-convex")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    meta = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "platform": platform.platform(), "args": vars(args)}
    rows = part1(sizes, args.loss, args.tol, args.cvxpy_limit, args.seed)
    if args.quick:
        p2 = part2(60, 8, 4, args.seed, budget=2.0, lrs=[1e-2], steps=200)
    else:
        p2 = part2(400, 32, 16, args.seed, budget=args.budget, lrs=[1e-3, 1e-2, 1e-1], steps=20_000)
    run.write_json("bench.json", {"meta": meta, "fista_vs_cvxpy": rows, "time_to_objective": p2})
    run.write_csv("fista_vs_cvxpy.csv", rows=rows)
    md = markdown(rows, p2)
    run.write_text("bench.md", md + "\n")
    print(md)
    print(f"\nwritten to {run.path}")


if __name__ == "__main__":
    main()
