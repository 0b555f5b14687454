"""``attnopt convex …``: one random instance (``solve``) and the two convex-attention
experiments (``student-teacher``, ``modular``).

Each command turns its options (and ``--set key=value`` for any other config key) into the
experiment's config, checks what the run needs beyond it (a device, a solver, the ``[convex]``
extra, the data) before any folder is made, opens the run folder, runs the experiment and
prints its tables.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from attnopt.cli._common import (DataOpt, OutOpt, OverwriteOpt, ProgressOpt, console, finish, guard, new_app,
                                 open_out, parse_ints, int_option, progress_bars)

app = new_app("Convex attention: group-lasso programs, FISTA, recovery, experiments.")

SetOpt = Annotated[Optional[List[str]], typer.Option(
    "--set", help="Any other config key=value (the value read as JSON when it parses), repeatable.")]
SeedOpt = Annotated[int, int_option("--seed", help="Random seed.")]
BetaRelOpt = Annotated[float, typer.Option(
    "--beta-rel", help="β as a fraction of λ_max (the smallest β with Z = 0).")]
ConvexIterOpt = Annotated[int, int_option("--convex-max-iter", help="FISTA iterations of the convex model (cap).")]


def parse_set(items: Optional[List[str]]) -> dict:
    """``--set key=value`` pairs; a value is read as JSON when it parses (numbers, lists,
    true/false/null), else kept as a string."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expects key=value, got {item!r}", param_hint="--set")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _config(cls, check_environment, values: dict, set_: Optional[List[str]] = None):
    """The config from the options (``--set`` pairs win), and what its run needs checked,
    before any folder is made; errors are one line, exit 2."""
    values = {**values, **parse_set(set_)}
    with guard():
        cfg = cls.from_dict(values)
        check_environment(cfg)
    return cfg


def _table(title: str, header: list, rows: list):
    from rich.table import Table

    t = Table(title=title)
    for i, col in enumerate(header):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    return t


@app.command("solve")
def solve(
    samples: Annotated[int, int_option("--samples", help="N samples.")] = 30,
    tokens: Annotated[int, int_option("--tokens", help="n tokens per sample.")] = 8,
    dim: Annotated[int, int_option("--dim", help="d features per token.")] = 4,
    outputs: Annotated[Optional[int], int_option(
        "--outputs", help="c outputs, or classes for cross_entropy (default 1, or 2 classes).")] = None,
    patterns: Annotated[int, int_option("--patterns", help="Gated-ReLU patterns (0: attention only).")] = 0,
    loss: Annotated[str, typer.Option("--loss", help="squared, logistic or cross_entropy.")] = "squared",
    beta: Annotated[float, typer.Option("--beta", help="Regularisation β ≥ 0.")] = 1.0,
    tol: Annotated[float, typer.Option("--tol", help="FISTA relative duality-gap tolerance.")] = 1e-9,
    max_iter: Annotated[int, int_option("--max-iter", help="FISTA iteration cap.")] = 10_000,
    solver: Annotated[str, typer.Option("--solver", help="CVXPY reference: CLARABEL, SCS or none.")] = "CLARABEL",
    seed: SeedOpt = 0,
    device: Annotated[str, typer.Option("--device", help="Where FISTA runs (cpu, cuda, …).")] = "cpu",
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run folder for config, summary and report (default: none, print only).")] = None,
    overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """A random instance: FISTA vs CVXPY, duality gap, and the convex → heads recovery check."""
    t0 = time.perf_counter()
    from attnopt.experiments.convex.solve import (SolveConfig, check_environment, recovery_line, run_solve,
                                                  solver_rows, title)

    cfg = _config(SolveConfig, check_environment, dict(
        samples=samples, tokens=tokens, dim=dim, outputs=outputs, patterns=patterns, loss=loss, beta=beta, tol=tol,
        max_iter=max_iter, solver=solver, seed=seed, device=device))
    rd = open_out(out, "convex-solve", cfg, overwrite=overwrite) if out is not None else None
    with guard(rd and rd.path), progress_bars(progress) as cb:
        res = run_solve(cfg, out=rd, progress=cb)
    con = console()
    con.print(_table(title(res.summary), *solver_rows(res.summary)))
    con.print(recovery_line(res.summary), markup=False)
    finish(con, res.out, t0, "convex solve")


@app.command("student-teacher")
def student_teacher(
    seed: SeedOpt = 0,
    num_train: Annotated[int, int_option("--num-train", help="Training sentences (SST-2 train).")] = 512,
    num_test: Annotated[int, int_option("--num-test", help="Test sentences (SST-2 dev).")] = 256,
    max_len: Annotated[int, int_option("--max-len", help="Tokens per sentence.")] = 24,
    target_dim: Annotated[int, int_option(
        "--target-dim", help="Principal directions of the teacher output (0: all 384).")] = 32,
    beta_rel: BetaRelOpt = 0.02,
    convex_max_iter: ConvexIterOpt = 2000,
    baseline_steps: Annotated[int, int_option("--baseline-steps", help="Optimiser steps of each baseline.")] = 1000,
    data: DataOpt = None,
    set_: SetOpt = None,
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """Refit the last attention layer of all-MiniLM-L6-v2 on SST-2: convex vs simplex vs softmax
    (needs attnopt's convex extra and the shared SST-2 file)."""
    t0 = time.perf_counter()
    from attnopt.experiments.convex.student_teacher import (StudentTeacherConfig, check_environment, path_rows,
                                                            run_student_teacher, student_rows, summary_lines)

    cfg = _config(StudentTeacherConfig, check_environment, dict(
        seed=seed, num_train=num_train, num_test=num_test, max_len=max_len,
        target_dim=None if target_dim == 0 else target_dim, beta_rel=beta_rel, convex_max_iter=convex_max_iter,
        baseline_steps=baseline_steps, data_root=None if data is None else str(data)), set_)
    rd = open_out(out, "convex-student-teacher", cfg, overwrite=overwrite)
    with guard(rd.path), progress_bars(progress) as cb:
        res = run_student_teacher(cfg, out=rd, progress=cb)
    con = console()
    s = res.summary
    con.print(_table(f"student–teacher: SST-2, {s['num_train']} train / {s['num_test']} test, β = {s['beta']:.4g}",
                     *student_rows(cfg, s)))
    for line in summary_lines(s):
        con.print(line, markup=False)
    if s["beta_path"]:
        con.print(_table("convex regularisation path (warm-started)", *path_rows(s)))
    finish(con, rd.path, t0, "convex student-teacher")


@app.command("modular")
def modular(
    seed: SeedOpt = 0,
    p: Annotated[int, int_option("--p", help="Prime modulus.")] = 97,
    train_fraction: Annotated[float, typer.Option(
        "--train-fraction", help="Fraction of equations for training.")] = 0.5,
    steps: Annotated[int, int_option("--steps", help="Transformer AdamW steps.")] = 3000,
    layers: Annotated[str, typer.Option(
        "--layers", help="Transformer depths, comma-separated ('' for none).")] = "1,2",
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 1.0,
    convex_max_iter: ConvexIterOpt = 1000,
    gate_patterns: Annotated[int, int_option("--gate-patterns", help="Sampled gated-ReLU patterns.")] = 16,
    beta_rel: BetaRelOpt = 1e-3,
    set_: SetOpt = None,
    out: OutOpt = None, overwrite: OverwriteOpt = False, progress: ProgressOpt = True,
) -> None:
    """Modular division a ÷ b mod p: 1-/2-layer transformers (AdamW) vs the convex model."""
    t0 = time.perf_counter()
    from attnopt.experiments.convex.modular import (ModularConfig, check_environment, convex_line, model_rows,
                                                    run_modular)

    cfg = _config(ModularConfig, check_environment, dict(
        seed=seed, p=p, train_fraction=train_fraction, steps=steps, layers=parse_ints(layers, "--layers"),
        weight_decay=weight_decay, convex_max_iter=convex_max_iter, gate_patterns=gate_patterns,
        beta_rel=beta_rel), set_)
    rd = open_out(out, "convex-modular", cfg, overwrite=overwrite)
    with guard(rd.path), progress_bars(progress) as cb:
        res = run_modular(cfg, out=rd, progress=cb)
    con = console()
    s = res.summary
    con.print(_table(f"a ÷ b mod {cfg.p}: {s['num_train']} train / {s['num_test']} test equations", *model_rows(s)))
    if cfg.convex:
        con.print(convex_line(cfg, s), markup=False)
    finish(con, rd.path, t0, "convex modular")
