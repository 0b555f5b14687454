"""The demo: a reduced E1 (convergence + matrix + path) and E2, in one run folder holding
``e1/``, ``path/`` and ``e2/`` (each a complete run folder of its own) and a top-level
report.md and summary.json (written last: the demo is complete only when all three are)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from attnopt.config import ConfigMixin, check_choice, check_int, check_ps
from attnopt.experiments.synthetic import records
from attnopt.experiments.synthetic.config import (SOLVERS, SPEC_JOINT_TOKENS, JointConfig, MatrixConfig, PathConfig,
                                                  check_iterations)
from attnopt.experiments.synthetic.convergence import MatrixResult, run_matrix
from attnopt.experiments.synthetic.md import STEPS
from attnopt.experiments.synthetic.trajectories import JointResult, PathResult, run_joint, run_path
from attnopt.report.runs import as_run_dir, open_run_dir
from attnopt.runtime import ProgressFn

#: Reduced iterations of the demo (a tenth to a fifth of the protocol's), per p.
DEMO_ITERATIONS: dict[float, int] = {1.75: 300, 2.0: 400, 3.0: 3000}


@dataclass(frozen=True)
class DemoConfig(ConfigMixin):
    """The demo: ``n_seeds`` seeds of E1 (matrix included) at ``iterations`` (None → the
    reduced :data:`DEMO_ITERATIONS`; an int or a mapping p → int as for E1, whose keys are the
    p's), the E1 path at the first and last p, and E2 at every p, all with the normalised
    ``step`` ("exact" or "published")."""

    n_seeds: int = 20
    iterations: Any = None
    solver: str = "auto"
    step: str = "exact"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_seeds", check_int(self, "n_seeds", self.n_seeds, 1))
        it = dict(DEMO_ITERATIONS) if self.iterations is None else self.iterations
        ps = tuple(it) if isinstance(it, Mapping) else tuple(DEMO_ITERATIONS)
        object.__setattr__(self, "iterations",
                           check_iterations(self, "iterations", it, check_ps(self, "iterations keys", ps)))
        check_choice(self, "solver", self.solver, SOLVERS)
        check_choice(self, "step", self.step, STEPS)

    def ps(self) -> tuple[float, ...]:
        return tuple(self.iterations) if isinstance(self.iterations, dict) else tuple(DEMO_ITERATIONS)

    def parts(self) -> tuple[MatrixConfig, PathConfig, JointConfig]:
        ps = self.ps()
        path_ps = tuple(dict.fromkeys((ps[0], ps[-1])))
        kw = dict(iterations=self.iterations, solver=self.solver, step=self.step)
        return (MatrixConfig(ps=ps, n_seeds=self.n_seeds, **kw), PathConfig(ps=path_ps, **kw),
                JointConfig(ps=ps, **kw,
                            expected_tokens={k: v for k, v in SPEC_JOINT_TOKENS.items() if k in ps}))


@dataclass
class DemoResult:
    config: DemoConfig
    matrix: MatrixResult
    path: PathResult
    joint: JointResult
    summary: dict
    out: Path | None = None


def run_demo(config: DemoConfig | Mapping | None = None, *, out: str | Path | None = None,
             progress: ProgressFn | None = None, **overrides: Any) -> DemoResult:
    """The demo (see :class:`DemoConfig`); with ``out``, a run folder holding e1/, path/, e2/."""
    cfg = DemoConfig.coerce(config, **overrides)
    t0 = time.perf_counter()
    mcfg, pcfg, jcfg = cfg.parts()
    rd = as_run_dir(out, cfg, experiment="demo")
    sub = dict.fromkeys(("e1", "path", "e2"))
    if rd is not None:
        sub = {name: open_run_dir(rd.path / name, c, experiment=exp)
               for name, c, exp in (("e1", mcfg, "e1-matrix"), ("path", pcfg, "e1-path"), ("e2", jcfg, "e2-joint"))}
    m = run_matrix(mcfg, out=sub["e1"], progress=progress)
    pr = run_path(pcfg, out=sub["path"], progress=progress)
    j = run_joint(jcfg, out=sub["e2"], progress=progress)
    wall = time.perf_counter() - t0
    summary = {"experiment": "demo", "wall_seconds": wall, "matched_is_smallest": m.summary["matched_is_smallest"],
               "e2_tokens_match_spec": j.summary["all_match_spec"], "matrix": m.table,
               "e2": {k: {"alpha": v["alpha"], "expected": v["expected"]} for k, v in j.summary["per_p"].items()}}
    res = DemoResult(cfg, m, pr, j, summary)
    res.out = records.finish(rd, summary, lambda: _demo_report(res, wall), lambda rd: None)
    return res


def _demo_report(res: DemoResult, wall: float) -> str:
    return "\n".join([
        "# attnopt demo — reduced E1 and E2", "",
        f"{res.config.n_seeds} seeds, iterations {res.config.iterations}; full protocol: `attnopt synthetic matrix` "
        "(100 seeds, 1500/2000/20000).", "",
        "## E1 matrix (final values)", "", records.matrix_markdown(res.matrix), "",
        records.matched_line(res.summary["matched_is_smallest"]),
        "", "## E2 selected tokens", "",
        "\n".join(f"- p = {k}: α = {tuple(v['alpha'])}, spec {tuple(v['expected']) if v['expected'] else '–'}"
                  for k, v in res.joint.summary["per_p"].items()), "",
        "Details: [`e1/report.md`](e1/report.md), [`path/report.md`](path/report.md), [`e2/report.md`](e2/report.md); "
        "figures `e1/convergence.png`, `e1/matrix.png`, `e1/rate.png`, `path/path.png`, `e2/joint.png`.", "",
        f"Wall time {wall:.1f} s.",
    ])


__all__ = ["DEMO_ITERATIONS", "DemoConfig", "DemoResult", "run_demo"]
