r"""Validation, assembly and certificates for the attention SVMs (spec section 3).

Both SVMs have the form

.. math::  \min_W \|W\|_p \quad\text{s.t.}\quad \langle W, A_k\rangle \ge 1,\; k = 1..m,

with :math:`\|\cdot\|_p` the entrywise norm.  For the ℓp-AttSVM a constraint is a pair
``(i, t)``, ``t != alpha_i`` (or ``t`` in the neighbour set of sample ``i``), and
:math:`A_{it} = (x_{i\alpha_i} - x_{it}) z_i^\top` is rank one.  For the decoder ℓp-SVM a
constraint is a sample ``i`` and :math:`A_i = Y_i x_{i\alpha_i}`.

The constraints are held *packed*: ``rows`` (m,) sample index and ``cols`` (m,) token index of
each constraint, ``D`` (m, d) the differences :math:`x_{i\alpha_i} - x_{it}`.  The two
operators needed by every solver are then two matrix products (no dense m × d² matrix):

* ``A(W)_k = D_k · (W z_{i_k})``           — ``V = Z Wᵀ`` (n×d), then a row-wise dot product;
* ``Aᵀ(λ) = Σ_k λ_k D_k z_{i_k}ᵀ = Uᵀ Z``  with ``U = Σ_{k: i_k = i} λ_k D_k`` (index_add).

Certificate (valid for any solver).  With ``q = p/(p−1)`` the Lagrange dual is
``max Σλ s.t. λ ≥ 0, ‖Aᵀλ‖_q ≤ 1``.  Any ``λ ≥ 0`` with ``Aᵀλ ≠ 0`` rescaled to
``λ/‖Aᵀλ‖_q`` is dual feasible, so ``Σλ / ‖Aᵀλ‖_q`` is a lower bound on the optimum (weak
duality: for feasible W, ``Σλ ≤ Σ λ_k⟨W, A_k⟩ = ⟨W, Aᵀλ⟩ ≤ ‖W‖_p‖Aᵀλ‖_q``).  Any W with
all margins positive, rescaled to ``W / min_k⟨W, A_k⟩``, is primal feasible, so its norm is
an upper bound.  ``gap = primal − dual ≥ 0`` bounds the suboptimality of the returned W.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from attnopt.errors import UserError
from attnopt.mirror import check_p, dual_exponent, lp_norm

SOLVERS = ("auto", "fast", "cvxpy")


class SVMInputError(UserError, ValueError):
    """Malformed input or option of an SVM (wrong shape, NaN, α out of range, bad tolerance …)."""


class SVMInputTypeError(SVMInputError, TypeError):
    """Malformed input of the wrong kind (e.g. non-integer alpha): both a ValueError and a TypeError."""


class SVMInfeasibleError(UserError, ValueError):
    """The SVM has no feasible point.  ``.samples`` lists the sample indices responsible."""

    def __init__(self, message: str, samples: Sequence[int] = (), constraints: Sequence[tuple[int, int]] = ()):
        super().__init__(message)
        self.samples = [int(s) for s in samples]
        self.constraints = [(int(a), int(b)) for a, b in constraints]


@dataclass(frozen=True)
class Certificate:
    """Honest optimality certificate of an SVM solution (see the module docstring).

    ``primal``: ‖W‖_p of the returned solution; ``dual``: the lower bound Σλ/‖Aᵀλ‖_q from the
    multipliers held; ``gap = primal − dual``; ``rel_gap = gap / primal``; ``max_violation``:
    max_k max(0, 1 − ⟨W, A_k⟩) of the returned W.  ``converged``: rel_gap ≤ tol and
    max_violation ≤ ``viol_tol``.
    """

    primal: float
    dual: float
    gap: float
    rel_gap: float
    max_violation: float
    iterations: int
    time_s: float
    solver: str
    converged: bool


@dataclass(frozen=True)
class SVMResult:
    """Solution of an attention SVM.

    ``solution``: W (d, d) or v (d,); ``objective``: its p-norm; ``status``: "optimal",
    "max_iter", "inaccurate", ...; ``active`` (n, T) bool — constraint tight within
    ``active_tol`` (False at ``t = alpha_i`` and where there is no constraint); ``margins``
    (n, T) — constraint values (NaN where there is no constraint); ``dual`` (n, T) —
    multipliers λ normalised to the dual-feasible scale of the certificate (0 where there is no
    constraint).  For the decoder SVM the (n, T) arrays are (n,) arrays (one constraint per
    sample).
    """

    solution: np.ndarray
    objective: float
    status: str
    active: np.ndarray
    margins: np.ndarray
    dual: np.ndarray
    certificate: Certificate
    p: float
    alpha: np.ndarray
    nuclear: bool = False
    info: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def converged(self) -> bool:
        return self.certificate.converged

    def neighbors(self) -> list[np.ndarray]:
        """Active constraint token indices per sample (the SVM-neighbour sets 𝒯_i)."""
        if self.active.ndim == 1:
            raise AttributeError("neighbors() is only defined for the attention SVM")
        return [np.flatnonzero(row) for row in self.active]


# --------------------------------------------------------------------------------------
# input validation


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_complex():
            raise SVMInputTypeError(f"{name} must be real, got a complex tensor")
        if x.dtype == torch.bool:
            x = x.to(torch.int64)
        return x.numpy() if not x.is_floating_point() or x.dtype == torch.float64 else x.to(torch.float64).numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - defensive
        raise SVMInputTypeError(f"{name} must be array-like, got {type(x).__name__}") from exc
    if arr.dtype == object:
        raise SVMInputTypeError(f"{name} must be a numeric array, got an object array (ragged input?)")
    if np.iscomplexobj(arr):
        raise SVMInputTypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    return arr


def as_float_array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = _to_numpy(x, name)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise SVMInputTypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != ndim:
        raise SVMInputError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise SVMInputError(f"{name} contains NaN or inf (first at index {tuple(int(b) for b in bad)})")
    return arr


def as_alpha(alpha: Any, n: int, T: int) -> np.ndarray:
    arr = _to_numpy(alpha, "alpha")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise SVMInputError(f"alpha must have shape ({n},) (one selected token per sample), got shape {arr.shape}")
    if arr.dtype == bool:
        raise SVMInputTypeError("alpha must hold integer token indices, got booleans")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad_vals = arr[~np.isfinite(arr) | (arr != np.round(arr))][:5]
            raise SVMInputTypeError(f"alpha must hold integer token indices, got non-integer values {bad_vals}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise SVMInputTypeError(f"alpha must hold integer token indices, got dtype {arr.dtype}")
    a = arr.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= T))
    if bad.size:
        raise SVMInputError(
            f"alpha out of range: tokens are indexed 0..{T - 1}, but alpha[{int(bad[0])}] = {int(a[bad[0]])} "
            f"({bad.size} sample(s) out of range: {bad[:10].tolist()})"
        )
    return a


def check_solver(solver: str) -> str:
    if not isinstance(solver, str) or solver.lower() not in SOLVERS:
        raise SVMInputError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    return solver.lower()


def check_tol(tol: float, name: str = "tol", *, zero_ok: bool = False) -> float:
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise SVMInputError(f"{name} must be a positive finite number, got {tol!r}") from None
    if not math.isfinite(t) or t < 0 or (t == 0 and not zero_ok):
        raise SVMInputError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite number, got {tol!r}")
    return t


def check_options(*, tol: float, active_tol: float, viol_tol: float, max_iter: Any, time_limit: Any,
                  threads: Any) -> tuple:
    """The solver options, checked: ``(tol, active_tol, viol_tol, max_iter, time_limit, threads)``."""
    tol, active_tol = check_tol(tol), check_tol(active_tol, "active_tol")
    viol_tol = check_tol(viol_tol, "viol_tol", zero_ok=True)
    for name, val in (("max_iter", max_iter), ("threads", threads)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1):
            raise SVMInputError(f"{name} must be a positive integer or None, got {val!r}")
    if time_limit is not None:
        time_limit = check_tol(time_limit, "time_limit")
    return tol, active_tol, viol_tol, max_iter, time_limit, threads


def _neighbor_mask(neighbors: Any, alpha: np.ndarray, n: int, T: int) -> np.ndarray:
    """(n, T) bool mask of the constraints."""
    if neighbors is None:
        mask = np.ones((n, T), dtype=bool)
        mask[np.arange(n), alpha] = False
        return mask
    is_bool = (isinstance(neighbors, torch.Tensor) and neighbors.dtype == torch.bool) or (
        isinstance(neighbors, np.ndarray) and neighbors.dtype == bool)
    if is_bool:
        mask = np.asarray(neighbors.detach().cpu().numpy() if isinstance(neighbors, torch.Tensor) else neighbors,
                          dtype=bool)
        if mask.shape != (n, T):
            raise SVMInputError(f"a boolean neighbors mask must have shape ({n}, {T}), got {mask.shape}")
        bad = np.flatnonzero(mask[np.arange(n), alpha])
        if bad.size:
            raise SVMInputError(f"neighbors of sample {int(bad[0])} contain its selected token alpha={int(alpha[bad[0]])}")
        return mask.copy()
    try:
        seq = list(neighbors)
    except TypeError:
        raise SVMInputTypeError(
            "neighbors must be None, an (n, T) boolean mask, or a sequence of n index collections") from None
    if len(seq) != n:
        raise SVMInputError(f"neighbors must hold one index collection per sample (n={n}), got {len(seq)}")
    mask = np.zeros((n, T), dtype=bool)
    for i, nb in enumerate(seq):  # one entry per sample: a loop over samples, not constraints
        idx = _to_numpy(nb, f"neighbors[{i}]")
        idx = np.atleast_1d(idx)
        if idx.size == 0:
            continue
        if idx.ndim != 1:
            raise SVMInputError(f"neighbors[{i}] must be a 1-D collection of token indices, got shape {idx.shape}")
        if idx.dtype == bool or not (np.issubdtype(idx.dtype, np.integer) or (
            np.issubdtype(idx.dtype, np.floating) and np.all(idx == np.round(idx)))):
            raise SVMInputTypeError(f"neighbors[{i}] must hold integer token indices, got {idx!r}")
        idx = idx.astype(np.int64)
        if np.any((idx < 0) | (idx >= T)):
            out = idx[(idx < 0) | (idx >= T)].tolist()
            raise SVMInputError(f"neighbors[{i}] has token indices out of range 0..{T - 1}: {out}")
        if np.any(idx == alpha[i]):
            raise SVMInputError(f"neighbors[{i}] contains the selected token alpha[{i}] = {int(alpha[i])}")
        mask[i, idx] = True
    return mask


# --------------------------------------------------------------------------------------
# the packed problem


@dataclass
class Problem:
    """Packed constraints ``<W, A_k> >= 1`` of an attention SVM (float64, numpy)."""

    kind: str  # "att" or "decoder"
    p: float
    n: int
    T: int
    d: int
    alpha: np.ndarray
    mask: np.ndarray  # (n, T) bool (att) or (n,) bool (decoder)
    rows: np.ndarray  # (m,) sample index
    cols: np.ndarray  # (m,) token index (att); zeros (decoder)
    D: np.ndarray  # (m, d): x_{i alpha} - x_{it} (att) or Y_i x_{i alpha} (decoder), rescaled
    Z: Optional[np.ndarray]  # (n, d) queries (att) or None (decoder), rescaled
    #: the constraints are held divided by 2^scale_exp (D and Z each by a power of two, so
    #: exactly): the solvers see data of order one, and the solution is W' · 2^-scale_exp
    scale_exp: int = 0

    @property
    def m(self) -> int:
        return int(self.rows.shape[0])

    @property
    def q(self) -> float:
        return dual_exponent(self.p)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.d, self.d) if self.kind == "att" else (self.d,)

    # numpy operators (the fast solver has torch versions of the same two products)
    def A(self, W: np.ndarray) -> np.ndarray:
        """Constraint values ⟨W, A_k⟩, shape (m,)."""
        if self.kind == "att":
            V = self.Z @ W.T  # (n, d): row i is W z_i
            return np.einsum("kd,kd->k", self.D, V[self.rows])
        return self.D @ W

    def AT(self, lam: np.ndarray) -> np.ndarray:
        """Σ_k λ_k A_k."""
        if self.kind == "att":
            return self.U(lam).T @ self.Z
        return self.D.T @ lam

    def U(self, lam: np.ndarray) -> np.ndarray:
        """Per-sample sums U_i = Σ_{k: i_k = i} λ_k D_k, shape (n, d) (rows are sorted)."""
        U = np.zeros((self.n, self.d))
        if self.m:
            uniq, starts = np.unique(self.rows, return_index=True)
            U[uniq] = np.add.reduceat(lam[:, None] * self.D, starts, axis=0)
        return U

    def dense(self) -> np.ndarray:
        """The dense (m, d·d) constraint matrix (row k = vec(A_k), row-major) — cvxpy baseline only."""
        if self.kind == "att":
            return np.einsum("kd,ke->kde", self.D, self.Z[self.rows]).reshape(self.m, self.d * self.d)
        return self.D

    def unpack(self, values: np.ndarray, fill: float) -> np.ndarray:
        """Per-constraint values (m,) to an (n, T) array (att) or (n,) array (decoder)."""
        out = np.full(self.mask.shape, fill, dtype=np.result_type(values, type(fill)))
        if self.kind == "att":
            out[self.rows, self.cols] = values
        else:
            out[self.rows] = values
        return out


def _check_p(p) -> float:
    try:
        return check_p(p)
    except TypeError as exc:
        raise SVMInputTypeError(str(exc)) from None


def att_problem(X, Z, alpha, p, neighbors=None) -> Problem:
    """Validate the ℓp-AttSVM inputs and assemble the packed constraints (vectorised)."""
    p = _check_p(p)
    X = as_float_array(X, "X", 3)
    n, T, d = X.shape
    if n == 0:
        raise SVMInputError("empty input: X has no samples (n = 0)")
    if T < 2:
        raise SVMInputError(f"X must have at least 2 tokens per sample to separate (T = {T})")
    if d == 0:
        raise SVMInputError("empty input: X has token dimension d = 0")
    Z = as_float_array(Z, "Z", 2)
    if Z.shape != (n, d):
        raise SVMInputError(f"Z must have shape (n, d) = ({n}, {d}) to match X {X.shape}, got {Z.shape}")
    alpha = as_alpha(alpha, n, T)
    mask = _neighbor_mask(neighbors, alpha, n, T)
    rows, cols = np.nonzero(mask)
    with np.errstate(over="ignore"):
        Dfull = X[np.arange(n), alpha][:, None, :] - X  # (n, T, d)
    D, eD = _unit_scale(Dfull[rows, cols], "X (differences of its tokens)")
    Z, eZ = _unit_scale(Z, "Z")
    prob = Problem("att", p, n, T, d, alpha, mask, rows.astype(np.int64), cols.astype(np.int64), D, Z, eD + eZ)
    _check_trivially_infeasible(prob)
    return prob


def _unit_scale(A: np.ndarray, name: str) -> tuple[np.ndarray, int]:
    """``(A / 2^e, e)`` with 2^e the power of two at the largest magnitude (exact: only the
    exponents change), so that a problem's data are of order one whatever their units; the
    SVM is homogeneous (W* scales by 1/c when A does by c)."""
    if not np.all(np.isfinite(A)):
        raise SVMInputError(f"{name} overflows float64 (entries near 1.8e308); rescale the input")
    mx = float(np.max(np.abs(A))) if A.size else 0.0
    if mx == 0.0:
        return A, 0
    e = math.frexp(mx)[1]
    return np.ldexp(A, -e), e


def decoder_problem(X, Y, alpha, p) -> Problem:
    """Validate the decoder ℓp-SVM inputs: constraints Y_i x_{iα_i}ᵀ v ≥ 1."""
    p = _check_p(p)
    X = as_float_array(X, "X", 3)
    n, T, d = X.shape
    if n == 0:
        raise SVMInputError("empty input: X has no samples (n = 0)")
    if T < 1 or d == 0:
        raise SVMInputError(f"empty input: X has shape {X.shape}")
    Y = as_float_array(Y, "Y", 1)
    if Y.shape != (n,):
        raise SVMInputError(f"Y must have shape ({n},) to match X {X.shape}, got {Y.shape}")
    if np.any(Y == 0):
        raise SVMInputError(f"Y must be nonzero labels (±1), got Y[{int(np.flatnonzero(Y == 0)[0])}] = 0")
    bad = np.flatnonzero(np.abs(Y) != 1)
    if bad.size:
        raise SVMInputError(f"Y must hold labels -1 or +1, got Y[{int(bad[0])}] = {Y[bad[0]]:g}")
    alpha = as_alpha(alpha, n, T)
    D, eD = _unit_scale(Y[:, None] * X[np.arange(n), alpha], "X")
    rows = np.arange(n, dtype=np.int64)
    prob = Problem("decoder", p, n, T, d, alpha, np.ones(n, dtype=bool), rows, np.zeros(n, dtype=np.int64), D, None,
                   eD)
    zero = np.flatnonzero(np.all(D == 0, axis=1))
    if zero.size:
        raise SVMInfeasibleError(
            f"decoder SVM infeasible: the selected token x[i, alpha_i] is zero for sample(s) {zero[:20].tolist()} "
            "(constraint 0 >= 1)", samples=zero.tolist())
    return prob


def _check_trivially_infeasible(prob: Problem) -> None:
    """Constraints whose matrix A_k vanishes (duplicate selected token, or z_i = 0): 0 >= 1.
    The data are held at unit scale, so the threshold is relative to the largest entries."""
    if prob.m == 0:
        return
    dz = np.linalg.norm(prob.D, axis=1) * np.linalg.norm(prob.Z[prob.rows], axis=1)
    bad = dz <= 1e-13
    if np.any(bad):
        ks = np.flatnonzero(bad)
        samples = np.unique(prob.rows[ks])
        pairs = [(int(prob.rows[k]), int(prob.cols[k])) for k in ks[:10]]
        zq = [int(i) for i in samples if not np.any(prob.Z[i])]
        why = []
        if len(zq) < samples.size:
            why.append("the selected token x[i, alpha_i] equals another token x[i, t]")
        if zq:
            why.append(f"the query z_i is zero for sample(s) {zq[:10]}")
        raise SVMInfeasibleError(
            f"attention SVM infeasible for sample(s) {samples[:20].tolist()}: " + " and ".join(why)
            + f", so the constraint (x_ia - x_it)^T W z_i >= 1 reads 0 >= 1 (constraints (i, t): {pairs})",
            samples=samples.tolist(), constraints=pairs)


# --------------------------------------------------------------------------------------
# certificate


def certify(prob: Problem, W: np.ndarray, lam: np.ndarray, *, tol: float, viol_tol: float = 1e-7,
            rescale: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Compute the certificate of (W, λ) from scratch in float64.

    Returns ``(W_out, margins, lam_scaled, stats)`` where ``W_out`` is W rescaled to
    ``W / min_k margin_k`` (exactly feasible up to rounding) when ``rescale`` and the smallest
    margin is positive; ``lam_scaled = λ / ‖Aᵀλ‖_q`` is dual feasible.
    """
    q = prob.q
    W = np.asarray(W, dtype=np.float64)
    margins = prob.A(W)
    if prob.m == 0:
        Wz = np.zeros_like(W)
        return Wz, margins, np.zeros(0), dict(primal=0.0, dual=0.0, gap=0.0, rel_gap=0.0, max_violation=0.0,
                                               converged=True)
    mmin = float(margins.min())
    if rescale and mmin > 0:
        W = W / mmin
        margins = margins / mmin
    primal = float(lp_norm(W, prob.p))
    max_violation = float(max(0.0, 1.0 - float(margins.min())))
    lam = np.clip(np.asarray(lam, dtype=np.float64), 0.0, None)
    G = prob.AT(lam)
    gq = float(lp_norm(G, q)) if np.any(G) else 0.0
    if gq > 0 and lam.sum() > 0:
        lam_s = lam / gq
        dual = float(lam_s.sum())
    else:
        lam_s = np.zeros_like(lam)
        dual = 0.0
    if float(margins.min()) > 0:
        gap = primal - dual
        rel_gap = gap / primal if primal > 0 else math.inf
    else:  # W could not be rescaled to feasibility: no upper bound, no gap
        gap = rel_gap = math.inf
    if max_violation > viol_tol:
        rel_gap_ok = False
    else:
        rel_gap_ok = rel_gap <= tol
    return W, margins, lam_s, dict(primal=primal, dual=dual, gap=gap, rel_gap=rel_gap,
                                   max_violation=max_violation, converged=bool(rel_gap_ok))


def make_result(prob: Problem, W: np.ndarray, lam: np.ndarray, *, tol: float, status: str, iterations: int,
                time_s: float, solver: str, active_tol: float, viol_tol: float = 1e-7, nuclear: bool = False,
                stats: Optional[dict] = None, info: Optional[dict] = None) -> SVMResult:
    if stats is None:
        W, margins, lam_s, stats = certify(prob, W, lam, tol=tol, viol_tol=viol_tol)
    else:  # a caller that certified itself (e.g. nuclear norm) passes its own stats
        margins = prob.A(W)
        lam_s = lam
    cert = Certificate(primal=stats["primal"], dual=stats["dual"], gap=stats["gap"], rel_gap=stats["rel_gap"],
                       max_violation=stats["max_violation"], iterations=int(iterations), time_s=float(time_s),
                       solver=solver, converged=bool(stats["converged"]))
    if status == "optimal" and not cert.converged:
        status = "inaccurate"
    elif cert.converged and status in ("stalled", "inaccurate"):
        status = "optimal"  # stopped on its own with the certificate within tolerance
    active_k = margins <= 1.0 + active_tol
    if prob.scale_exp:  # back to the user's units (margins, gaps and statuses are unchanged)
        e = prob.scale_exp
        W, lam_s = _unscaled(W, e), np.ldexp(lam_s, -e)
        cert = dataclasses.replace(cert, primal=float(np.ldexp(cert.primal, -e)), dual=float(np.ldexp(cert.dual, -e)),
                                   gap=float(np.ldexp(cert.gap, -e)))
    return SVMResult(
        solution=W,
        objective=cert.primal,
        status=status,
        active=prob.unpack(active_k, False).astype(bool),
        margins=prob.unpack(margins, np.nan),
        dual=prob.unpack(lam_s, 0.0),
        certificate=cert,
        p=prob.p,
        alpha=prob.alpha.copy(),
        nuclear=nuclear,
        info=dict(info or {}),
    )


def _unscaled(W: np.ndarray, e: int) -> np.ndarray:
    """``W · 2^-e``, or an error when that leaves float64 (the solution's norm itself is not
    representable: the input's units are too extreme)."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.ldexp(W, -e)
    mx = float(np.max(np.abs(out))) if out.size else 0.0
    if not math.isfinite(mx) or (np.any(W) and mx < np.finfo(np.float64).tiny):
        raise SVMInputError(f"the SVM solution has entries near 2^{-e} (about 1e{round(-e * math.log10(2))}), "
                            "outside float64; rescale X or Z towards unit size")
    return out
