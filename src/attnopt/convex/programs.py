r"""Convex attention programs: losses, problem definitions and input validation.

One class, :class:`ConvexProblem`, covers the group-lasso family of the spec
(``shared/spec/convex_attention.md`` §2–3):

* attention-only, scalar output (``m = 1`` gate pattern of all ones, ``c = 1`` output);
* attention-only, vector output (``c`` outputs, one ``Z_l`` per output);
* attention followed by a gated-ReLU FC layer (``m`` fixed gate patterns ``D[:, j]``).

The variable is a tensor ``Z`` of shape ``(m, c, n, d)`` (pattern, output, token, feature) and
the predictions are

.. math::  P_{il} = \sum_j D_{ij} \langle Z_{jl}, X_i \rangle_F ,

with the objective :math:`\sum_i \ell(P_i, y_i) + \beta \sum_{j,l,k} \lVert (Z_{jl})_k \rVert_2`
(the loss is summed, not averaged, and carries no ½ factor beyond the one in the squared loss
below — the spec's corrected form).  Groups are the token rows ``(Z_{jl})_k ∈ ℝ^d``.

Losses (``L(p, y)``, summed over samples and outputs) and their Fenchel conjugates
``L*(u) = sup_p u p − L(p, y)``, used by the duality gap:

* ``squared``:   ``L = ½ (p − y)²``;  ``L*(u) = ½ u² + u y``.
* ``logistic``:  ``L = log(1 + exp(−y p))`` with ``y ∈ {−1, +1}``;  with ``s = −u y``,
  ``L*(u) = s log s + (1 − s) log(1 − s)`` for ``s ∈ [0, 1]`` (``+∞`` otherwise).
* ``cross_entropy`` (``c ≥ 2`` classes, integer labels, not separable over outputs):
  ``L = logsumexp(p) − p_y``;  with ``q = u + e_y``, ``L*(u) = Σ_l q_l log q_l`` for ``q`` in the
  probability simplex (``+∞`` otherwise).

Duality gap.  Write ``A`` for the linear map ``Z ↦ P`` and ``R = ∇_P L(P)`` at the current
``Z``.  The Fenchel dual of ``min_Z L(AZ) + β‖Z‖_{2,1}`` is ``max_U −L*(U)`` subject to
``max_g ‖(AᵀU)_g‖_2 ≤ β`` (the dual norm of the group ℓ2,1 norm is the largest group ℓ2 norm).
The dual point is ``U = θ R`` with ``θ = min(1, β / max_g ‖(AᵀR)_g‖_2)``; for all three losses
``θ R`` stays in the domain of ``L*`` when ``θ ∈ [0, 1]``.  Then
``gap = primal − (−L*(θR)) ≥ 0`` bounds the suboptimality of ``Z``; it is zero exactly at
an optimum.

Equivalence with the non-convex networks (see :mod:`attnopt.convex.recovery`): the recovered
heads reproduce the predictions exactly, so the non-convex objective equals the convex one
for *every* loss that depends on the predictions only — squared, logistic and cross-entropy
alike.  What does not carry over: (i) the gated program is equivalent to the *gated-ReLU*
network with those fixed gates, not to a ReLU network (which needs the cone constraints
``(2D−1)⟨Z, X⟩ ≥ 0`` that this program omits); (ii) the simplex model itself is a relaxation
of softmax attention (a different model class), so nothing here is an exact reformulation of
softmax attention; (iii) the sequence-output program (:mod:`attnopt.convex.sequence`) is
exact for sub-stochastic mixing matrices (rows summing to at most 1).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Literal

import torch
from torch.nn import functional as F

from attnopt.errors import UserError

LossName = Literal["squared", "logistic", "cross_entropy"]
LOSSES: tuple[str, ...] = ("squared", "logistic", "cross_entropy")


class ProblemError(UserError, ValueError):
    """Invalid input to a convex attention program (shape, value or NaN problems, a solver
    that is not installed): a user error, reported by the command line as one line."""


def _as_tensor(x, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    try:
        t = torch.as_tensor(x, device=device)
    except Exception as exc:  # pragma: no cover - defensive
        raise ProblemError(f"{name}: cannot convert to a tensor ({exc})") from exc
    if t.is_complex():
        raise ProblemError(f"{name} must be real, got a complex tensor")
    return t.to(dtype)


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ProblemError(f"{name} contains {bad} NaN or infinite value(s)")


def check_beta(beta) -> float:
    """β must be a finite number ≥ 0 (β = 0 is allowed: plain empirical risk)."""
    try:
        b = float(beta)
    except (TypeError, ValueError) as exc:
        raise ProblemError(f"beta must be a number, got {beta!r}") from exc
    if not math.isfinite(b):
        raise ProblemError(f"beta must be finite, got {b}")
    if b < 0:
        raise ProblemError(f"beta must be non-negative, got {b}")
    return b


# --------------------------------------------------------------------------------------------
# losses


def loss_value(P: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed loss ``Σ_i L(P_i, y_i)`` (see the module docstring for the definitions)."""
    if loss == "squared":
        return 0.5 * ((P - Y) ** 2).sum()
    if loss == "logistic":
        return F.softplus(-Y * P).sum()
    if loss == "cross_entropy":
        return (torch.logsumexp(P, dim=1) - P.gather(1, Y.view(-1, 1)).squeeze(1)).sum()
    raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def loss_grad(P: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
    """``∂/∂P Σ_i L(P_i, y_i)`` (same shape as ``P``)."""
    if loss == "squared":
        return P - Y
    if loss == "logistic":
        return -Y * torch.sigmoid(-Y * P)
    if loss == "cross_entropy":
        G = torch.softmax(P, dim=1)
        G[torch.arange(P.shape[0], device=P.device), Y] -= 1.0
        return G
    raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def loss_conjugate(U: torch.Tensor, Y: torch.Tensor, loss: str) -> torch.Tensor:
    """``Σ_i L*(U_i)`` — the Fenchel conjugate of the loss, summed (``+inf`` off its domain)."""
    if loss == "squared":
        return (0.5 * U**2 + U * Y).sum()
    if loss == "logistic":
        s = -U * Y
        tol = _dom_tol(U)
        if bool((s < -tol).any() or (s > 1 + tol).any()):
            return torch.tensor(math.inf, dtype=U.dtype, device=U.device)
        s = s.clamp(0.0, 1.0)
        return (torch.xlogy(s, s) + torch.xlogy(1 - s, 1 - s)).sum()
    if loss == "cross_entropy":
        Q = U.clone()
        Q[torch.arange(U.shape[0], device=U.device), Y] += 1.0
        tol = _dom_tol(U)
        if bool((Q < -tol).any()) or bool(((Q.sum(1) - 1).abs() > tol * U.shape[1]).any()):
            return torch.tensor(math.inf, dtype=U.dtype, device=U.device)
        Q = Q.clamp_min(0.0)
        return torch.xlogy(Q, Q).sum()
    raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def _dom_tol(U: torch.Tensor) -> float:
    """Rounding slack for the conjugate's domain test (1e-10 in float64, ~1e-4 in float32)."""
    return max(1e-10, 1e3 * torch.finfo(U.dtype).eps)


def loss_smoothness(loss: str) -> float:
    """Lipschitz constant of ``∇_P L`` (per sample): 1, ¼ and ½ for squared, logistic, CE."""
    return {"squared": 1.0, "logistic": 0.25, "cross_entropy": 0.5}[loss]


# --------------------------------------------------------------------------------------------
# gates


def sample_gates(
    X: torch.Tensor,
    num_patterns: int,
    scheme: str = "gaussian",
    seed: int = 0,
    include_ones: bool = True,
    dedupe: bool = True,
) -> tuple[torch.Tensor, dict]:
    r"""Sample gated-ReLU patterns ``D[i, j] = 1[u_{1j}ᵀ X_i u_{2j} ≥ 0]``.

    Args:
        X: ``(N, n, d)`` data.
        num_patterns: number of patterns ``m`` to return (before de-duplication).
        scheme: ``"gaussian"`` (``u_1 ~ N(0, I_n)``, ``u_2 ~ N(0, I_d)``) or ``"rademacher"``
            (entries ±1) — the sampling scheme is a parameter, as the paper does not fix it.
        seed: seed of the generator (results are reproducible).
        include_ones: make pattern 0 the all-ones pattern (the plain attention head).
        dedupe: drop repeated patterns (identical columns give duplicate groups).

    Returns:
        ``(D, info)`` with ``D`` of shape ``(N, m')`` in {0, 1} (``X``'s dtype) and ``info``
        holding ``u1`` ``(m', n)``, ``u2`` ``(m', d)`` (zeros for the all-ones pattern).
    """
    if X.ndim != 3:
        raise ProblemError(f"X must have shape (N, n, d), got {tuple(X.shape)}")
    if num_patterns < 1:
        raise ProblemError(f"num_patterns must be >= 1, got {num_patterns}")
    N, n, d = X.shape
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    k = num_patterns - (1 if include_ones else 0)
    if scheme == "gaussian":
        u1 = torch.randn(k, n, generator=g, dtype=torch.float64)
        u2 = torch.randn(k, d, generator=g, dtype=torch.float64)
    elif scheme == "rademacher":
        u1 = torch.randint(0, 2, (k, n), generator=g).double() * 2 - 1
        u2 = torch.randint(0, 2, (k, d), generator=g).double() * 2 - 1
    else:
        raise ProblemError(f"unknown gate scheme {scheme!r}; choose 'gaussian' or 'rademacher'")
    u1 = u1.to(X.device, X.dtype)
    u2 = u2.to(X.device, X.dtype)
    S = torch.einsum("jn,ind,jd->ij", u1, X, u2)
    D = (S >= 0).to(X.dtype)
    if include_ones:
        D = torch.cat([torch.ones(N, 1, dtype=X.dtype, device=X.device), D], dim=1)
        u1 = torch.cat([torch.zeros(1, n, dtype=X.dtype, device=X.device), u1])
        u2 = torch.cat([torch.zeros(1, d, dtype=X.dtype, device=X.device), u2])
    if dedupe and D.shape[1] > 1:
        _, first = _unique_columns(D)
        D, u1, u2 = D[:, first], u1[first], u2[first]
    return D, {"u1": u1, "u2": u2, "scheme": scheme, "seed": int(seed)}


def apply_gates(X: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Gate patterns of new data from sampled ``(u1 (m, n), u2 (m, d))``: ``1[u1ᵀ X_i u2 ≥ 0]``.

    A pattern with ``u1 = u2 = 0`` is the all-ones pattern."""
    S = torch.einsum("jn,ind,jd->ij", u1.to(X), X, u2.to(X))
    return (S >= 0).to(X.dtype)


def _unique_columns(D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen: dict[bytes, int] = {}
    keep = []
    cols = D.T.to(torch.uint8).cpu().numpy()
    for j, col in enumerate(cols):
        key = col.tobytes()
        if key not in seen and col.any():
            seen[key] = j
            keep.append(j)
    idx = torch.tensor(keep, dtype=torch.long, device=D.device)
    return D[:, idx], idx


# --------------------------------------------------------------------------------------------
# the problem


@dataclasses.dataclass
class ConvexProblem:
    r"""``min_Z Σ_i L(P_i(Z), y_i) + β Σ_{j,l,k} ‖(Z_{jl})_k‖_2`` with ``P_{il} = Σ_j D_ij ⟨Z_jl, X_i⟩``.

    Build with :func:`make_problem` (which validates and converts); fields:

    * ``X``: ``(N, n, d)`` samples of ``n`` tokens in ℝ^d (floating dtype of the problem).
    * ``Y``: targets — ``(N, c)`` floats for squared/logistic (±1 for logistic), ``(N,)`` long
      class indices for cross-entropy.
    * ``D``: ``(N, m)`` gate patterns in {0, 1}; ``None`` means one all-ones pattern (``m = 1``).
    * ``loss``, ``beta``, ``num_outputs`` (``c``).
    """

    X: torch.Tensor
    Y: torch.Tensor
    loss: str
    beta: float
    num_outputs: int
    D: torch.Tensor | None = None
    sparse: bool = False  # use a sparse (CSR) copy of X for A and Aᵀ (one-hot features)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # ---- shapes
    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def d(self) -> int:
        return self.X.shape[2]

    @property
    def m(self) -> int:
        return 1 if self.D is None else self.D.shape[1]

    @property
    def c(self) -> int:
        return self.num_outputs

    @property
    def z_shape(self) -> tuple[int, int, int, int]:
        return (self.m, self.c, self.n, self.d)

    @property
    def dtype(self) -> torch.dtype:
        return self.X.dtype

    @property
    def device(self) -> torch.device:
        return self.X.device

    def to(self, device=None, dtype=None) -> "ConvexProblem":
        dtype = dtype or self.dtype
        X = self.X.to(device=device, dtype=dtype)
        Y = self.Y.to(device=device) if self.loss == "cross_entropy" else self.Y.to(device=device, dtype=dtype)
        D = None if self.D is None else self.D.to(device=device, dtype=dtype)
        return dataclasses.replace(self, X=X, Y=Y, D=D, _cache={})

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.z_shape, dtype=self.dtype, device=self.device)

    def check_z(self, Z: torch.Tensor) -> torch.Tensor:
        Z = torch.as_tensor(Z, device=self.device)
        if Z.ndim == 2 and self.m == 1 and self.c == 1:
            Z = Z.reshape(1, 1, *Z.shape)
        if tuple(Z.shape) != self.z_shape:
            raise ProblemError(f"Z must have shape {self.z_shape} (m, c, n, d), got {tuple(Z.shape)}")
        _check_finite(Z, "Z")
        return Z.to(self.dtype)

    # ---- the linear operator A and its adjoint
    def _xflat(self) -> torch.Tensor:
        return self.X.reshape(self.N, self.n * self.d)

    def _sparse_ops(self) -> tuple[torch.Tensor, torch.Tensor]:
        if "xs" not in self._cache:
            Xf = self._xflat()
            with warnings.catch_warnings():  # "sparse CSR support is in beta" — we only use matmul
                warnings.simplefilter("ignore", UserWarning)
                self._cache["xs"] = Xf.to_sparse_csr()
                self._cache["xts"] = Xf.T.contiguous().to_sparse_csr()
        return self._cache["xs"], self._cache["xts"]

    def predict(self, Z: torch.Tensor) -> torch.Tensor:
        """Predictions ``P`` of shape ``(N, c)``."""
        Zf = Z.reshape(self.m * self.c, self.n * self.d)
        if self.sparse:
            H = self._sparse_ops()[0] @ Zf.T.contiguous()
        else:
            H = self._xflat() @ Zf.T  # (N, m c)
        if self.D is None:
            return H
        return torch.bmm(self.D.unsqueeze(1), H.view(self.N, self.m, self.c)).squeeze(1)

    def adjoint(self, R: torch.Tensor) -> torch.Tensor:
        """``Aᵀ R`` for ``R`` of shape ``(N, c)``; returns shape ``(m, c, n, d)``."""
        if self.D is None:
            G = R
        else:
            G = (self.D[:, :, None] * R[:, None, :]).reshape(self.N, self.m * self.c)
        if self.sparse:
            return (self._sparse_ops()[1] @ G.contiguous()).T.reshape(self.z_shape)
        return (G.T @ self._xflat()).reshape(self.z_shape)

    def operator_norm_sq(self, iters: int = 100, seed: int = 0) -> float:
        """``‖A‖²`` by power iteration on ``AᵀA`` (outputs decouple, so one output suffices)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        one = dataclasses.replace(self, num_outputs=1, Y=self.Y[:1], loss="squared", _cache=self._cache)
        v = torch.randn(one.z_shape, generator=g, dtype=torch.float64).to(self.device, self.dtype)
        v /= v.norm()
        lam = 0.0
        for _ in range(iters):
            w = one.adjoint(one.predict(v))
            lam_new = float(w.norm())
            if lam_new == 0.0:
                return 0.0
            v = w / lam_new
            if abs(lam_new - lam) <= 1e-10 * lam_new:
                lam = lam_new
                break
            lam = lam_new
        return lam

    # ---- objective pieces
    def group_norms(self, Z: torch.Tensor) -> torch.Tensor:
        """Row norms ``‖(Z_jl)_k‖_2``, shape ``(m, c, n)``."""
        return torch.linalg.vector_norm(Z, dim=-1)

    def penalty(self, Z: torch.Tensor) -> torch.Tensor:
        return self.beta * self.group_norms(Z).sum()

    def data_loss(self, Z: torch.Tensor) -> torch.Tensor:
        return loss_value(self.predict(Z), self.Y, self.loss)

    def objective(self, Z: torch.Tensor) -> float:
        """Convex objective ``Σ L + β Σ ‖rows‖`` as a Python float."""
        Z = self.check_z(Z)
        return float(self.data_loss(Z) + self.penalty(Z))

    def dual(self, Z: torch.Tensor, P: torch.Tensor | None = None) -> dict:
        """Primal value, dual value and duality gap at ``Z`` (see the module docstring).

        Returns a dict with ``primal``, ``dual``, ``gap`` (≥ 0 up to rounding),
        ``rel_gap = gap / max(|primal|, 1e-300)``, ``theta`` (dual scaling) and
        ``dual_norm`` (``max_g ‖(AᵀR)_g‖`` before scaling, ``≤ β`` at an optimum).
        """
        if P is None:
            P = self.predict(Z)
        f = loss_value(P, self.Y, self.loss)
        primal = float(f + self.penalty(Z))
        R = loss_grad(P, self.Y, self.loss)
        G = self.adjoint(R)
        dn = float(torch.linalg.vector_norm(G, dim=-1).max()) if G.numel() else 0.0
        theta = 1.0 if dn <= self.beta else (self.beta / dn)
        dual = -float(loss_conjugate(theta * R, self.Y, self.loss))
        gap = primal - dual
        return {
            "primal": primal,
            "dual": dual,
            "gap": gap,
            "rel_gap": gap / max(abs(primal), 1e-300),
            "theta": theta,
            "dual_norm": dn,
        }

    def lambda_max(self) -> float:
        """Smallest β for which ``Z = 0`` is optimal: ``max_g ‖(Aᵀ ∇L(0))_g‖``."""
        P0 = torch.zeros(self.N, self.c, dtype=self.dtype, device=self.device)
        G = self.adjoint(loss_grad(P0, self.Y, self.loss))
        return float(torch.linalg.vector_norm(G, dim=-1).max())


def make_problem(
    X,
    y,
    loss: str = "squared",
    beta: float = 1.0,
    gates=None,
    num_classes: int | None = None,
    dtype: torch.dtype = torch.float64,
    device=None,
    sparse: bool | None = None,
) -> ConvexProblem:
    """Validate inputs and build a :class:`ConvexProblem`.

    Args:
        X: ``(N, n, d)`` data (N samples of n tokens in ℝ^d).
        y: squared loss — ``(N,)`` (scalar output) or ``(N, c)``; logistic — the same shapes with
            entries in {−1, +1}; cross-entropy — ``(N,)`` integer class labels in ``[0, c)``.
        loss: ``"squared"``, ``"logistic"`` or ``"cross_entropy"``.
        beta: regularisation ``β ≥ 0``.
        gates: optional ``(N, m)`` gate patterns in {0, 1} (gated-ReLU program).
        num_classes: number of classes for cross-entropy (default ``max(y) + 1``, at least 2).
        dtype, device: floating dtype (float64 default) and device of the problem.
        sparse: apply ``A``/``Aᵀ`` through a sparse CSR copy of ``X`` (``None``: automatically
            when at most 5% of the entries are non-zero, e.g. one-hot token features, on CPU).

    Raises:
        ProblemError: on shape mismatch, negative/non-finite β, NaN/inf data, bad labels,
            unknown loss.
    """
    if loss not in LOSSES:
        raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if not dtype.is_floating_point:
        raise ProblemError(f"dtype must be a floating dtype, got {dtype}")
    beta = check_beta(beta)
    X = _as_tensor(X, "X", dtype, device)
    if X.ndim != 3:
        raise ProblemError(f"X must have shape (N, n, d) (samples, tokens, features), got {tuple(X.shape)}")
    N = X.shape[0]
    if N == 0 or X.shape[1] == 0 or X.shape[2] == 0:
        raise ProblemError(f"X must be non-empty in every dimension, got {tuple(X.shape)}")
    _check_finite(X, "X")
    y_t = torch.as_tensor(y, device=X.device)
    if y_t.shape[0:1] != (N,):
        raise ProblemError(f"y has {tuple(y_t.shape)[:1] or '()'} rows but X has N = {N} samples "
                           f"(y must have shape (N,) or (N, c))")
    if y_t.is_floating_point():
        _check_finite(y_t, "y")
    if loss == "cross_entropy":
        if y_t.ndim != 1:
            raise ProblemError(f"cross_entropy needs integer labels of shape (N,), got {tuple(y_t.shape)}")
        if y_t.is_floating_point():
            if not bool((y_t == y_t.round()).all()):
                raise ProblemError("cross_entropy labels must be integers")
        Y = y_t.long()
        if bool((Y < 0).any()):
            raise ProblemError("cross_entropy labels must be >= 0")
        c = int(num_classes) if num_classes is not None else max(int(Y.max()) + 1, 2)
        if c < 2:
            raise ProblemError(f"cross_entropy needs at least 2 classes, got {c}")
        if int(Y.max()) >= c:
            raise ProblemError(f"label {int(Y.max())} out of range for num_classes = {c}")
    else:
        if y_t.ndim == 1:
            Y = y_t.to(dtype).reshape(N, 1)
        elif y_t.ndim == 2:
            Y = y_t.to(dtype)
        else:
            raise ProblemError(f"y must have shape (N,) or (N, c), got {tuple(y_t.shape)}")
        if loss == "logistic" and not bool(((Y == 1) | (Y == -1)).all()):
            raise ProblemError("logistic loss needs labels in {-1, +1}")
        c = Y.shape[1]
        if num_classes is not None and num_classes != c:
            raise ProblemError(f"num_classes = {num_classes} but y has {c} output columns")
    D = None
    if gates is not None:
        D = _as_tensor(gates, "gates", dtype, X.device)
        if D.ndim != 2 or D.shape[0] != N:
            raise ProblemError(f"gates must have shape (N, m) = ({N}, m), got {tuple(D.shape)}")
        if D.shape[1] == 0:
            raise ProblemError("gates must have at least one pattern (m >= 1)")
        _check_finite(D, "gates")
        if not bool(((D == 0) | (D == 1)).all()):
            raise ProblemError("gates must contain only 0 and 1")
    if sparse is None:
        sparse = X.device.type == "cpu" and X.numel() >= 10_000 and float((X != 0).float().mean()) <= 0.05
    return ConvexProblem(X=X, Y=Y, loss=loss, beta=beta, num_outputs=c, D=D, sparse=bool(sparse))
