r"""The SVM solves of the synthetic experiments (once per data key, exponent and token
selection, cached), the selected tokens, and the divergence of the iterates to an SVM.

A solve that fails (infeasible α, solver error, unconverged certificate) is reported per seed
in an :class:`SVMOutcome`, never raised: one bad seed must not end a 100-seed run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attnopt.mirror import directional_bregman, lp_norm
from attnopt.runtime import torch_threads


@dataclass
class SVMOutcome:
    """One SVM solve: ``status`` is "ok", "unconverged" (certificate not converged) or
    "infeasible"/"error" (``solution`` is None then)."""

    status: str
    solution: np.ndarray | None
    objective: float = math.nan
    rel_gap: float = math.nan
    max_violation: float = math.nan
    seconds: float = 0.0
    message: str = ""
    active: np.ndarray | None = None

    @property
    def usable(self) -> bool:
        return self.solution is not None


def outcome(res) -> SVMOutcome:
    """The :class:`SVMOutcome` of an :class:`attnopt.svm.SVMResult`."""
    cert = res.certificate
    return SVMOutcome("ok" if cert.converged else "unconverged", np.asarray(res.solution, dtype=np.float64),
                      float(res.objective), float(cert.rel_gap), float(cert.max_violation),
                      message=str(getattr(res, "status", "")), active=np.asarray(res.active))


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class SVMCache:
    """Solve each (key, q, α) SVM once per run.  ``key`` identifies the data (e.g. the seed).

    Solves run with torch capped at ``num_threads`` (default 1) intra-op threads.
    """

    def __init__(self, solver: str = "auto", tol: float = 1e-6, num_threads: int | None = 1) -> None:
        self.solver, self.tol, self.num_threads = solver, tol, num_threads
        self._store: dict[tuple, SVMOutcome] = {}
        self._verdicts: dict[tuple, str] = {}
        self.seconds = 0.0
        self.solves = 0

    def _run(self, call: Callable[[], Any]) -> tuple[Any, SVMOutcome | None, float]:
        """``(result, None, seconds)``, or ``(None, an outcome saying why it failed, seconds)``."""
        from attnopt.svm import SVMInfeasibleError

        t0 = time.perf_counter()
        res, fail = None, None
        try:
            with torch_threads(self.num_threads):
                res = call()
        except SVMInfeasibleError as exc:
            fail = SVMOutcome("infeasible", None, message=str(exc))
        except Exception as exc:  # a solver failure is reported per seed, not fatal for the run
            fail = SVMOutcome("error", None, message=f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        self.solves += 1
        return res, fail, seconds

    def _cached(self, kind: str, key, q: float, alpha, call: Callable[[np.ndarray], Any]) -> SVMOutcome:
        a = np.asarray(alpha, dtype=np.int64)
        k = (kind, key, float(q), a.tobytes())
        if k not in self._store:
            res, fail, seconds = self._run(lambda: call(a))
            out = fail or outcome(res)
            out.seconds = seconds
            self._store[k] = out
        return self._store[k]

    def att(self, key, X, Z, alpha, q) -> SVMOutcome:
        """The ℓq-AttSVM of the tokens ``alpha`` (cached under ``(key, q, alpha)``)."""
        from attnopt.svm import att_svm

        return self._cached("att", key, q, alpha, lambda a: att_svm(
            as_numpy(X), as_numpy(Z), a, float(q), solver=self.solver, tol=self.tol))

    def nuclear(self, key, X, Z, alpha) -> SVMOutcome:
        """The nuclear-norm AttSVM of the tokens ``alpha`` (cached)."""
        from attnopt.svm import att_svm_nuclear

        return self._cached("nuc", key, 2.0, alpha, lambda a: att_svm_nuclear(
            as_numpy(X), as_numpy(Z), a, solver=self.solver, tol=self.tol))

    def decoder(self, key, X, Y, alpha, q) -> SVMOutcome:
        """The decoder ℓq-SVM of the tokens ``alpha`` (cached)."""
        from attnopt.svm import decoder_svm

        return self._cached("dec", key, q, alpha, lambda a: decoder_svm(
            as_numpy(X), as_numpy(Y), a, float(q), solver=self.solver, tol=self.tol))

    def verdict(self, key, X, Y, Z, v, alpha, p) -> tuple[SVMOutcome, str]:
        """Token-optimality verdict of ``alpha`` (global / local / neither) and its ℓp-AttSVM.

        :func:`attnopt.svm.token_optimality` solves the ℓp-AttSVM of ``alpha`` itself; that
        solution is stored in the cache, so the matched SVM is not solved twice.
        """
        from attnopt.svm import token_optimality

        a = np.asarray(alpha, dtype=np.int64)
        k = ("att", key, float(p), a.tobytes())
        if k not in self._verdicts:
            rep, fail, seconds = self._run(lambda: token_optimality(
                as_numpy(X), as_numpy(Y), as_numpy(Z), as_numpy(v), a, float(p), solver=self.solver,
                svm_tol=self.tol))
            if fail is not None:  # solver failure: no verdict, reported per seed
                out, verdict = fail, "unavailable"
            else:
                verdict = str(rep.verdict)
                out = (outcome(rep.svm) if rep.svm is not None
                       else SVMOutcome("infeasible", None, message=rep.message))
            out.seconds = seconds
            self._store.setdefault(k, out)
            self._verdicts[k] = verdict
        return self._store[k], self._verdicts[k]


def selected_tokens(X: torch.Tensor, W: torch.Tensor, Z: torch.Tensor) -> np.ndarray:
    """α = argmax_t x_tᵀ W z_i (the argmax of the final softmax), per sample (and seed)."""
    from attnopt.svm import alpha_from_softmax

    if X.ndim == 3:
        return np.asarray(as_numpy(torch.as_tensor(alpha_from_softmax(X, W, Z))), dtype=np.int64)
    return np.stack([selected_tokens(X[s], W[s], Z[s]) for s in range(X.shape[0])])


def divergence(svm: Sequence[SVMOutcome], Ws: torch.Tensor, p: float, drop_unconverged: bool) -> np.ndarray:
    """D_ψp(W^mm_s, W_s(k)) for every logged k and seed s, batched: (L, S); NaN where unusable."""
    L, S, d, _ = Ws.shape
    Wmm = torch.zeros((S, d, d), dtype=Ws.dtype)
    ok = np.zeros(S, dtype=bool)
    for s, o in enumerate(svm):
        if o.usable and not (drop_unconverged and o.status != "ok"):
            Wmm[s] = torch.from_numpy(o.solution)
            ok[s] = True
    D = directional_bregman(Wmm.unsqueeze(0), Ws, p, dim=(-2, -1), zero="nan").numpy()
    D[:, ~ok] = np.nan
    return D


def ray(o: SVMOutcome, iterates: torch.Tensor, p: float, dim) -> tuple[np.ndarray, np.ndarray]:
    """The SVM solution rescaled to each iterate's ℓp norm (the "ray", same shape as the
    iterates), and D_ψp(W^mm, iterate(k)) per logged k; NaN where the SVM is unusable."""
    L = iterates.shape[0]
    if not o.usable:
        return np.full(tuple(iterates.shape), np.nan), np.full(L, np.nan)
    mm = torch.from_numpy(o.solution)
    scale = (lp_norm(iterates, p, dim=dim) / float(lp_norm(mm, p))).numpy()
    rays = scale.reshape((L,) + (1,) * mm.ndim) * o.solution[None]
    return rays, directional_bregman(mm.unsqueeze(0), iterates, p, dim=dim, zero="nan").numpy()


def mean_std(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std over ``axis``, ignoring non-finite entries (NaN if none)."""
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = np.sum(np.isfinite(a), axis=axis)
        safe = np.where(np.isfinite(a), a, 0.0)
        mean = np.where(cnt > 0, safe.sum(axis=axis) / np.maximum(cnt, 1), np.nan)
        dev = np.where(np.isfinite(a), a - np.expand_dims(mean, axis), 0.0)
        std = np.where(cnt > 0, np.sqrt((dev**2).sum(axis=axis) / np.maximum(cnt, 1)), np.nan)
    return mean, std


__all__ = ["SVMOutcome", "SVMCache", "outcome", "as_numpy", "selected_tokens", "divergence", "ray", "mean_std"]
