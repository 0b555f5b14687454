"""Convex attention: the simplex relaxation of attention as group-lasso programs.

See ``shared/spec/convex_attention.md`` and the module docstrings:

* :mod:`~attnopt.convex.programs` — losses, :class:`ConvexProblem`, :func:`make_problem`,
  gate sampling, duality gap;
* :mod:`~attnopt.convex.fista` — the scalable torch FISTA solver;
* :mod:`~attnopt.convex.reference` — the exact CVXPY reference;
* :mod:`~attnopt.convex.recovery` — convex ↔ heads, :func:`nonconvex_objective`;
* :mod:`~attnopt.convex.sequence` — the sequence-output program;
* :mod:`~attnopt.convex.baselines` — softmax attention and non-convex simplex attention.
"""

import importlib

# Public names -> defining submodule.  Loaded on first access (PEP 562), so importing
# ``attnopt.convex`` (e.g. by ``attnopt --help``) does not pull in torch and cvxpy.
_EXPORTS = {
    "baselines": ["SimplexAttention", "SoftmaxAttention", "project_simplex", "train_baseline"],
    "fista": ["FistaResult", "group_soft_threshold", "solve_fista"],
    "programs": ["LOSSES", "ConvexProblem", "ProblemError", "loss_conjugate", "loss_grad", "loss_value",
                 "make_problem", "sample_gates"],
    "recovery": ["Heads", "convex_to_heads", "heads_predict", "heads_to_convex", "nonconvex_objective",
                 "reduce_support", "sparsity_report"],
    "reference": ["CvxpyResult", "solve_cvxpy"],
    "sequence": ["SequenceProblem", "make_sequence_problem", "sequence_nonconvex_objective", "sequence_to_heads",
                 "solve_sequence_cvxpy", "solve_sequence_fista"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'attnopt.convex' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"attnopt.convex.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
