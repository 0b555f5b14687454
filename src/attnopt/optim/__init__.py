"""Optimizers: ℓp mirror descent (ℓp-AttGD) with a stored dual variable.

``MirrorDescent`` is a :class:`torch.optim.Optimizer`; ``mirror_descent`` is its functional
core, which runs a fused (a C kernel on CPU, a Triton kernel on CUDA), foreach, single-tensor
or compiled (``torch.compile``) implementation of the same update — by default the fastest
one that works on the parameters' device (``MirrorDescent.implementation`` says which).
"""

from attnopt.optim.mirror_descent import MirrorDescent  # noqa: I001  (first: the name below replaces the module's)
from attnopt.optim._cpu import KernelBuildError
from attnopt.optim._functional import mirror_descent
from attnopt.optim._nonfinite import NONFINITE_MODES, NonFiniteGradientError


def fused_available(device="cpu") -> bool:
    """Whether ``MirrorDescent(fused=True)`` can run on ``device``: on CUDA when Triton is
    installed, on CPU when the C kernel builds (or is cached) with the system C compiler.
    ``MirrorDescent()`` without implementation flags uses it whenever this is True."""
    import importlib.util

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    if device.type == "cpu":
        from attnopt.optim import _cpu

        try:
            _cpu.load()
        except KernelBuildError:
            return False
        return True
    return False


__all__ = ["MirrorDescent", "mirror_descent", "NonFiniteGradientError", "NONFINITE_MODES", "KernelBuildError",
           "fused_available"]
