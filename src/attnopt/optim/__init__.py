"""Optimizers: ℓp mirror descent (ℓp-AttGD) with a stored dual variable.

``MirrorDescent`` is a :class:`torch.optim.Optimizer`; ``mirror_descent`` is its functional
core, which runs a single-tensor, foreach, compiled (``torch.compile``) or fused (a C kernel on
CPU, a Triton kernel on CUDA) implementation of the same update.
"""

from attnopt.optim.mirror_descent import (
    NONFINITE_MODES,
    MirrorDescent,
    NonFiniteGradientError,
    mirror_descent,
)

__all__ = ["MirrorDescent", "mirror_descent", "NonFiniteGradientError", "NONFINITE_MODES"]
