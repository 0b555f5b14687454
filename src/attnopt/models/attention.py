r"""One-layer softmax attention with a query token: :math:`f(X, z) = v^\top X^\top \mathrm{softmax}(X W z)`.

Shapes (leading batch dimensions ``...`` broadcast, e.g. a dimension over seeds):

* ``X``: ``(..., n, T, d)`` — n samples of T tokens (rows ``x_t``) in ℝ^d
* ``z``: ``(..., n, d)`` — one query per sample (self-attention: ``z_i = X[i, 0]``)
* ``W``: ``(..., d, d)`` — combined key–query matrix; or ``W = K Qᵀ`` with K, Q ``(..., d, m)``
* ``v``: ``(..., d)`` — decoder

Token scores are :math:`s_{it} = x_{it}^\top W z_i`; the logistic loss is
:math:`L = \frac1n\sum_i \log(1 + e^{-Y_i f(X_i, z_i)})`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def attention_scores(X: torch.Tensor, W: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Scores ``s[..., i, t] = x_{it}ᵀ W z_i``; shape ``(..., n, T)``."""
    Wz = torch.einsum("...ij,...nj->...ni", W, z)
    return torch.einsum("...ntd,...nd->...nt", X, Wz)


def attention_output(
    X: torch.Tensor, W: torch.Tensor, z: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(f, probs)``: outputs ``f(X_i, z_i)`` ``(..., n)`` and softmax ``(..., n, T)``."""
    probs = torch.softmax(attention_scores(X, W, z), dim=-1)
    Xv = torch.einsum("...ntd,...d->...nt", X, v)
    return (probs * Xv).sum(-1), probs


def logistic_loss(f: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean logistic loss ``(1/n) Σ log(1 + exp(-Y_i f_i))`` over the last dimension."""
    return F.softplus(-Y * f).mean(-1)


class OneLayerAttention(nn.Module):
    """``f(X, z) = vᵀ Xᵀ softmax(X W z)`` with W, or W = K Qᵀ (``rank`` given), as parameters.

    Args:
        d: token dimension.
        rank: ``None`` for the W parameterisation; an int m for K, Q ∈ ℝ^{d×m}.
        train_v: make v a parameter (joint training) or a fixed buffer.
        W, v: optional initial values (copied).
    """

    def __init__(
        self,
        d: int,
        rank: int | None = None,
        train_v: bool = True,
        W: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"d must be positive, got {d}")
        self.d, self.rank = d, rank
        if rank is None:
            init = torch.zeros(d, d, dtype=dtype) if W is None else torch.as_tensor(W, dtype=dtype).clone()
            if init.shape != (d, d):
                raise ValueError(f"W must have shape ({d}, {d}), got {tuple(init.shape)}")
            self.W = nn.Parameter(init)
        else:
            if rank <= 0:
                raise ValueError(f"rank must be positive, got {rank}")
            g = torch.Generator().manual_seed(0)
            self.K = nn.Parameter(0.01 * torch.randn(d, rank, dtype=dtype, generator=g))
            self.Q = nn.Parameter(0.01 * torch.randn(d, rank, dtype=dtype, generator=g))
        v0 = torch.zeros(d, dtype=dtype) if v is None else torch.as_tensor(v, dtype=dtype).clone()
        if v0.shape != (d,):
            raise ValueError(f"v must have shape ({d},), got {tuple(v0.shape)}")
        if train_v:
            self.v = nn.Parameter(v0)
        else:
            self.register_buffer("v", v0)

    def key_query(self) -> torch.Tensor:
        """The combined matrix W (= K Qᵀ in the (K, Q) parameterisation)."""
        return self.W if self.rank is None else self.K @ self.Q.T

    def forward(self, X: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs ``f(X_i, z_i)``; ``z`` defaults to the first token of each sample."""
        if z is None:
            z = X[..., 0, :]
        return attention_output(X, self.key_query(), z, self.v)[0]

    def softmax(self, X: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            z = X[..., 0, :]
        return torch.softmax(attention_scores(X, self.key_query(), z), dim=-1)
