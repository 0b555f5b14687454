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



def fused_available(device="cpu") -> bool:
    """Whether ``MirrorDescent(fused=True)`` can run on ``device``: on CUDA when Triton is
    installed, on CPU when the C kernel builds (or is cached) with the system C compiler."""
    import importlib.util

    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    if device.type == "cpu":
        from attnopt.optim import _cpu

        try:
            _cpu.load()
        except RuntimeError:
            return False
        return True
    return False


__all__ = ["MirrorDescent", "mirror_descent", "NonFiniteGradientError", "NONFINITE_MODES", "fused_available"]
