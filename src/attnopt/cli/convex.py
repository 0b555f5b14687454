"""``attnopt convex …``: the convex-attention commands (a typer app named ``app``).

Commands: ``solve`` (random instance: FISTA vs CVXPY and the recovery check),
``student-teacher`` and ``modular`` (the experiments; run folders under ``--out``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Convex attention: group-lasso programs, FISTA, recovery, experiments.",
                  no_args_is_help=True)
console = Console()


def _parse_set(items: list[str]) -> dict:
    """``--set key=value`` pairs (values parsed as JSON when possible)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


class _Bars:
    def __init__(self, progress: Progress) -> None:
        self.p, self.tasks = progress, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.p.add_task(stage, total=total)
        self.p.update(self.tasks[stage], completed=done)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console, transient=False)


@app.command()
def solve(
    n_samples: int = typer.Option(30, "--samples", help="N samples"),
    tokens: int = typer.Option(8, help="n tokens per sample"),
    dim: int = typer.Option(4, help="d features per token"),
    outputs: int = typer.Option(1, help="c outputs (classes for cross_entropy)"),
    patterns: int = typer.Option(0, help="gated-ReLU patterns (0: attention only)"),
    loss: str = typer.Option("squared", help="squared | logistic | cross_entropy"),
    beta: float = typer.Option(1.0, help="regularisation β ≥ 0"),
    tol: float = typer.Option(1e-9, help="FISTA relative duality-gap tolerance"),
    cvxpy_solver: str = typer.Option("CLARABEL", "--solver", help="CLARABEL | SCS | none"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
) -> None:
    """Random instance: FISTA vs CVXPY, duality gap, and the convex → heads recovery check."""
    import torch

    from attnopt.convex import (convex_to_heads, make_problem, nonconvex_objective, sample_gates,
                                solve_cvxpy, solve_fista, sparsity_report)
    from attnopt.convex.programs import ProblemError

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_samples, tokens, dim, generator=g, dtype=torch.float64)
    if loss == "squared":
        y = torch.randn(n_samples, outputs, generator=g, dtype=torch.float64)
    elif loss == "logistic":
        y = torch.randint(0, 2, (n_samples, outputs), generator=g).double() * 2 - 1
    else:
        y = torch.randint(0, max(outputs, 2), (n_samples,), generator=g)
    try:
        gates = sample_gates(X, patterns, seed=seed)[0] if patterns else None
        prob = make_problem(X, y, loss, beta=beta, gates=gates,
                            num_classes=max(outputs, 2) if loss == "cross_entropy" else None, device=device)
    except ProblemError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    res = solve_fista(prob, tol=tol)
    table = Table(title=f"convex attention, N={n_samples} n={tokens} d={dim} m={prob.m} c={prob.c}, {loss}, β={beta}")
    for col in ("solver", "objective", "rel. gap", "time s", "iterations / status"):
        table.add_column(col)
    table.add_row("FISTA (torch)", f"{res.objective:.10g}", f"{res.rel_gap:.2e}", f"{res.time:.3f}",
                  f"{res.iterations} ({'converged' if res.converged else 'not converged'})")
    if cvxpy_solver.lower() != "none":
        ref = solve_cvxpy(prob.to(device="cpu"), solver=cvxpy_solver.upper())
        table.add_row(f"CVXPY/{ref.solver}", f"{ref.objective:.10g}", f"{ref.rel_gap:.2e}", f"{ref.time:.3f}", ref.status)
    console.print(table)
    heads = convex_to_heads(prob, res.Z)
    nc = nonconvex_objective(prob, heads)
    sp = sparsity_report(prob, res.Z)
    console.print(f"recovered network: {nc['num_heads']} heads, objective {nc['objective']:.10g} "
                  f"(relative difference {abs(nc['objective'] - res.objective) / abs(res.objective):.1e}); "
                  f"tokens used {sp['num_tokens_used']}/{tokens} → {sp['tokens_used']}")


def _run_experiment(config_cls, values: dict, set_: list[str], run, out: Optional[Path], errors: tuple) -> None:
    """Build the config from the options and ``--set key=value`` pairs (``errors`` exit with
    code 2 and a message), run the experiment with progress bars, print its report."""
    values.update(_parse_set(set_))
    try:
        cfg = config_cls.from_dict(values)
    except errors as exc:
        console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2)
    with _progress() as bars:
        res = run(cfg, out=out, progress=_Bars(bars))
    console.print((res.run_dir / "report.md").read_text(), markup=False, soft_wrap=True)
    console.print(f"run folder: {res.run_dir.path}")


@app.command("student-teacher")
def student_teacher(
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/convex-student-teacher-<time>)"),
    seed: int = typer.Option(0, "--seed"),
    num_train: int = typer.Option(512, help="training sentences"),
    num_test: int = typer.Option(256, help="test sentences (SST-2 dev)"),
    max_len: int = typer.Option(24, help="tokens per sentence"),
    target_dim: int = typer.Option(32, help="principal directions of the teacher output (0 = all 384)"),
    beta_rel: float = typer.Option(0.02, help="β as a fraction of λ_max"),
    convex_max_iter: int = typer.Option(2000),
    baseline_steps: int = typer.Option(1000),
    data: Optional[Path] = typer.Option(None, "--data", help="shared data folder (else $ATTNOPT_DATA)"),
    set_: list[str] = typer.Option([], "--set", help="any other config key=value"),
) -> None:
    """Refit the last attention layer of all-MiniLM-L6-v2 on SST-2: convex vs softmax vs simplex."""
    from attnopt.config import ConfigError
    from attnopt.experiments.convex_student_teacher import StudentTeacherConfig, run_student_teacher

    values = dict(seed=seed, num_train=num_train, num_test=num_test, max_len=max_len,
                  target_dim=None if target_dim == 0 else target_dim, beta_rel=beta_rel,
                  convex_max_iter=convex_max_iter, baseline_steps=baseline_steps,
                  data_root=None if data is None else str(data))
    _run_experiment(StudentTeacherConfig, values, set_, run_student_teacher, out, (ConfigError, TypeError))


@app.command()
def modular(
    out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/convex-modular-<time>)"),
    seed: int = typer.Option(0, "--seed"),
    p: int = typer.Option(97, "--p", help="prime modulus"),
    train_fraction: float = typer.Option(0.5),
    steps: int = typer.Option(3000, help="transformer AdamW steps"),
    layers: str = typer.Option("1,2", help="transformer depths, comma separated ('' = none)"),
    weight_decay: float = typer.Option(1.0),
    convex_max_iter: int = typer.Option(1000, help="FISTA iterations of the convex model"),
    gate_patterns: int = typer.Option(16),
    beta_rel: float = typer.Option(1e-3, help="β as a fraction of λ_max"),
    set_: list[str] = typer.Option([], "--set", help="any other config key=value"),
) -> None:
    """Modular division a ÷ b mod p: 1-/2-layer transformers (AdamW) vs the convex model."""
    from attnopt.config import ConfigError
    from attnopt.experiments.convex_modular import ModularConfig, run_modular

    values = dict(seed=seed, p=p, train_fraction=train_fraction, steps=steps,
                  layers=tuple(int(x) for x in layers.split(",") if x.strip()), weight_decay=weight_decay,
                  convex_max_iter=convex_max_iter, gate_patterns=gate_patterns, beta_rel=beta_rel)
    _run_experiment(ModularConfig, values, set_, run_modular, out, (ConfigError, TypeError, ValueError))
