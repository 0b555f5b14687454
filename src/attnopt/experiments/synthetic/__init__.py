r"""Synthetic experiments E1 (ℓp-AttGD, W only) and E2 (ℓp-JointGD, W and v), and the demo.

Each experiment is ``run_x(config, *, out=None, progress=None, **overrides) -> XResult``: the
config is a validated dataclass (or a mapping; unknown keys and bad values raise
:class:`~attnopt.config.ConfigError`), the result a dataclass holding the data and ``.out``;
with ``out`` a run folder (config.json, CSV histories, PNG figures, report.md and, last,
summary.json marked complete) is written.  Nothing here prints; torch's thread count and the
random generators are restored afterwards.

Modules: :mod:`~.config` (configurations, protocol constants), :mod:`~.md` (the batched
mirror-descent core), :mod:`~.solves` (SVM solves, cached), :mod:`~.rate` (rate fits),
:mod:`~.convergence` (E1 and the E1-matrix), :mod:`~.trajectories` (E1-path, E2),
:mod:`~.records` (tables, CSVs, figures, reports), :mod:`~.demo`, :mod:`~.kq` (E7, the
(K, Q) parameterisation).
"""

from attnopt.config import ConfigError
from attnopt.experiments.synthetic.config import (PROTOCOL_ITERATIONS, SPEC_JOINT_TOKENS, SPEC_MATRIX_P3,
                                                  ConvergenceConfig, JointConfig, MatrixConfig, PathConfig,
                                                  default_iterations)
from attnopt.experiments.synthetic.convergence import (ConvergenceResult, MatrixResult, PRun, run_convergence,
                                                       run_matrix)
from attnopt.experiments.synthetic.demo import DEMO_ITERATIONS, DemoConfig, DemoResult, run_demo
from attnopt.experiments.synthetic.kq import KQConfig, KQResult, run_kq
from attnopt.experiments.synthetic.rate import RateFit, fit_rate, fit_window
from attnopt.experiments.synthetic.records import matrix_markdown
from attnopt.experiments.synthetic.solves import SVMCache, SVMOutcome
from attnopt.experiments.synthetic.trajectories import (JointResult, JointRun, PathResult, PathRun, run_joint,
                                                        run_path)

__all__ = [
    "PROTOCOL_ITERATIONS", "SPEC_JOINT_TOKENS", "SPEC_MATRIX_P3", "ConfigError", "default_iterations",
    "ConvergenceConfig", "MatrixConfig", "PathConfig", "JointConfig",
    "SVMOutcome", "SVMCache", "RateFit", "fit_rate", "fit_window",
    "PRun", "ConvergenceResult", "MatrixResult", "PathRun", "PathResult", "JointRun", "JointResult",
    "run_convergence", "run_matrix", "run_path", "run_joint", "matrix_markdown",
    "DEMO_ITERATIONS", "DemoConfig", "DemoResult", "run_demo", "KQConfig", "KQResult", "run_kq",
]
