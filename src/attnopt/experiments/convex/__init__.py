"""The convex-attention experiments (*Convexifying Transformers*, ``shared/spec/convex_attention.md``):

* :mod:`~attnopt.experiments.convex.solve` — one random instance, FISTA against the CVXPY
  reference, and the recovered heads (``attnopt convex solve``);
* :mod:`~attnopt.experiments.convex.student_teacher` — the last attention layer of a
  pretrained encoder refitted on SST-2: convex vs simplex vs softmax attention;
* :mod:`~attnopt.experiments.convex.modular` — modular division: transformers vs the convex model.

Each is ``run_x(config, *, out=None, progress=None) -> Result`` with ``Result.out`` the run
folder (None: nothing written).
"""

from attnopt.experiments.convex.modular import ModularConfig, ModularResult, run_modular
from attnopt.experiments.convex.solve import SolveConfig, SolveResult, run_solve
from attnopt.experiments.convex.student_teacher import StudentTeacherConfig, StudentTeacherResult, run_student_teacher

__all__ = ["ModularConfig", "ModularResult", "run_modular", "SolveConfig", "SolveResult", "run_solve",
           "StudentTeacherConfig", "StudentTeacherResult", "run_student_teacher"]
