"""One random convex-attention instance, solved twice (torch FISTA and the CVXPY reference),
and the solution mapped back to simplex-attention heads.

Instance (seeded): ``X_i ∈ ℝ^{n×d}`` with N(0, 1) entries; targets ``y ∈ ℝ^{N×c}`` N(0, 1)
(squared loss), ±1 (logistic), or labels uniform in ``{0, …, c−1}`` (cross-entropy);
``patterns > 0`` adds that many sampled gated-ReLU patterns.  The program (see
:mod:`attnopt.convex.programs`) is

    min_Z Σ_i L(P_i(Z), y_i) + β Σ_{j,l,k} ‖(Z_{jl})_k‖₂,   P_{il} = Σ_j D_ij ⟨Z_jl, X_i⟩.

Reported: both objectives and their relative duality gaps, the objective of the recovered
network (:func:`~attnopt.convex.recovery.convex_to_heads`, equal to the convex one at any
``Z``), its number of heads, and the token positions the solution uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from attnopt.config import ConfigMixin, check_choice, check_float, check_int, config_error
from attnopt.experiments.convex._common import Ticker, begin, check_device, require_device
from attnopt.report.tables import markdown_table
from attnopt.runtime import ProgressFn, experiment_scope, report

LOSSES = ("squared", "logistic", "cross_entropy")
#: reference solvers (``none``: FISTA only)
SOLVERS = ("CLARABEL", "SCS", "none")


@dataclass(frozen=True)
class SolveConfig(ConfigMixin):
    """``samples`` N, ``tokens`` n, ``dim`` d; ``outputs`` c (None: 1, or 2 classes for
    cross-entropy); ``patterns`` gated-ReLU patterns (0: attention only); ``beta`` β ≥ 0;
    FISTA stops at relative duality gap ``tol`` or after ``max_iter`` iterations; ``solver``
    the CVXPY reference (CLARABEL, SCS, or none)."""

    samples: int = 30
    tokens: int = 8
    dim: int = 4
    outputs: Optional[int] = None
    patterns: int = 0
    loss: str = "squared"
    beta: float = 1.0
    tol: float = 1e-9
    max_iter: int = 10_000
    solver: str = "CLARABEL"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for name in ("samples", "tokens", "dim", "max_iter"):
            s(name, check_int(self, name, getattr(self, name), 1))
        s("loss", check_choice(self, "loss", self.loss, LOSSES))
        lo = 2 if self.loss == "cross_entropy" else 1
        if self.outputs is None:
            s("outputs", lo)
        s("outputs", check_int(self, "outputs", self.outputs, 1))
        if self.outputs < lo:
            raise config_error(self, f"outputs: cross_entropy needs at least 2 classes, got {self.outputs}")
        s("patterns", check_int(self, "patterns", self.patterns, 0))
        s("beta", check_float(self, "beta", self.beta, ge=0))
        s("tol", check_float(self, "tol", self.tol, gt=0))
        solver = self.solver
        if isinstance(solver, str):  # case-insensitive, as CVXPY's names
            solver = "none" if solver.lower() == "none" else solver.upper()
        s("solver", check_choice(self, "solver", solver, SOLVERS))
        s("seed", check_int(self, "seed", self.seed, 0))
        s("device", check_device(self, "device", self.device))


@dataclass
class SolveResult:
    config: SolveConfig
    fista: Any            # attnopt.convex.fista.FistaResult
    reference: Any        # attnopt.convex.reference.CvxpyResult, or None (solver "none")
    summary: dict
    out: Optional[Path] = None


def check_environment(cfg: SolveConfig) -> None:
    """What the run needs beyond its config (the device, the reference solver), checked
    before anything is solved or written."""
    require_device(cfg, "device", cfg.device)
    if cfg.solver != "none":
        import cvxpy as cp

        if cfg.solver not in cp.installed_solvers():
            raise config_error(cfg, f"solver {cfg.solver} is not installed (installed: "
                                    f"{', '.join(cp.installed_solvers())}; or use solver 'none')")


def make_instance(cfg: SolveConfig):
    """The seeded random :class:`~attnopt.convex.programs.ConvexProblem` of ``cfg``."""
    import torch

    from attnopt.convex.programs import make_problem, sample_gates

    g = torch.Generator().manual_seed(cfg.seed)
    N, c = cfg.samples, cfg.outputs
    X = torch.randn(N, cfg.tokens, cfg.dim, generator=g, dtype=torch.float64)
    if cfg.loss == "squared":
        y = torch.randn(N, c, generator=g, dtype=torch.float64)
    elif cfg.loss == "logistic":
        y = torch.randint(0, 2, (N, c), generator=g).double() * 2 - 1
    else:
        y = torch.randint(0, c, (N,), generator=g)
    gates = sample_gates(X, cfg.patterns, seed=cfg.seed)[0] if cfg.patterns else None
    return make_problem(X, y, cfg.loss, beta=cfg.beta, gates=gates,
                        num_classes=c if cfg.loss == "cross_entropy" else None, device=cfg.device)


def run_solve(config: SolveConfig | Mapping | None = None, *, out=None,
              progress: ProgressFn | None = None) -> SolveResult:
    """Solve one random instance (see the module docstring); with ``out``, a run folder
    holding config.json, summary.json and report.md."""
    from attnopt.convex.fista import solve_fista
    from attnopt.convex.recovery import convex_to_heads, nonconvex_objective, sparsity_report
    from attnopt.convex.reference import solve_cvxpy

    cfg, rd = begin(SolveConfig, config, out, "convex-solve", check_environment)
    with experiment_scope():
        prob = make_instance(cfg)
        tick = Ticker(progress, "FISTA", cfg.max_iter)
        fista = solve_fista(prob, tol=cfg.tol, max_iter=cfg.max_iter, callback=lambda it, Z, rec: tick(it),
                            callback_every=10)
        tick.close(fista.iterations)
        ref = None
        if cfg.solver != "none":
            ref = solve_cvxpy(prob.to(device="cpu"), solver=cfg.solver)
            report(progress, f"CVXPY/{cfg.solver}", 1, 1)
        nc = nonconvex_objective(prob, convex_to_heads(prob, fista.Z))
        sp = sparsity_report(prob, fista.Z)
    summary = {
        "experiment": "convex-solve", "N": prob.N, "n": prob.n, "d": prob.d, "m": prob.m, "c": prob.c,
        "loss": cfg.loss, "beta": cfg.beta,
        "fista": {"objective": fista.objective, "dual_objective": fista.dual_objective, "rel_gap": fista.rel_gap,
                  "iterations": fista.iterations, "converged": fista.converged, "time_s": fista.time},
        "reference": None if ref is None else {
            "solver": ref.solver, "status": ref.status, "objective": ref.objective, "rel_gap": ref.rel_gap,
            "time_s": ref.time, "solve_time_s": ref.solve_time,
            "rel_objective_difference": (fista.objective - ref.objective) / max(abs(ref.objective), 1e-300)},
        "recovered": {"num_heads": nc["num_heads"], "objective": nc["objective"],
                      "rel_difference": abs(nc["objective"] - fista.objective) / max(abs(fista.objective), 1e-300)},
        "tokens_used": sp["tokens_used"], "num_tokens_used": sp["num_tokens_used"],
    }
    res = SolveResult(cfg, fista, ref, summary)
    if rd is not None:
        rd.write_report(_report(res))
        rd.write_summary(summary)
        res.out = rd.path
    return res


def solver_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison table of a solve summary: header and rows."""
    f = s["fista"]
    rows = [["FISTA (torch)", f"{f['objective']:.10g}", f"{f['rel_gap']:.2e}", f"{f['time_s']:.3f}",
             f"{f['iterations']} ({'converged' if f['converged'] else 'not converged'})"]]
    r = s["reference"]
    if r is not None:
        rows.append([f"CVXPY/{r['solver']}", f"{r['objective']:.10g}", f"{r['rel_gap']:.2e}", f"{r['time_s']:.3f}",
                     r["status"]])
    return ["solver", "objective", "rel. gap", "time s", "iterations / status"], rows


def title(s: dict) -> str:
    return f"convex attention, N={s['N']} n={s['n']} d={s['d']} m={s['m']} c={s['c']}, {s['loss']}, β={s['beta']:g}"


def recovery_line(s: dict) -> str:
    rec = s["recovered"]
    return (f"recovered network: {rec['num_heads']} heads, objective {rec['objective']:.10g} (relative difference "
            f"{rec['rel_difference']:.1e}); tokens used {s['num_tokens_used']}/{s['n']} → {s['tokens_used']}")


def _report(res: SolveResult) -> str:
    s = res.summary
    header, rows = solver_rows(s)
    lines = [f"# {title(s)}", "", markdown_table(header, rows), "", recovery_line(s)]
    if s["reference"] is not None:
        diff = s["reference"]["rel_objective_difference"]
        lines += ["", f"FISTA − reference, relative objective difference: {diff:.1e}."]
    return "\n".join(lines)
