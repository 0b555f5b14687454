r"""Gradient-trained baselines for the convex programs.

(a) :class:`SoftmaxAttention` — standard multi-head softmax attention
    ``f(X) = Σ_j softmax(X W_Qj W_Kjᵀ Xᵀ / √d_h) X W_Vj W_Oj`` read out at one position or
    averaged over the (unmasked) query positions, objective
    ``Σ_i L(f(X_i), y_i) + (β/2) Σ (‖W_Q‖² + ‖W_K‖² + ‖W_V‖² + ‖W_O‖²)`` (weight decay on all
    four matrices, as in the spec).  The 1/√d_h scaling is the usual one; it does not change
    the model class.
(b) :class:`SimplexAttention` — the non-convex simplex-attention network of
    :mod:`attnopt.convex.recovery` (optionally gated), objective
    ``Σ L + (β/2) Σ_h (‖v_h‖² + ‖b_h‖₁²)``; each row ``w_h`` is kept on the simplex either by a
    softmax parameterisation (``simplex="softmax"``) or by Euclidean projection after every
    step (``simplex="projection"``).

:func:`train_baseline` runs Adam or SGD (full batch or minibatches) and records the training
objective against wall time.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from attnopt.convex.programs import ConvexProblem, ProblemError, loss_value
from attnopt.convex.recovery import Heads


def project_simplex(V: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``V`` onto the probability simplex (sort-based)."""
    n = V.shape[-1]
    u, _ = torch.sort(V, dim=-1, descending=True)
    css = torch.cumsum(u, -1) - 1.0
    k = torch.arange(1, n + 1, dtype=V.dtype, device=V.device)
    cond = u - css / k > 0
    # the condition holds on a prefix, so the last True is at (number of True) - 1
    rho = cond.sum(-1, keepdim=True) - 1
    tau = css.gather(-1, rho) / (rho + 1).to(V.dtype)
    return (V - tau).clamp_min(0)


class SimplexAttention(nn.Module):
    """Non-convex simplex attention with ``H`` heads (see the module docstring).

    Args:
        n, d, c: tokens, features, outputs.
        num_heads: ``H``.
        num_patterns: gate patterns ``m`` (heads are assigned round-robin to patterns).
        simplex: ``"softmax"`` or ``"projection"``.
        init_scale: std of the initial ``v``, ``b``.
    """

    def __init__(self, n: int, d: int, c: int, num_heads: int, num_patterns: int = 1,
                 simplex: str = "softmax", init_scale: float = 0.1, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if simplex not in ("softmax", "projection"):
            raise ProblemError(f"simplex must be 'softmax' or 'projection', got {simplex!r}")
        if num_heads < 1:
            raise ProblemError(f"num_heads must be >= 1, got {num_heads}")
        g = torch.Generator().manual_seed(seed)
        self.simplex = simplex
        logits = 0.1 * torch.randn(num_heads, n, generator=g, dtype=dtype)
        if simplex == "softmax":
            self.logits = nn.Parameter(logits)
        else:
            self.w = nn.Parameter(torch.softmax(logits, -1))
        self.V = nn.Parameter(init_scale * torch.randn(num_heads, d, generator=g, dtype=dtype))
        self.B = nn.Parameter(init_scale * torch.randn(num_heads, c, generator=g, dtype=dtype))
        self.register_buffer("pattern", torch.arange(num_heads) % num_patterns)

    def attention(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1) if self.simplex == "softmax" else self.w

    def forward(self, X: torch.Tensor, D: torch.Tensor | None = None) -> torch.Tensor:
        a = torch.einsum("hk,ikq,hq->ih", self.attention(), X, self.V)
        if D is not None:
            a = a * D[:, self.pattern]
        return a @ self.B

    def penalty(self, beta: float) -> torch.Tensor:
        return 0.5 * beta * ((self.V**2).sum() + (self.B.abs().sum(1) ** 2).sum())

    @torch.no_grad()
    def after_step(self) -> None:
        if self.simplex == "projection":
            self.w.copy_(project_simplex(self.w))

    @torch.no_grad()
    def to_heads(self) -> Heads:
        return Heads(W=self.attention().detach().clone(), V=self.V.detach().clone(),
                     B=self.B.detach().clone(), pattern=self.pattern.clone())


class SoftmaxAttention(nn.Module):
    """Standard multi-head softmax attention with a linear read-out (see the module docstring).

    Args:
        d: token dimension; c: outputs; num_heads; head_dim.
        readout: ``"mean"`` (average over unmasked query positions) or an int position.
    """

    def __init__(self, d: int, c: int, num_heads: int = 4, head_dim: int = 16,
                 readout: str | int = "mean", init_scale: float | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        s = init_scale if init_scale is not None else 1.0 / math.sqrt(d)
        hd = num_heads * head_dim
        self.num_heads, self.head_dim, self.readout = num_heads, head_dim, readout
        self.WQ = nn.Parameter(s * torch.randn(d, hd, generator=g, dtype=dtype))
        self.WK = nn.Parameter(s * torch.randn(d, hd, generator=g, dtype=dtype))
        self.WV = nn.Parameter(s * torch.randn(d, hd, generator=g, dtype=dtype))
        self.WO = nn.Parameter(torch.randn(hd, c, generator=g, dtype=dtype) / math.sqrt(hd))

    def attention_maps(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax maps ``(N, heads, n, n)``; ``mask (N, n)`` True for real tokens."""
        N, n, _ = X.shape
        Q = (X @ self.WQ).view(N, n, self.num_heads, self.head_dim).transpose(1, 2)
        K = (X @ self.WK).view(N, n, self.num_heads, self.head_dim).transpose(1, 2)
        S = Q @ K.transpose(-1, -2) / math.sqrt(self.head_dim)
        if mask is not None:
            S = S.masked_fill(~mask[:, None, None, :], float("-inf"))
        return torch.softmax(S, -1)

    def forward(self, X: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        N, n, _ = X.shape
        A = self.attention_maps(X, mask)
        Vv = (X @ self.WV).view(N, n, self.num_heads, self.head_dim).transpose(1, 2)
        O = (A @ Vv).transpose(1, 2).reshape(N, n, -1) @ self.WO  # (N, n, c)
        if self.readout == "mean":
            if mask is None:
                return O.mean(1)
            w = mask.to(O.dtype)
            return (O * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)
        return O[:, int(self.readout)]

    def penalty(self, beta: float) -> torch.Tensor:
        return 0.5 * beta * sum((p**2).sum() for p in (self.WQ, self.WK, self.WV, self.WO))

    def after_step(self) -> None:
        pass


def train_baseline(
    model: nn.Module,
    problem: ConvexProblem,
    steps: int = 1000,
    lr: float = 1e-2,
    optimizer: str = "adam",
    batch_size: int | None = None,
    mask: torch.Tensor | None = None,
    log_every: int = 10,
    seed: int = 0,
    time_limit: float | None = None,
    callback: Callable[[int, nn.Module], dict] | None = None,
) -> list[dict]:
    """Train ``model`` on ``problem``'s data and loss; returns the history.

    The logged ``objective`` is the full-data training objective in the model's own terms
    (loss summed over samples + the model's weight-decay penalty at ``problem.beta``);
    ``loss`` is the data term alone.  ``callback(step, model)`` may add fields to a record.
    """
    if optimizer not in ("adam", "sgd"):
        raise ProblemError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    X, Y, D = problem.X, problem.Y, problem.D
    model = model.to(X.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    N = problem.N

    def forward(idx=None):
        Xi = X if idx is None else X[idx]
        if isinstance(model, SimplexAttention):
            Di = None if D is None else (D if idx is None else D[idx])
            return model(Xi, Di)
        mi = None if mask is None else (mask if idx is None else mask[idx])
        return model(Xi, mi)

    def full_eval() -> dict:
        with torch.no_grad():
            P = forward()
            f = float(loss_value(P, Y, problem.loss))
            return {"loss": f, "objective": f + float(model.penalty(problem.beta))}

    hist: list[dict] = []
    t0 = time.perf_counter()
    eval_time = 0.0
    rec = {"step": 0, "time": 0.0, **full_eval()}
    if callback:
        rec.update(callback(0, model))
    hist.append(rec)
    for step in range(1, steps + 1):
        if batch_size is None or batch_size >= N:
            idx, scale = None, 1.0
        else:
            idx = torch.randperm(N, generator=g)[:batch_size].to(X.device)
            scale = N / batch_size  # unbiased estimate of the summed loss
        opt.zero_grad(set_to_none=True)
        Yi = Y if idx is None else Y[idx]
        obj = scale * loss_value(forward(idx), Yi, problem.loss) + model.penalty(problem.beta)
        obj.backward()
        opt.step()
        model.after_step()
        if step % log_every == 0 or step == steps:
            te = time.perf_counter()
            rec = {"step": step, "time": te - t0 - eval_time, **full_eval()}
            if callback:
                rec.update(callback(step, model))
            eval_time += time.perf_counter() - te
            hist.append(rec)
        if time_limit is not None and time.perf_counter() - t0 - eval_time > time_limit:
            break
    return hist
