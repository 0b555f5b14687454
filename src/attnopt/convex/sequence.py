r"""Sequence-output convex attention (spec §3, last item).

Non-convex model: heads ``h`` with a mixing matrix ``W_h ∈ ℝ^{n×n}`` (``W ≥ 0``, rows summing
to at most 1), a value ``v_h ∈ ℝ^d`` and an output ``b_h ∈ ℝ^c``:

.. math:: \hat Y_i = \sum_h W_h X_i v_h b_h^\top \in ℝ^{n×c},\qquad
          \sum_i L(\hat Y_i, Y_i) + \tfrac{\beta}{2}\sum_h (\lVert v_h\rVert_1^2 + \lVert b_h\rVert_1^2).

Convex program: non-negative ``n×n`` blocks ``C⁺_{ql}, C⁻_{ql}`` per input feature ``q`` and
output ``l``,

.. math:: \hat Y_i[:, l] = \sum_q (C^+_{ql} - C^-_{ql}) X_i[:, q],\qquad
          \sum_i L + \beta \sum_{q,l} (\lVert C^+_{ql}\rVert_{1,\infty} + \lVert C^-_{ql}\rVert_{1,\infty}),

with ``‖C‖_{1,∞}`` the largest row ℓ1 norm.  Recovery: for each non-zero block with
``ρ = ‖C‖_{1,∞}`` one head ``W = C/ρ``, ``v = √ρ e_q``, ``b = ±√ρ e_l`` — equal objectives.

Where the equivalence is exact and where not: ``C/ρ`` has row sums ≤ 1, so the program is
equivalent to the *sub-stochastic* model above; for the row-stochastic model (the softmax
relaxation) the convex optimum is a lower bound, attained when every used block has equal row
sums.  :func:`sequence_to_heads` reports the largest row-sum deficit.  Losses: squared and
logistic (entry-wise); cross-entropy over the ``c`` outputs per token is not implemented here.

Solvers: CVXPY (:func:`solve_sequence_cvxpy`) and FISTA (:func:`solve_sequence_fista`) whose
prox of ``λ‖C‖_{1,∞} + ι(C ≥ 0)`` is computed exactly per block: for a row-sum cap ``ρ`` the
rows are projected onto ``{c ≥ 0, Σc ≤ ρ}`` (threshold ``τ_t(ρ) = max(0, max_k (S_k − ρ)/k)``
over the sorted row), and ``ρ`` solves ``Σ_t τ_t(ρ) = λ`` by bisection.
Duality gap: the support function of ``{C ≥ 0, ‖C‖_{1,∞} ≤ 1}`` is
``σ(G) = Σ_t max(0, max_s G_{ts})``; the dual point ``θR`` needs ``σ(∓(AᵀR)_{ql}) ≤ β``.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from attnopt.convex.programs import (
    ProblemError,
    _check_finite,
    check_beta,
    loss_conjugate,
    loss_grad,
    loss_smoothness,
    loss_value,
)
from attnopt.convex.fista import momentum_step, prox_gradient_step


@dataclasses.dataclass
class SequenceProblem:
    """``X (N, n, d)``, targets ``Y (N, n, c)``, ``loss`` ('squared'|'logistic'), ``beta``.

    The variable ``C`` has shape ``(2, d, c, n, n)`` (sign, feature, output, row, column), ≥ 0.
    """

    X: torch.Tensor
    Y: torch.Tensor
    loss: str
    beta: float

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        N, n, d = self.X.shape
        return (2, d, self.Y.shape[2], n, n)

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.X.dtype, device=self.X.device)

    def predict(self, C: torch.Tensor) -> torch.Tensor:
        M = C[0] - C[1]  # (d, c, n, n)
        return torch.einsum("qlts,isq->itl", M, self.X)

    def adjoint(self, R: torch.Tensor) -> torch.Tensor:
        G = torch.einsum("itl,isq->qlts", R, self.X)
        return torch.stack([G, -G])

    def block_norms(self, C: torch.Tensor) -> torch.Tensor:
        """``‖C_b‖_{1,∞}`` for each block, shape ``(2, d, c)``."""
        return C.abs().sum(-1).amax(-1)

    def penalty(self, C: torch.Tensor) -> torch.Tensor:
        return self.beta * self.block_norms(C).sum()

    def objective(self, C: torch.Tensor) -> float:
        C = self.check_c(C)
        return float(loss_value(self.predict(C), self.Y, self.loss) + self.penalty(C))

    def check_c(self, C) -> torch.Tensor:
        C = torch.as_tensor(C, dtype=self.X.dtype, device=self.X.device)
        if tuple(C.shape) != self.shape:
            raise ProblemError(f"C must have shape {self.shape} (2, d, c, n, n), got {tuple(C.shape)}")
        _check_finite(C, "C")
        if bool((C < 0).any()):
            raise ProblemError("C must be non-negative")
        return C

    def dual(self, C: torch.Tensor, P: torch.Tensor | None = None) -> dict:
        if P is None:
            P = self.predict(C)
        primal = float(loss_value(P, self.Y, self.loss) + self.penalty(C))
        R = loss_grad(P, self.Y, self.loss)
        G = self.adjoint(R)  # gradient w.r.t. C (both signs)
        # need σ(−G_b) ≤ β for every block b (C ≥ 0 enters with ⟨G, C⟩)
        sigma = (-G).amax(-1).clamp_min(0).sum(-1)  # (2, d, c)
        s = float(sigma.max())
        theta = 1.0 if s <= self.beta else self.beta / s
        dual = -float(loss_conjugate(theta * R, self.Y, self.loss))
        gap = primal - dual
        return {"primal": primal, "dual": dual, "gap": gap, "rel_gap": gap / max(abs(primal), 1e-300)}


def make_sequence_problem(X, Y, loss: str = "squared", beta: float = 1.0,
                          dtype: torch.dtype = torch.float64, device=None) -> SequenceProblem:
    """Validate and build a :class:`SequenceProblem` (``Y`` of shape ``(N, n)`` or ``(N, n, c)``)."""
    if loss not in ("squared", "logistic"):
        raise ProblemError(f"sequence output supports loss 'squared' or 'logistic', got {loss!r}")
    beta = check_beta(beta)
    X = torch.as_tensor(X, device=device).to(dtype)
    if X.ndim != 3 or 0 in X.shape:
        raise ProblemError(f"X must have shape (N, n, d), got {tuple(X.shape)}")
    _check_finite(X, "X")
    Y = torch.as_tensor(Y, device=X.device).to(dtype)
    if Y.ndim == 2:
        Y = Y.unsqueeze(-1)
    if Y.ndim != 3 or Y.shape[:2] != X.shape[:2]:
        raise ProblemError(f"Y must have shape (N, n) or (N, n, c) matching X's (N, n) = "
                           f"{tuple(X.shape[:2])}, got {tuple(Y.shape)}")
    _check_finite(Y, "Y")
    if loss == "logistic" and not bool(((Y == 1) | (Y == -1)).all()):
        raise ProblemError("logistic loss needs labels in {-1, +1}")
    return SequenceProblem(X=X, Y=Y, loss=loss, beta=beta)


def _row_thresholds(S: torch.Tensor, k: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``τ_t(ρ) = max(0, max_k (S_k − ρ)/k)``; S (B, n, n) cumsums of sorted rows, rho (B,)."""
    return ((S - rho[:, None, None]) / k).amax(-1).clamp_min(0)


def prox_row_max_l1_nonneg(V: torch.Tensor, lam: float, iters: int = 80) -> torch.Tensor:
    """Prox of ``lam · max_t Σ_s C_ts + ι(C ≥ 0)`` for a batch of blocks ``V (..., n, n)``."""
    shape = V.shape
    n = shape[-1]
    Vb = V.reshape(-1, shape[-2], n)
    Vp = Vb.clamp_min(0)
    if lam <= 0:
        return Vp.reshape(shape)
    u, _ = torch.sort(Vb, dim=-1, descending=True)
    S = torch.cumsum(u, -1)
    k = torch.arange(1, n + 1, dtype=V.dtype, device=V.device)
    hi = Vp.sum(-1).amax(-1)  # ρ at which nothing is capped
    tau0 = _row_thresholds(S, k, torch.zeros_like(hi)).sum(-1)
    zero = tau0 <= lam  # whole block vanishes
    lo = torch.zeros_like(hi)
    hi_ = hi.clone()
    for _ in range(iters):
        mid = 0.5 * (lo + hi_)
        f = _row_thresholds(S, k, mid).sum(-1)
        big = f > lam  # τ too large → ρ must grow
        lo = torch.where(big, mid, lo)
        hi_ = torch.where(big, hi_, mid)
    rho = 0.5 * (lo + hi_)
    tau = _row_thresholds(S, k, rho)
    C = (Vb - tau[..., None]).clamp_min(0)
    C[zero] = 0.0
    return C.reshape(shape)


@dataclasses.dataclass
class SequenceResult:
    C: torch.Tensor
    objective: float
    gap: float
    rel_gap: float
    converged: bool
    iterations: int
    time: float


def solve_sequence_fista(problem: SequenceProblem, tol: float = 1e-8, max_iter: int = 20_000,
                         check_every: int = 10) -> SequenceResult:
    """FISTA (backtracking, gradient restart) with the exact block prox; stops on relative gap."""
    t0 = time.perf_counter()
    p = problem
    # ‖A‖² by power iteration
    g = torch.Generator().manual_seed(0)
    v = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.X)
    lam = 1.0
    for _ in range(60):
        w = p.adjoint(p.predict(v))
        lam = float(w.norm())
        if lam == 0:
            lam = 1.0
            break
        v = w / lam
    Lc = loss_smoothness(p.loss) * lam
    x = p.zeros()
    Px = p.predict(x)
    y, Py, t = x, Px, 1.0
    info = p.dual(x, Px)
    it = 0
    slack = max(1e-12, 10 * torch.finfo(p.X.dtype).eps)
    converged = info["rel_gap"] <= tol
    while not converged and it < max_iter:
        it += 1
        x_new, Px_new, _, Lc = prox_gradient_step(
            p, lambda V, step: prox_row_max_l1_nonneg(V, p.beta * step), y, Py, Lc, slack)
        y, Py, t, _ = momentum_step(x_new, Px_new, x, Px, y, t)
        x, Px = x_new, Px_new
        if it % check_every == 0:
            info = p.dual(x, Px)
            converged = info["rel_gap"] <= tol
    info = p.dual(x, Px)
    return SequenceResult(C=x, objective=info["primal"], gap=info["gap"], rel_gap=info["rel_gap"],
                          converged=info["rel_gap"] <= tol, iterations=it, time=time.perf_counter() - t0)


def solve_sequence_cvxpy(problem: SequenceProblem, solver: str = "CLARABEL") -> SequenceResult:
    """Exact reference with CVXPY (small instances)."""
    import cvxpy as cp

    t0 = time.perf_counter()
    p = problem
    N, n, d = p.X.shape
    c = p.Y.shape[2]
    Xn = p.X.detach().cpu().double().numpy()
    Yn = p.Y.detach().cpu().double().numpy()
    Cv = [[[cp.Variable((n, n), nonneg=True) for _ in range(c)] for _ in range(d)] for _ in range(2)]
    data = 0
    for l in range(c):
        Pl = sum((Cv[0][q][l] - Cv[1][q][l]) @ Xn[:, :, q].T for q in range(d))  # (n, N)
        if p.loss == "squared":
            data = data + 0.5 * cp.sum_squares(Pl - Yn[:, :, l].T)
        else:
            data = data + cp.sum(cp.logistic(-cp.multiply(Yn[:, :, l].T, Pl)))
    pen = sum(cp.max(cp.sum(Cv[s][q][l], axis=1)) for s in range(2) for q in range(d) for l in range(c))
    prob = cp.Problem(cp.Minimize(data + p.beta * pen))
    prob.solve(solver=solver)
    C = np.zeros((2, d, c, n, n))
    for s in range(2):
        for q in range(d):
            for l in range(c):
                C[s, q, l] = np.maximum(Cv[s][q][l].value, 0.0)
    Ct = torch.from_numpy(C).to(p.X)
    info = p.dual(Ct)
    return SequenceResult(C=Ct, objective=info["primal"], gap=info["gap"], rel_gap=info["rel_gap"],
                          converged=prob.status == "optimal", iterations=0, time=time.perf_counter() - t0)


@dataclasses.dataclass
class SequenceHeads:
    """``W (H, n, n)`` (non-negative, rows summing to ≤ 1), ``V (H, d)``, ``B (H, c)``."""

    W: torch.Tensor
    V: torch.Tensor
    B: torch.Tensor
    max_row_deficit: float  # max over heads/rows of 1 − row sum (0: row-stochastic)


def sequence_to_heads(problem: SequenceProblem, C: torch.Tensor, tol: float = 0.0) -> SequenceHeads:
    C = problem.check_c(C)
    rho = problem.block_norms(C)  # (2, d, c)
    idx = torch.nonzero(rho > tol * max(float(rho.max()), 0.0)) if rho.numel() else torch.zeros(0, 3)
    _, d, c, n, _ = problem.shape
    H = idx.shape[0]
    W = torch.zeros(H, n, n, dtype=C.dtype, device=C.device)
    V = torch.zeros(H, d, dtype=C.dtype, device=C.device)
    B = torch.zeros(H, c, dtype=C.dtype, device=C.device)
    deficit = 0.0
    for h, (s, q, l) in enumerate(idx.tolist()):
        r = float(rho[s, q, l])
        W[h] = C[s, q, l] / r
        V[h, q] = math.sqrt(r)
        B[h, l] = math.sqrt(r) * (1.0 if s == 0 else -1.0)
        deficit = max(deficit, float((1 - W[h].sum(-1)).max()))
    return SequenceHeads(W=W, V=V, B=B, max_row_deficit=deficit)


def sequence_nonconvex_objective(problem: SequenceProblem, heads: SequenceHeads) -> dict:
    """Loss + (β/2) Σ(‖v‖₁² + ‖b‖₁²) of the head network ``Ŷ_i = Σ_h W_h X_i v_h b_hᵀ``."""
    P = torch.einsum("hts,isq,hq,hl->itl", heads.W, problem.X, heads.V, heads.B)
    f = float(loss_value(P, problem.Y, problem.loss))
    pen = 0.5 * problem.beta * float((heads.V.abs().sum(1) ** 2).sum() + (heads.B.abs().sum(1) ** 2).sum())
    return {"objective": f + pen, "loss": f, "penalty": pen, "predictions": P, "num_heads": heads.W.shape[0]}
