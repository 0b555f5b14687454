r"""Convex solution ↔ simplex-attention heads, and the non-convex objective.

Non-convex model (spec §2–3), with heads ``h = 1..H``, each with a gate pattern ``π(h)``,
a simplex row ``w_h ∈ Δ_n`` (the read-out position's attention row, shared by all samples),
a value ``v_h ∈ ℝ^d`` and an output ``b_h ∈ ℝ^c``:

.. math::  \hat y_{il} = \sum_h D_{i,\pi(h)} \, (w_h^\top X_i v_h) \, b_{hl},
           \qquad \text{objective } \sum_i L(\hat y_i, y_i)
           + \tfrac{\beta}{2} \sum_h (\lVert v_h\rVert_2^2 + \lVert b_h\rVert_1^2).

(For ``c = 1`` this is ``(β/2) Σ (‖v‖² + b²)``; without gates ``D ≡ 1``.)

* heads → convex: ``(Z_{π(h), l})_k += w_{hk} b_{hl} v_h``; the convex penalty is then at most
  the non-convex one (triangle inequality + AM–GM), with equal predictions.
* convex → heads: one head per non-zero row ``(j, l, k)``: ``w = e_k``,
  ``v = z/√‖z‖``, ``b = √‖z‖ e_l``, pattern ``j`` — the objectives are then *equal*.
* :func:`reduce_support` moves a solution to an optimum with at most ``rank ≤ N·c`` non-zero
  rows (Carathéodory: fixed row directions, a vertex of ``{t ≥ 0 : Σ_g t_g a_g = P}``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from attnopt.convex.programs import ConvexProblem, ProblemError, loss_value


@dataclasses.dataclass
class Heads:
    """Simplex-attention heads: ``W (H, n)`` rows in the simplex, ``V (H, d)``, ``B (H, c)``,
    ``pattern (H,)`` gate-pattern index of each head (all 0 without gates)."""

    W: torch.Tensor
    V: torch.Tensor
    B: torch.Tensor
    pattern: torch.Tensor

    @property
    def num_heads(self) -> int:
        return self.W.shape[0]

    def tokens_used(self, tol: float = 0.0) -> list[int]:
        """Token positions that receive attention weight ``> tol`` from a head with non-zero output."""
        active = (self.B.abs().sum(1) > 0) & (self.V.norm(dim=1) > 0)
        used = (self.W[active] > tol).any(0)
        return [int(k) for k in torch.nonzero(used).flatten()]


def convex_to_heads(problem: ConvexProblem, Z: torch.Tensor, tol: float = 0.0) -> Heads:
    """One head per row of ``Z`` with norm ``> tol · max row norm`` (``tol = 0``: exact)."""
    Z = problem.check_z(Z)
    m, c, n, d = problem.z_shape
    norms = problem.group_norms(Z)  # (m, c, n)
    thresh = float(tol) * float(norms.max()) if norms.numel() else 0.0
    idx = torch.nonzero(norms > thresh)  # (H, 3): j, l, k
    H = idx.shape[0]
    dev, dt = Z.device, Z.dtype
    W = torch.zeros(H, n, dtype=dt, device=dev)
    V = torch.zeros(H, d, dtype=dt, device=dev)
    B = torch.zeros(H, c, dtype=dt, device=dev)
    if H:
        j, l, k = idx[:, 0], idx[:, 1], idx[:, 2]
        r = torch.arange(H, device=dev)
        s = norms[j, l, k].sqrt()
        W[r, k] = 1.0
        V[:] = Z[j, l, k] / s[:, None]
        B[r, l] = s
        pattern = j.clone()
    else:
        pattern = torch.zeros(0, dtype=torch.long, device=dev)
    return Heads(W=W, V=V, B=B, pattern=pattern)


def _check_heads(problem: ConvexProblem, heads: Heads) -> None:
    H = heads.W.shape[0]
    if heads.W.shape != (H, problem.n):
        raise ProblemError(f"heads.W must have shape (H, n={problem.n}), got {tuple(heads.W.shape)}")
    if heads.V.shape != (H, problem.d):
        raise ProblemError(f"heads.V must have shape (H, d={problem.d}), got {tuple(heads.V.shape)}")
    if heads.B.shape != (H, problem.c):
        raise ProblemError(f"heads.B must have shape (H, c={problem.c}), got {tuple(heads.B.shape)}")
    if heads.pattern.shape != (H,):
        raise ProblemError(f"heads.pattern must have shape (H,), got {tuple(heads.pattern.shape)}")
    if H and (int(heads.pattern.min()) < 0 or int(heads.pattern.max()) >= problem.m):
        raise ProblemError(f"head pattern index out of range [0, {problem.m})")
    for name in ("W", "V", "B"):
        t = getattr(heads, name)
        if not bool(torch.isfinite(t).all()):
            raise ProblemError(f"heads.{name} contains NaN or infinite values")


def heads_to_convex(problem: ConvexProblem, heads: Heads) -> torch.Tensor:
    """``Z`` with ``(Z_{π(h), l})_k = Σ_h w_{hk} b_{hl} v_h``; shape ``(m, c, n, d)``."""
    _check_heads(problem, heads)
    Z = problem.zeros()
    if heads.num_heads == 0:
        return Z
    W, V, B = (t.to(problem.device, problem.dtype) for t in (heads.W, heads.V, heads.B))
    contrib = torch.einsum("hk,hl,hq->hlkq", W, B, V)
    Z.index_add_(0, heads.pattern.to(problem.device), contrib)
    return Z


def heads_predict(problem: ConvexProblem, heads: Heads, X: torch.Tensor | None = None,
                  D: torch.Tensor | None = None) -> torch.Tensor:
    """Predictions of the non-convex network, ``(N, c)`` (on ``problem.X`` unless ``X`` given)."""
    _check_heads(problem, heads)
    X = problem.X if X is None else X
    if D is None:
        D = problem.D
    W, V, B = (t.to(X.device, X.dtype) for t in (heads.W, heads.V, heads.B))
    a = torch.einsum("hk,ikq,hq->ih", W, X, V)  # attention output per head (N, H)
    if D is not None:
        a = a * D[:, heads.pattern.to(X.device)]
    return a @ B


def nonconvex_objective(problem: ConvexProblem, heads: Heads) -> dict:
    """Evaluate the recovered (or any) simplex-attention network on the problem's data.

    Returns ``objective`` (loss + (β/2) Σ(‖v‖² + ‖b‖₁²)), ``loss``, ``penalty``,
    ``predictions`` ``(N, c)``, ``num_heads`` and ``max_simplex_violation`` (how far the
    rows of ``W`` are from the simplex: 0 for a valid network).
    """
    P = heads_predict(problem, heads)
    f = float(loss_value(P, problem.Y, problem.loss))
    pen = 0.5 * problem.beta * float((heads.V**2).sum() + (heads.B.abs().sum(1) ** 2).sum())
    if heads.num_heads:
        viol = max(float((-heads.W).clamp_min(0).max()), float((heads.W.sum(1) - 1).abs().max()))
    else:
        viol = 0.0
    return {
        "objective": f + pen,
        "loss": f,
        "penalty": pen,
        "predictions": P,
        "num_heads": heads.num_heads,
        "max_simplex_violation": viol,
    }


def sparsity_report(problem: ConvexProblem, Z: torch.Tensor, tol: float = 0.0) -> dict:
    """How many heads the recovery needs and which tokens are used.

    ``num_heads`` = non-zero rows (over patterns, outputs, tokens); ``tokens_used`` = token
    positions with a non-zero row in any pattern/output; ``token_sparsity`` = fraction of the
    ``n`` positions that are unused; ``row_norm_per_token`` = Σ over patterns/outputs.
    """
    Z = problem.check_z(Z)
    norms = problem.group_norms(Z)
    thresh = float(tol) * float(norms.max()) if norms.numel() else 0.0
    nz = norms > thresh
    per_token = norms.sum(dim=(0, 1))
    used = nz.any(0).any(0)
    return {
        "num_heads": int(nz.sum()),
        "num_rows": int(nz.numel()),
        "tokens_used": [int(k) for k in torch.nonzero(used).flatten()],
        "num_tokens_used": int(used.sum()),
        "token_sparsity": 1.0 - float(used.sum()) / problem.n,
        "row_norm_per_token": per_token.detach().cpu().tolist(),
    }


def reduce_support(problem: ConvexProblem, Z: torch.Tensor, tol: float = 1e-12) -> torch.Tensor:
    """Carathéodory reduction: same predictions, penalty ≤, at most ``rank`` non-zero rows.

    With each non-zero row's direction ``u_g = z_g/‖z_g‖`` fixed, the predictions are
    ``Σ_g t_g a_g`` with ``t_g = ‖z_g‖ ≥ 0`` and ``a_g = A(u_g)`` ∈ ℝ^{N·c}.  A vertex of
    ``{t ≥ 0 : Σ t_g a_g = P}`` minimising ``Σ t_g`` (found by the dual simplex of HiGHS)
    has at most ``rank ≤ N·c`` non-zero entries and a penalty no larger, so an optimal ``Z``
    stays optimal.  Returns the reduced ``Z``.
    """
    from scipy.optimize import linprog

    Z = problem.check_z(Z)
    norms = problem.group_norms(Z)
    idx = torch.nonzero(norms > tol * max(float(norms.max()), 1e-300))
    G = idx.shape[0]
    if G == 0:
        return Z.clone()
    cols = []
    for j, l, k in idx.tolist():
        U = problem.zeros()
        U[j, l, k] = Z[j, l, k] / norms[j, l, k]
        cols.append(problem.predict(U).reshape(-1))
    Aeq = torch.stack(cols, 1).cpu().double().numpy()  # (N c, G)
    t0 = norms[idx[:, 0], idx[:, 1], idx[:, 2]].cpu().double().numpy()
    beq = Aeq @ t0
    res = linprog(np.ones(G), A_eq=Aeq, b_eq=beq, bounds=[(0, None)] * G, method="highs-ds")
    if res.status != 0:
        raise RuntimeError(f"support reduction LP failed: {res.message}")
    t = np.where(res.x > 1e-12 * max(t0.max(), 1.0), res.x, 0.0)
    Znew = problem.zeros()
    for (j, l, k), tg in zip(idx.tolist(), t):
        if tg > 0:
            Znew[j, l, k] = Z[j, l, k] / norms[j, l, k] * float(tg)
    return Znew
