"""Array backends of the fast SVM solvers: the same solver code runs on numpy (small CPU
problems: about 1 µs per operation instead of torch's 8) and on torch (large problems, any
device)."""

from __future__ import annotations

import contextlib
from typing import Optional

import numpy as np
import scipy.linalg as sla
import torch

from attnopt.runtime import torch_threads

# operation instead of ~8) and on torch (large problems, any device)


class _NumpyBackend:
    name = "numpy"

    def __init__(self):
        self.dtype = np.float64

    def asarray(self, x):
        return np.array(x, dtype=np.float64, copy=True)

    def to_numpy(self, x):
        return np.asarray(x)

    def zeros(self, shape):
        return np.zeros(shape)

    def ones(self, shape):
        return np.ones(shape)

    def clamp0(self, x):
        return np.maximum(x, 0.0)

    def norm(self, x, axis=None):
        return np.linalg.norm(x, axis=axis)

    def sign(self, x):
        return np.sign(x)

    def mask(self, cond):
        return cond.astype(np.float64)

    def triu(self, M):
        return np.triu(M)

    def diagonal(self, M):
        return np.diagonal(M)

    def diagm(self, v):
        return np.diag(v)

    def solve_tri(self, R, b, upper):
        return sla.solve_triangular(R, b, lower=not upper, check_finite=False)

    def cat_rows(self, S, v):
        return np.concatenate([S, v[None, :]], axis=0)

    def all_finite(self, x):
        return bool(np.all(np.isfinite(x)))

    def copy(self, x):
        return x.copy()

    def threads(self):
        return contextlib.nullcontext()


class _TorchBackend:
    name = "torch"

    def __init__(self, device=None, threads: Optional[int] = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = torch.float64
        self._threads = threads

    def asarray(self, x):
        return torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device).clone()

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def zeros(self, shape):
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def ones(self, shape):
        return torch.ones(shape, device=self.device, dtype=self.dtype)

    def clamp0(self, x):
        return torch.clamp(x, min=0.0)

    def norm(self, x, axis=None):
        return torch.linalg.vector_norm(x, dim=axis)

    def sign(self, x):
        return torch.sign(x)

    def mask(self, cond):
        return cond.to(self.dtype)

    def triu(self, M):
        return torch.triu(M)

    def diagonal(self, M):
        return torch.diagonal(M)

    def diagm(self, v):
        return torch.diag(v)

    def solve_tri(self, R, b, upper):
        return torch.linalg.solve_triangular(R, b.unsqueeze(1), upper=upper).squeeze(1)

    def cat_rows(self, S, v):
        return torch.cat([S, v.unsqueeze(0)], dim=0)

    def all_finite(self, x):
        return bool(torch.isfinite(x).all())

    def copy(self, x):
        return x.clone()

    def threads(self):
        """Torch's intra-op thread count set for the solve (restored afterwards)."""
        return torch_threads(self._threads)


__all__ = ["_NumpyBackend", "_TorchBackend"]
