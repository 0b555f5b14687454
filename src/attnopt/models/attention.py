r"""One-layer softmax attention with a query token: :math:`f(X, z) = v^\top X^\top \mathrm{softmax}(X W z)`.

Shapes (leading batch dimensions ``...`` broadcast, e.g. a dimension over seeds):

* ``X``: ``(..., n, T, d)`` — n samples of T tokens (rows ``x_t``) in ℝ^d
* ``z``: ``(..., n, d)`` — one query per sample (self-attention: ``z_i = X[i, 0]``)
* ``W``: ``(..., d, d)`` — combined key–query matrix; or ``W = K Qᵀ`` with K, Q ``(..., d, m)``
* ``v``: ``(..., d)`` — decoder

Token scores are :math:`a_{it} = x_{it}^\top W z_i`; the logistic loss is
:math:`L = \frac1n\sum_i \log(1 + e^{-Y_i f(X_i, z_i)})`.

:func:`scaled_gradients` computes ∂L/∂W (and ∂L/∂v) without the cancellation autograd suffers
once the softmax saturates, up to a positive factor per batch entry (see its docstring).
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


class ScaledGradients(NamedTuple):
    """``W = ∂L/∂W · exp(−log_scale_W)`` (and the same for v when asked), per batch entry, with
    the outputs ``f`` and the softmax ``probs`` of the same forward pass."""

    W: torch.Tensor
    log_scale_W: torch.Tensor
    v: torch.Tensor | None
    log_scale_v: torch.Tensor | None
    f: torch.Tensor
    probs: torch.Tensor


def _shifted(logw: torch.Tensor, sign: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``sign · exp(logw − M)`` and M, with M the maximum of ``logw`` over its last ``ndim``
    dimensions (0 where every weight is 0, i.e. −inf)."""
    M = logw.flatten(-ndim).amax(-1)
    M = torch.where(torch.isfinite(M), M, torch.zeros_like(M))
    return sign * torch.exp(logw - M.reshape(M.shape + (1,) * ndim)), M


def scaled_gradients(X: torch.Tensor, Y: torch.Tensor, z: torch.Tensor, W: torch.Tensor, v: torch.Tensor,
                     *, with_v: bool = False) -> ScaledGradients:
    r"""The gradient of the logistic loss of :math:`f = v^\top X^\top \mathrm{softmax}(XWz)`,
    computed without cancellation and returned up to a positive factor per batch entry.

    With :math:`s_{it}` the softmax, :math:`\gamma_{it} = x_{it}^\top v` and
    :math:`c_i = \ell'(Y_i f_i) Y_i / n` (:math:`\ell(u) = \log(1 + e^{-u})`),

    .. math:: \frac{\partial L}{\partial a_{it}} = c_i \sum_u s_{it} s_{iu} (\gamma_{it} - \gamma_{iu}),\qquad
              \frac{\partial L}{\partial W} = \sum_{i,t} \frac{\partial L}{\partial a_{it}}\, x_{it} z_i^\top,\qquad
              \frac{\partial L}{\partial v} = \sum_{i,t} c_i s_{it} x_{it}.

    The score derivative is summed from pairwise differences :math:`\gamma_{it} - \gamma_{iu}`
    instead of :math:`\gamma_{it} - f_i` (autograd's softmax backward), which loses every digit
    once :math:`s_{i\alpha}` rounds to 1.  Every weight is formed in log space,
    :math:`\log s_{it} + \log s_{iu} + \log|c_i| + \log|\gamma_{it} - \gamma_{iu}|` with
    :math:`\log|c_i| = \log\sigma(-Y_i f_i) - \log n = -\mathrm{softplus}(Y_i f_i) - \log n`, and
    shifted by one common maximum ``log_scale`` per batch entry (leading dimensions) before
    exponentiating, so weights far below e^{-745} of the probabilities do not underflow to a
    zero gradient.  The true gradient is ``W · exp(log_scale_W)``; a normalised step needs only
    the direction.  The gradient for v (``with_v``) is scaled by its own ``log_scale_v``.
    """
    a = attention_scores(X, W, z)
    logs = torch.log_softmax(a, dim=-1)
    probs = logs.exp()
    gam = torch.einsum("...ntd,...d->...nt", X, v)
    f = (probs * gam).sum(-1)
    logc = -F.softplus(Y * f) - math.log(X.shape[-3])  # log|c_i|; sign(c_i) = −sign(Y_i)
    sgn = -torch.sign(Y)
    diff = gam[..., :, None] - gam[..., None, :]  # γ_it − γ_iu
    logw = logs[..., :, None] + logs[..., None, :] + logc[..., None, None] + diff.abs().log()
    w, MW = _shifted(logw, sgn[..., None, None] * torch.sign(diff), 3)
    GW = torch.einsum("...nt,...ntd,...ne->...de", w.sum(-1), X, z)
    Gv = Mv = None
    if with_v:
        wv, Mv = _shifted(logc[..., None] + logs, sgn[..., None].expand_as(logs), 2)
        Gv = torch.einsum("...nt,...ntd->...d", wv, X)
    return ScaledGradients(GW, MW, Gv, Mv, f, probs)


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
