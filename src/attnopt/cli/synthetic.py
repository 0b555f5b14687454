"""``attnopt synthetic …`` (E1 convergence, matrix, path; E2 joint; E7 kq) and ``attnopt demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from attnopt.cli._common import (OutOpt, OverwriteOpt, ProgressOpt, console, finish, guard, new_app, open_out,
                                 parse_iters, parse_seeds, int_option, progress_bars)

app = new_app("Synthetic experiments E1 (ℓp-AttGD: convergence, matrix, path), E2 (joint W, v), E7 (K, Q).")

# --------------------------------------------------------------------------------------
# options shared by the synthetic commands

POpt = Annotated[Optional[List[float]], typer.Option("--p", help="Exponent p (repeatable). Default: the protocol's.")]
ItersOpt = Annotated[Optional[str], typer.Option(
    "--iters", help="Iterations: N for every p, or per p as 1.75=1500,2=2000. "
    "Default: protocol (1.75→1500, 2→2000, 3→20000; other p by a documented rule).")]
SeedsOpt = Annotated[Optional[str], typer.Option("--seeds", help="Seeds, e.g. 1..100 or 1,2,5 (overrides --n-seeds).")]
NSeedsOpt = Annotated[int, int_option("--n-seeds", help="Number of seeds, starting at --seed-start.")]
SeedStartOpt = Annotated[int, int_option("--seed-start", "--seed", help="First seed when --seeds is not given.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Step size η.")]
NOpt = Annotated[int, int_option("--n", help="Samples per instance.")]
TOpt = Annotated[int, int_option("--T", help="Tokens per sample.")]
DOpt = Annotated[int, int_option("--d", help="Token dimension.")]
InitOpt = Annotated[str, typer.Option(
    "--init", help="W(0): 'normal' (N(0, init_std²), published aggregate runs) or 'zeros'.")]
InitStdOpt = Annotated[float, typer.Option("--init-std", help="Std of W(0) entries for --init normal.")]
QueryOpt = Annotated[str, typer.Option("--query", help="z_i: 'random' (own vector, published) or 'first' (x_{i1}).")]
SolverOpt = Annotated[str, typer.Option("--solver", help="SVM solver: auto, fast or cvxpy.")]
TolOpt = Annotated[float, typer.Option("--tol", help="SVM relative duality-gap tolerance.")]
NLogOpt = Annotated[int, int_option("--n-log", help="Size of the log-spaced grid of stored iterates.")]
EpsOpt = Annotated[float, typer.Option("--eps", help="ε of the published step g/(‖g‖_q + ε) (float64 eps, as published).")]
StepOpt = Annotated[str, typer.Option(
    "--step", help="Normalised step: 'exact' (gradient without cancellation, g/‖g‖_q) or 'published' "
    "(autograd, g/(‖g‖_q + ε)).")]

_EPS = 2.220446049250313e-16


def _e1_values(p, iters, seeds, n_seeds, seed_start, lr, n, T, d, init, init_std, query, solver, tol, n_log,
               eps, step) -> dict:
    kw = dict(iterations=parse_iters(iters), n_seeds=n_seeds, seed_start=seed_start, lr=lr, n=n, T=T, d=d,
              init=init, init_std=init_std, query=query, solver=solver, tol=tol, n_log=n_log, eps=eps, step=step)
    if p:
        kw["ps"] = tuple(p)
    if seeds:
        kw["seeds"] = parse_seeds(seeds)
    return kw


def _execute(cls, values: dict, experiment: str, run, out: Optional[Path], overwrite: bool, progress: bool):
    """The frame of every synthetic command: the config ``cls.from_dict(values)`` (a bad one is
    one line, exit 2), the run folder (``out`` or ``runs/<experiment>-<time>``), then
    ``run(cfg, out=rd, progress=cb)`` under the error policy with progress bars.
    Returns ``(cfg, rd, result)``."""
    with guard():
        cfg = cls.from_dict(values)
    rd = open_out(out, experiment, cfg, overwrite=overwrite)
    with guard(rd.path), progress_bars(progress) as cb:
        res = run(cfg, out=rd, progress=cb)
    return cfg, rd, res


# --------------------------------------------------------------------------------------
# the experiments' tables on the console


def _show(con, table, title: str | None = None) -> None:
    """Print one of the experiments' tables (``records.Table``); Markdown bold becomes green bold."""
    from rich.table import Table

    name, header, rows = table
    t = Table(title=title or name)
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*(f"[bold green]{c[2:-2]}[/]" if c.startswith("**") and c.endswith("**") else c for c in row))
    con.print(t)


# --------------------------------------------------------------------------------------
# commands


@app.command("convergence")
def convergence(
    p: POpt = None, iters: ItersOpt = None, seeds: SeedsOpt = None, n_seeds: NSeedsOpt = 100,
    seed_start: SeedStartOpt = 1, lr: LrOpt = 0.1, n: NOpt = 6, T: TOpt = 8, d: DOpt = 10,
    init: InitOpt = "normal", init_std: InitStdOpt = 1.0, query: QueryOpt = "random", solver: SolverOpt = "auto",
    tol: TolOpt = 1e-6, n_log: NLogOpt = 200, eps: EpsOpt = _EPS, step: StepOpt = "exact",
    fit_from: Annotated[Optional[int], int_option("--fit-from", help="First iteration of the rate fit.")] = None,
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """E1: directional convergence of normalised ℓp-AttGD to the ℓp-AttSVM (all seeds batched)."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic import ConvergenceConfig, run_convergence

    values = dict(fit_from=fit_from, **_e1_values(
        p, iters, seeds, n_seeds, seed_start, lr, n, T, d, init, init_std, query, solver, tol, n_log, eps, step))
    _, rd, res = _execute(ConvergenceConfig, values, "e1-convergence", run_convergence, out, overwrite, progress)
    from attnopt.experiments.synthetic import records

    con = console()
    _show(con, records.convergence_table(res))
    _show(con, records.rate_table(res))
    s = res.seconds
    con.print(f"training {s['train']:.1f} s, SVM + verdicts {s['svm']:.1f} s ({res.cache.solves} solves)")
    finish(con, rd.path, t0, "E1 convergence")


@app.command("matrix")
def matrix(
    p: POpt = None,
    q: Annotated[Optional[List[float]], typer.Option("--q", help="SVM exponent q (repeatable). Default: the p's.")] = None,
    iters: ItersOpt = None, seeds: SeedsOpt = None, n_seeds: NSeedsOpt = 100, seed_start: SeedStartOpt = 1,
    lr: LrOpt = 0.1, n: NOpt = 6, T: TOpt = 8, d: DOpt = 10, init: InitOpt = "normal", init_std: InitStdOpt = 1.0,
    query: QueryOpt = "random", solver: SolverOpt = "auto", tol: TolOpt = 1e-6, n_log: NLogOpt = 200,
    eps: EpsOpt = _EPS, step: StepOpt = "exact",
    alpha_from: Annotated[str, typer.Option("--alpha-from", help="Tokens of the q-SVM: 'p' (the p-run's, same α) "
                                            "or 'q' (the q-run's, as published).")] = "p",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """E1-matrix: every (p trained, q SVM) with the same α and W(0); includes the convergence run."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic import MatrixConfig, run_matrix

    kw = _e1_values(p, iters, seeds, n_seeds, seed_start, lr, n, T, d, init, init_std, query, solver, tol, n_log, eps,
                    step)
    kw["alpha_from"] = alpha_from
    if q:
        kw["qs"] = tuple(q)
    _, rd, res = _execute(MatrixConfig, kw, "e1-matrix", run_matrix, out, overwrite, progress)
    from attnopt.experiments.synthetic import records

    con = console()
    _show(con, records.convergence_table(res.convergence))
    _show(con, records.matrix_table(res))
    cs = res.convergence.seconds
    con.print(f"training {cs['train']:.1f} s, matched SVM + verdicts {cs['svm']:.1f} s, "
              f"extra matrix SVMs {res.seconds['extra_svm']:.1f} s ({res.seconds['extra_svm_solves']} solves)")
    finish(con, rd.path, t0, "E1 matrix")


def parse_entry(text: str) -> tuple[int, int]:
    try:
        a, b = str(text).replace(" ", "").split(",")
        return int(a), int(b)
    except ValueError:
        raise typer.BadParameter(f"cannot read entry {text!r} (use row,col e.g. 1,2)", param_hint="--entry") from None


@app.command("path")
def path(
    p: Annotated[Optional[List[float]], typer.Option("--p", help="Exponent p (repeatable). Default: 1.75 and 3.")] = None,
    iters: ItersOpt = None, seed: Annotated[int, int_option("--seed", help="The data seed.")] = 1,
    entry: Annotated[Optional[List[str]], typer.Option(
        "--entry", help="Entry row,col of W (give twice). Default 1,2 and 3,4.")] = None,
    lr: LrOpt = 0.1, n: NOpt = 6, T: TOpt = 8, d: DOpt = 10,
    init: Annotated[str, typer.Option("--init", help="W(0): 'zeros' (published path run) or 'normal'.")] = "zeros",
    init_std: InitStdOpt = 1.0, query: QueryOpt = "random", solver: SolverOpt = "auto", tol: TolOpt = 1e-6,
    n_log: NLogOpt = 1000, eps: EpsOpt = _EPS, step: StepOpt = "exact",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """E1-path: two entries of W(k) against the rescaled ℓp-AttSVM ray (one seed)."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic import PathConfig, run_path

    kw = dict(seed=seed, iterations=parse_iters(iters), lr=lr, n=n, T=T, d=d, init=init, init_std=init_std,
              query=query, solver=solver, tol=tol, n_log=n_log, eps=eps, step=step)
    if p:
        kw["ps"] = tuple(p)
    if entry:
        if len(entry) != 2:
            raise typer.BadParameter("give --entry exactly twice (two entries of W)", param_hint="--entry")
        kw["entries"] = tuple(parse_entry(e) for e in entry)
    _, rd, res = _execute(PathConfig, kw, "e1-path", run_path, out, overwrite, progress)
    from attnopt.experiments.synthetic.trajectories import path_table

    con = console()
    _show(con, path_table(res))
    finish(con, rd.path, t0, "E1 path")


@app.command("joint")
def joint(
    p: POpt = None, iters: ItersOpt = None, lr: LrOpt = 0.1, solver: SolverOpt = "auto", tol: TolOpt = 1e-6,
    n_log: NLogOpt = 1000, eps: EpsOpt = _EPS, step: StepOpt = "exact",
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """E2: joint ℓp-JointGD on the spec's two-sample instance (W → ℓp-AttSVM, v → ℓp-SVM)."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic import JointConfig, run_joint

    kw = dict(iterations=parse_iters(iters), lr=lr, solver=solver, tol=tol, n_log=n_log, eps=eps, step=step)
    if p:
        kw["ps"] = tuple(p)
    _, rd, res = _execute(JointConfig, kw, "e2-joint", run_joint, out, overwrite, progress)
    from attnopt.experiments.synthetic.trajectories import joint_table

    con = console()
    _show(con, joint_table(res))
    if not res.summary["all_match_spec"]:
        con.print("[bold red]the selected tokens differ from the spec's[/]")
    finish(con, rd.path, t0, "E2 joint")


@app.command("kq")
def kq(
    p: POpt = None,
    rank: Annotated[Optional[List[int]], int_option("--rank", help="Inner dimension m of K, Q ∈ R^{d×m} "
                                                      "(repeatable). Default: d and 3.")] = None,
    iters: ItersOpt = None, n_seeds: NSeedsOpt = 20, seed_start: SeedStartOpt = 1, lr: LrOpt = 0.1, n: NOpt = 6,
    T: TOpt = 8, d: DOpt = 10,
    init_std: Annotated[float, typer.Option("--init-std", help="Std of the entries of K(0) and Q(0).")] = 0.1,
    solver: SolverOpt = "auto", tol: TolOpt = 1e-6, n_log: NLogOpt = 100, eps: EpsOpt = _EPS,
    step: StepOpt = "exact", out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """E7: W = K Qᵀ trained by ℓp-MD; which SVM (nuclear, Frobenius, ℓp) its direction approaches."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic.kq import KQConfig, kq_table, run_kq

    kw = dict(iterations=parse_iters(iters), n_seeds=n_seeds, seed_start=seed_start, lr=lr, n=n, T=T, d=d,
              init_std=init_std, solver=solver, tol=tol, n_log=n_log, eps=eps, step=step)
    if p:
        kw["ps"] = tuple(p)
    kw["ranks"] = tuple(rank) if rank else tuple(dict.fromkeys((d, min(3, d))))
    _, rd, res = _execute(KQConfig, kw, "e7-kq", run_kq, out, overwrite, progress)
    con = console()
    _show(con, kq_table(res))
    finish(con, rd.path, t0, "E7 (K, Q)")


def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/demo"),
    n_seeds: Annotated[int, int_option("--n-seeds", help="Seeds of the reduced E1.")] = 20,
    iters: Annotated[Optional[str], typer.Option(
        "--iters", help="Iterations (default 1.75=300,2=400,3=3000).")] = None,
    solver: SolverOpt = "auto", step: StepOpt = "exact", overwrite: OverwriteOpt = False,
    progress: ProgressOpt = True,
) -> None:
    """A reduced E1 (convergence + matrix + path) and E2: about 15 s on 2 CPU cores."""
    t0 = time.perf_counter()
    from attnopt.experiments.synthetic import DemoConfig, run_demo

    values = dict(n_seeds=n_seeds, iterations=parse_iters(iters), solver=solver, step=step)
    cfg, rd, res = _execute(DemoConfig, values, "demo", run_demo, out, overwrite, progress)
    from attnopt.experiments.synthetic import records
    from attnopt.experiments.synthetic.trajectories import joint_table, path_table

    con = console()
    _show(con, records.convergence_table(res.matrix.convergence), f"E1 convergence (reduced: {cfg.n_seeds} seeds)")
    _show(con, records.matrix_table(res.matrix))
    _show(con, path_table(res.path))
    _show(con, joint_table(res.joint))
    below, tokens = res.summary["matched_is_smallest"], res.summary["e2_tokens_match_spec"]
    ok = all(below.values()) and tokens
    con.print(("[bold green]" if ok else "[bold red]") + "matched q = p divergence smallest in every row: "
              + ("yes" if all(below.values()) else "NO") + "; E2 tokens as in the spec: "
              + ("yes" if tokens else "NO") + "[/]")
    finish(con, rd.path, t0, "demo")
