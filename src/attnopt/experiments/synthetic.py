r"""Synthetic experiments E1 (ℓp-AttGD, W only) and E2 (ℓp-JointGD, W and v).

Each experiment is a plain function ``run_x(config, out=None, progress=None, **overrides)``:
the config is a validated dataclass (or a mapping; unknown keys and bad values raise
:class:`ConfigError`), the return value a result dataclass holding the data, and when ``out``
is given a run folder (config.json, summary.json, CSV histories, PNG figures, report.md) is
written there.  Nothing here prints.

* :func:`run_convergence` — E1: all seeds of one p are trained as *one* batched computation
  (leading seed dimension), the iterates W(k) are stored on a log-spaced grid, and after
  training the ℓp-AttSVM of the selected tokens α = argmax of the final scores is solved per
  seed (cached) and the directional Bregman divergence
  :math:`D_{\psi_p}(W^{mm}/\|W^{mm}\|_p,\; W(k)/\|W(k)\|_p)` is evaluated, batched, on the grid.
  Every seed also gets a token-optimality verdict (global / local / neither).  The rate of
  :math:`D` is fitted against :math:`\log k` (claim 2).
* :func:`run_matrix` — E1-matrix: every (p trained, q SVM) with the *same* α (from the p-run)
  and the same W(0); reuses the convergence trajectories (only extra SVM solves).
* :func:`run_path` — E1-path: two entries of W(k) against the rescaled ℓp-AttSVM ray.
* :func:`run_joint` — E2: joint training on the spec's 2-sample instance; the selected tokens
  must be p=1.75 → (1,0), p=2 → (1,0), p=3 → (0,0).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from attnopt.config import ConfigError, config_from_dict
from attnopt.data.synthetic import (INITS, QUERIES, SyntheticData, convergence_batch, convergence_instance,
                                    joint_instance)
from attnopt.experiments._batched_md import DEFAULT_EPS, Trajectory, log_grid, train_md
from attnopt.mirror import check_p, directional_bregman, lp_norm

#: Iterations of the published protocol per p (E1 and E2).
PROTOCOL_ITERATIONS: dict[float, int] = {1.75: 1500, 2.0: 2000, 3.0: 20000}
#: Tokens (0-indexed, one per sample) the spec reports for E2.
SPEC_JOINT_TOKENS: dict[float, tuple[int, int]] = {1.75: (1, 0), 2.0: (1, 0), 3.0: (0, 0)}
#: The spec's read-off of the authors' p = 3 matrix panel at 20,000 iterations (q -> D).
SPEC_MATRIX_P3: dict[float, float] = {3.0: 0.005, 2.0: 0.18, 1.75: 0.21}
SOLVERS = ("auto", "fast", "cvxpy")

#: progress(label, advance, total): called with the work done since the last call.
ProgressFn = Callable[[str, int, int], None]


def default_iterations(p: float) -> int:
    """Iterations for p: the protocol's where defined (1.75 → 1,500; 2 → 2,000; 3 → 20,000).

    Elsewhere: 1,500 for p < 1.75; geometric interpolation between the protocol points for
    1.75 < p < 3 (rounded to 100); 20,000 for p > 3 (a compute cap, not a convergence claim).
    """
    p = check_p(p)
    for k, v in PROTOCOL_ITERATIONS.items():
        if math.isclose(p, k, rel_tol=0, abs_tol=1e-12):
            return v
    pts = sorted(PROTOCOL_ITERATIONS.items())
    if p <= pts[0][0]:
        return pts[0][1]
    if p >= pts[-1][0]:
        return pts[-1][1]
    for (p0, k0), (p1, k1) in zip(pts, pts[1:]):
        if p0 <= p <= p1:
            t = (p - p0) / (p1 - p0)
            return int(round(math.exp((1 - t) * math.log(k0) + t * math.log(k1)) / 100.0) * 100)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------
# config validation helpers


def _err(cls: type, msg: str) -> ConfigError:
    return ConfigError(f"{cls.__name__}: {msg}")


def _int(cls, name, val, lo=None):
    if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
        if isinstance(val, float) and val.is_integer():
            val = int(val)
        else:
            raise _err(cls, f"{name} must be an integer, got {val!r}")
    val = int(val)
    if lo is not None and val < lo:
        raise _err(cls, f"{name} must be >= {lo}, got {val}")
    return val


def _float(cls, name, val, lo=None, lo_open=True):
    if isinstance(val, bool) or not isinstance(val, (int, float, np.floating, np.integer)):
        raise _err(cls, f"{name} must be a number, got {val!r}")
    val = float(val)
    if not math.isfinite(val):
        raise _err(cls, f"{name} must be finite, got {val}")
    if lo is not None and (val <= lo if lo_open else val < lo):
        raise _err(cls, f"{name} must be {'>' if lo_open else '>='} {lo}, got {val}")
    return val


def _p(cls, name, val):
    v = _float(cls, name, val)
    try:
        return check_p(v)
    except ValueError as exc:
        raise _err(cls, f"{name}: {exc}") from None


def _ps(cls, name, vals, allow_empty=False):
    if isinstance(vals, (int, float)) and not isinstance(vals, bool):
        vals = (vals,)
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
        raise _err(cls, f"{name} must be a sequence of exponents p > 1, got {vals!r}")
    out = tuple(_p(cls, f"{name}[{i}]", v) for i, v in enumerate(vals))
    if not out and not allow_empty:
        raise _err(cls, f"{name} must not be empty")
    if len(set(out)) != len(out):
        raise _err(cls, f"{name} has duplicates: {out}")
    return out


def _choice(cls, name, val, choices):
    if val not in choices:
        raise _err(cls, f"{name} must be one of {choices}, got {val!r}")
    return val


def _iterations(cls, val, ps):
    if val is None:
        return None
    if isinstance(val, Mapping):
        out = {}
        for k, v in val.items():
            out[_p(cls, "iterations key", float(k) if isinstance(k, str) else k)] = _int(cls, f"iterations[{k}]", v, 0)
        missing = [p for p in ps if not any(math.isclose(p, k, abs_tol=1e-12) for k in out)]
        if missing:
            raise _err(cls, f"iterations has no entry for p = {missing} (give an int, a full mapping, or None)")
        return out
    return _int(cls, "iterations", val, 1)


class _Config:
    """Mixin: construction from a mapping with unknown-key errors, and overrides."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, **overrides: Any):
        return config_from_dict(cls, data, **overrides)

    def replace(self, **overrides: Any):
        return type(self).from_dict(dataclasses.asdict(self), **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(config, cls, overrides):
    if config is None:
        return cls.from_dict(overrides)
    if isinstance(config, Mapping):
        return cls.from_dict(config, **overrides)
    if isinstance(config, cls):
        return config.replace(**overrides) if overrides else config
    if dataclasses.is_dataclass(config) and issubclass(cls, type(config)):
        return cls.from_dict(dataclasses.asdict(config), **overrides)
    raise ConfigError(f"expected a {cls.__name__} or a mapping, got {type(config).__name__}")


@dataclass(frozen=True)
class ConvergenceConfig(_Config):
    """E1 configuration (defaults = the spec's protocol).

    ``iterations``: None → :func:`default_iterations` per p; an int for every p; or a mapping
    p → int.  ``seeds``: explicit seeds, else ``seed_start .. seed_start + n_seeds − 1``.
    ``init``: W(0) = 0 ("zeros") or N(0, init_std²) entries ("normal"; the published aggregate
    runs use std 1, the single-seed path run W(0) = 0).  ``query``: z_i its own random vector
    ("random", published) or the first token ("first").  ``n_log``: size of the log-spaced grid
    on which W(k) is stored.  ``fit_from``: first iteration used by the rate fit (None → where
    the mean max-softmax reaches 0.99, see :func:`fit_window`).  ``drop_unconverged``: exclude
    seeds whose SVM certificate did not converge from the means (infeasible seeds are always
    excluded).  ``eps``: the ε of the normalised step (default float64 machine epsilon, as
    published; see :mod:`attnopt.experiments._batched_md` for its effect).
    """

    ps: tuple[float, ...] = (1.75, 2.0, 3.0)
    iterations: Any = None
    seeds: tuple[int, ...] | None = None
    n_seeds: int = 100
    seed_start: int = 1
    n: int = 6
    T: int = 8
    d: int = 10
    lr: float = 0.1
    normalize: bool = True
    eps: float = DEFAULT_EPS
    init: str = "normal"
    init_std: float = 1.0
    query: str = "random"
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 200
    fit_from: int | None = None
    drop_unconverged: bool = True
    verdicts: bool = True

    def __post_init__(self) -> None:
        cls = type(self)
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("ps", _ps(cls, "ps", self.ps))
        s("iterations", _iterations(cls, self.iterations, self.ps))
        if self.seeds is not None:
            if isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence):
                raise _err(cls, f"seeds must be a sequence of integers, got {self.seeds!r}")
            seeds = tuple(_int(cls, f"seeds[{i}]", v, 0) for i, v in enumerate(self.seeds))
            if not seeds:
                raise _err(cls, "seeds must not be empty")
            if len(set(seeds)) != len(seeds):
                raise _err(cls, f"seeds has duplicates: {seeds}")
            s("seeds", seeds)
        s("n_seeds", _int(cls, "n_seeds", self.n_seeds, 1))
        s("seed_start", _int(cls, "seed_start", self.seed_start, 0))
        s("n", _int(cls, "n", self.n, 1))
        s("T", _int(cls, "T", self.T, 2))
        s("d", _int(cls, "d", self.d, 1))
        s("lr", _float(cls, "lr", self.lr, 0.0))
        if not isinstance(self.normalize, bool):
            raise _err(cls, f"normalize must be a bool, got {self.normalize!r}")
        s("eps", _float(cls, "eps", self.eps, 0.0, lo_open=False))
        _choice(cls, "init", self.init, INITS)
        s("init_std", _float(cls, "init_std", self.init_std, 0.0, lo_open=False))
        _choice(cls, "query", self.query, QUERIES)
        _choice(cls, "solver", self.solver, SOLVERS)
        s("tol", _float(cls, "tol", self.tol, 0.0))
        s("n_log", _int(cls, "n_log", self.n_log, 2))
        if self.fit_from is not None:
            s("fit_from", _int(cls, "fit_from", self.fit_from, 2))
        for b in ("drop_unconverged", "verdicts"):
            if not isinstance(getattr(self, b), bool):
                raise _err(cls, f"{b} must be a bool, got {getattr(self, b)!r}")

    def seed_list(self) -> tuple[int, ...]:
        if self.seeds is not None:
            return self.seeds
        return tuple(range(self.seed_start, self.seed_start + self.n_seeds))

    def iterations_for(self, p: float) -> int:
        if self.iterations is None:
            return default_iterations(p)
        if isinstance(self.iterations, dict):
            for k, v in self.iterations.items():
                if math.isclose(k, p, abs_tol=1e-12):
                    return v
            raise KeyError(p)  # pragma: no cover - validated
        return self.iterations


@dataclass(frozen=True)
class MatrixConfig(ConvergenceConfig):
    """E1-matrix configuration: a :class:`ConvergenceConfig` plus the SVM exponents ``qs``
    (None → the trained ``ps``) and ``alpha_from``: "p" (default) solves the ℓq-AttSVM for the
    tokens selected by the p-run, so both sides of the divergence share α (and W(0)); "q" uses
    the q-run's tokens, as the published code did (then every q must be among the ``ps``)."""

    qs: tuple[float, ...] | None = None
    alpha_from: str = "p"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qs is not None:
            object.__setattr__(self, "qs", _ps(type(self), "qs", self.qs))
        _choice(type(self), "alpha_from", self.alpha_from, ("p", "q"))
        if self.alpha_from == "q":
            missing = [q for q in self.q_list() if not any(math.isclose(q, p) for p in self.ps)]
            if missing:
                raise _err(type(self), f"alpha_from='q' needs a trained run for every q; missing q = {missing}")

    def q_list(self) -> tuple[float, ...]:
        return self.qs if self.qs is not None else self.ps


def _entries(cls, val):
    try:
        pairs = tuple(tuple(int(i) for i in e) for e in val)
    except (TypeError, ValueError):
        raise _err(cls, f"entries must be two (row, col) index pairs, got {val!r}") from None
    if len(pairs) != 2 or any(len(e) != 2 for e in pairs):
        raise _err(cls, f"entries must be two (row, col) index pairs, got {val!r}")
    return pairs


@dataclass(frozen=True)
class PathConfig(_Config):
    """E1-path configuration: one seed, W(0) = 0 by default, entries W[1,2] and W[3,4]."""

    seed: int = 1
    ps: tuple[float, ...] = (1.75, 3.0)
    iterations: Any = None
    n: int = 6
    T: int = 8
    d: int = 10
    lr: float = 0.1
    normalize: bool = True
    eps: float = DEFAULT_EPS
    init: str = "zeros"
    init_std: float = 1.0
    query: str = "random"
    entries: tuple[tuple[int, int], tuple[int, int]] = ((1, 2), (3, 4))
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 1000

    def __post_init__(self) -> None:
        cls = type(self)
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("seed", _int(cls, "seed", self.seed, 0))
        s("ps", _ps(cls, "ps", self.ps))
        s("iterations", _iterations(cls, self.iterations, self.ps))
        s("n", _int(cls, "n", self.n, 1))
        s("T", _int(cls, "T", self.T, 2))
        s("d", _int(cls, "d", self.d, 1))
        s("lr", _float(cls, "lr", self.lr, 0.0))
        if not isinstance(self.normalize, bool):
            raise _err(cls, f"normalize must be a bool, got {self.normalize!r}")
        s("eps", _float(cls, "eps", self.eps, 0.0, lo_open=False))
        _choice(cls, "init", self.init, INITS)
        s("init_std", _float(cls, "init_std", self.init_std, 0.0, lo_open=False))
        _choice(cls, "query", self.query, QUERIES)
        ent = _entries(cls, self.entries)
        for r, c in ent:
            if not (0 <= r < self.d and 0 <= c < self.d):
                raise _err(cls, f"entry ({r}, {c}) is outside the {self.d}x{self.d} matrix W")
        s("entries", ent)
        _choice(cls, "solver", self.solver, SOLVERS)
        s("tol", _float(cls, "tol", self.tol, 0.0))
        s("n_log", _int(cls, "n_log", self.n_log, 2))

    iterations_for = ConvergenceConfig.iterations_for


@dataclass(frozen=True)
class JointConfig(_Config):
    """E2 configuration: the spec's fixed instance, W(0) = 0, v(0) = 0, η = 0.1.

    ``expected_tokens``: p → selected tokens to check against (default: the spec's)."""

    ps: tuple[float, ...] = (1.75, 2.0, 3.0)
    iterations: Any = None
    lr: float = 0.1
    normalize: bool = True
    eps: float = DEFAULT_EPS
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 1000
    expected_tokens: Any = None

    def __post_init__(self) -> None:
        cls = type(self)
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("ps", _ps(cls, "ps", self.ps))
        s("iterations", _iterations(cls, self.iterations, self.ps))
        s("lr", _float(cls, "lr", self.lr, 0.0))
        if not isinstance(self.normalize, bool):
            raise _err(cls, f"normalize must be a bool, got {self.normalize!r}")
        s("eps", _float(cls, "eps", self.eps, 0.0, lo_open=False))
        _choice(cls, "solver", self.solver, SOLVERS)
        s("tol", _float(cls, "tol", self.tol, 0.0))
        s("n_log", _int(cls, "n_log", self.n_log, 2))
        exp = SPEC_JOINT_TOKENS if self.expected_tokens is None else self.expected_tokens
        if not isinstance(exp, Mapping):
            raise _err(cls, f"expected_tokens must map p to a token pair, got {exp!r}")
        try:
            s("expected_tokens", {float(k): tuple(int(t) for t in v) for k, v in exp.items()})
        except (TypeError, ValueError):
            raise _err(cls, f"expected_tokens must map p to a tuple of token indices, got {exp!r}") from None

    iterations_for = ConvergenceConfig.iterations_for

    def expected_for(self, p: float) -> tuple[int, ...] | None:
        for k, v in self.expected_tokens.items():
            if math.isclose(k, p, abs_tol=1e-12):
                return v
        return None


# --------------------------------------------------------------------------------------
# SVM solves: once per (seed, q, α), cached


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


@contextmanager
def _threads(n: int | None):
    """Cap torch's intra-op threads (tiny problems: thread sync costs more than it saves)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _single_threaded(fn):
    """Run an experiment with torch capped at one intra-op thread (restored afterwards).

    Every tensor here is small (at most a few million entries); on a shared 2-core machine
    OpenMP synchronisation made single ops 10-100x slower than the work itself.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _threads(1):
            return fn(*args, **kwargs)

    return wrapper


class SVMCache:
    """Solve each (key, q, α) SVM once per run.  ``key`` identifies the data (e.g. the seed).

    Solves run with torch capped at ``num_threads`` (default 1) intra-op threads.
    """

    def __init__(self, solver: str = "auto", tol: float = 1e-6, num_threads: int | None = 1) -> None:
        self.solver, self.tol, self.num_threads = solver, tol, num_threads
        self._att: dict[tuple, SVMOutcome] = {}
        self._dec: dict[tuple, SVMOutcome] = {}
        self._verdicts: dict[tuple, str] = {}
        self.seconds = 0.0
        self.solves = 0

    def _solve(self, call: Callable[[], Any], store: dict, key: tuple) -> SVMOutcome:
        if key in store:
            return store[key]
        from attnopt.svm import SVMInfeasibleError

        t0 = time.perf_counter()
        try:
            with _threads(self.num_threads):
                res = call()
            out = _outcome(res)
        except SVMInfeasibleError as exc:
            out = SVMOutcome("infeasible", None, message=str(exc))
        except Exception as exc:  # a solver failure is reported per seed, not fatal for the run
            out = SVMOutcome("error", None, message=f"{type(exc).__name__}: {exc}")
        out.seconds = time.perf_counter() - t0
        self.seconds += out.seconds
        self.solves += 1
        store[key] = out
        return out

    def att(self, key, X, Z, alpha, q) -> SVMOutcome:
        """The ℓq-AttSVM of the tokens ``alpha`` (cached under ``(key, q, alpha)``)."""
        from attnopt.svm import att_svm

        a = np.asarray(alpha, dtype=np.int64)
        return self._solve(lambda: att_svm(_np(X), _np(Z), a, float(q), solver=self.solver, tol=self.tol),
                           self._att, (key, float(q), a.tobytes()))

    def decoder(self, key, X, Y, alpha, q) -> SVMOutcome:
        """The decoder ℓq-SVM of the tokens ``alpha`` (cached)."""
        from attnopt.svm import decoder_svm

        a = np.asarray(alpha, dtype=np.int64)
        return self._solve(lambda: decoder_svm(_np(X), _np(Y), a, float(q), solver=self.solver, tol=self.tol),
                           self._dec, (key, float(q), a.tobytes()))

    def verdict(self, key, X, Y, Z, v, alpha, p) -> tuple[SVMOutcome, str]:
        """Token-optimality verdict of ``alpha`` (global / local / neither) and its ℓp-AttSVM.

        :func:`attnopt.svm.token_optimality` solves the ℓp-AttSVM of ``alpha`` itself; that
        solution is stored in the cache, so the matched SVM is not solved twice.
        """
        from attnopt.svm import token_optimality

        a = np.asarray(alpha, dtype=np.int64)
        key_att = (key, float(p), a.tobytes())
        if key_att in self._verdicts:
            return self._att[key_att], self._verdicts[key_att]
        t0 = time.perf_counter()
        try:
            with _threads(self.num_threads):
                rep = token_optimality(_np(X), _np(Y), _np(Z), _np(v), a, float(p), solver=self.solver,
                                       svm_tol=self.tol)
            verdict = str(rep.verdict)
            if rep.svm is not None:
                out = _outcome(rep.svm)
            else:
                out = SVMOutcome("infeasible", None, message=rep.message)
        except Exception as exc:  # solver failure: no verdict, reported per seed
            verdict = "unavailable"
            out = SVMOutcome("error", None, message=f"{type(exc).__name__}: {exc}")
        out.seconds = time.perf_counter() - t0
        self.seconds += out.seconds
        self.solves += 1
        self._att.setdefault(key_att, out)
        self._verdicts[key_att] = verdict
        return self._att[key_att], verdict


def _outcome(res) -> SVMOutcome:
    cert = res.certificate
    return SVMOutcome("ok" if cert.converged else "unconverged", np.asarray(res.solution, dtype=np.float64),
                      float(res.objective), float(cert.rel_gap), float(cert.max_violation),
                      message=str(getattr(res, "status", "")), active=np.asarray(res.active))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _alpha(X: torch.Tensor, W: torch.Tensor, Z: torch.Tensor) -> np.ndarray:
    """α = argmax_t x_tᵀ W z_i (the argmax of the final softmax), per sample (and seed)."""
    from attnopt.svm import alpha_from_softmax

    if X.ndim == 3:
        return np.asarray(_np(torch.as_tensor(alpha_from_softmax(X, W, Z))), dtype=np.int64)
    return np.stack([_alpha(X[s], W[s], Z[s]) for s in range(X.shape[0])])


def _divergence(svm: Sequence[SVMOutcome], Ws: torch.Tensor, p: float, drop_unconverged: bool) -> np.ndarray:
    """D_ψp(W^mm_s, W_s(k)) for every logged k and seed s, batched: (L, S); NaN where unusable."""
    L, S, d, _ = Ws.shape
    Wmm = torch.zeros((S, d, d), dtype=Ws.dtype)
    ok = np.zeros(S, dtype=bool)
    for s, o in enumerate(svm):
        if o.usable and not (drop_unconverged and o.status != "ok"):
            Wmm[s] = torch.from_numpy(o.solution)
            ok[s] = True
    D = directional_bregman(Wmm.unsqueeze(0), Ws, p, dim=(-2, -1)).numpy()
    D[:, ~ok] = np.nan
    return D


def _mean_std(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = np.sum(np.isfinite(a), axis=axis)
        safe = np.where(np.isfinite(a), a, 0.0)
        mean = np.where(cnt > 0, safe.sum(axis=axis) / np.maximum(cnt, 1), np.nan)
        dev = np.where(np.isfinite(a), a - np.expand_dims(mean, axis), 0.0)
        std = np.where(cnt > 0, np.sqrt((dev**2).sum(axis=axis) / np.maximum(cnt, 1)), np.nan)
    return mean, std


# --------------------------------------------------------------------------------------
# rate fit (claim 2)


@dataclass
class RateFit:
    """Fits of the mean matched divergence D̄(k) for k in [k_from, k_to] (logged iterations).

    * ``polylog``: log D = a + b·log log k  (D ∝ (log k)^b; ``slope`` = b)
    * ``inv_log``: D = c + e / log k        (``slope`` = e, ``intercept`` = c)
    * ``power``:   log D = a + b·log k      (D ∝ k^b)
    ``r2`` is the coefficient of determination of log D for every model (comparable).
    """

    k_from: int
    k_to: int
    points: int
    polylog_slope: float = math.nan
    polylog_intercept: float = math.nan
    polylog_r2: float = math.nan
    inv_log_slope: float = math.nan
    inv_log_intercept: float = math.nan
    inv_log_r2: float = math.nan
    power_slope: float = math.nan
    power_intercept: float = math.nan
    power_r2: float = math.nan
    seed_polylog_slopes: list[float] = field(default_factory=list)

    @property
    def best(self) -> str:
        r2 = {"polylog": self.polylog_r2, "inv_log": self.inv_log_r2, "power": self.power_r2}
        r2 = {k: v for k, v in r2.items() if math.isfinite(v)}
        return max(r2, key=r2.get) if r2 else "none"


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - yhat) ** 2)) / ss if ss > 0 else math.nan


def fit_rate(iters: np.ndarray, D: np.ndarray, k_from: int, per_seed: np.ndarray | None = None,
             k_to: int | None = None) -> RateFit:
    """Fit D̄(k) against log k on ``k_from <= k <= k_to`` (see :class:`RateFit`)."""
    iters = np.asarray(iters, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    k_to = int(iters[-1]) if k_to is None and iters.size else (0 if k_to is None else int(k_to))
    sel = (iters >= max(k_from, 2)) & (iters <= k_to) & np.isfinite(D) & (D > 0)
    fit = RateFit(int(max(k_from, 2)), k_to, int(sel.sum()))
    if sel.sum() < 3:
        return fit
    k, y = iters[sel], D[sel]
    lk, ly = np.log(k), np.log(y)
    llk = np.log(lk)
    b, a = np.polyfit(llk, ly, 1)
    fit.polylog_slope, fit.polylog_intercept, fit.polylog_r2 = float(b), float(a), _r2(ly, a + b * llk)
    e, c = np.polyfit(1.0 / lk, y, 1)
    pred = c + e / lk
    fit.inv_log_slope, fit.inv_log_intercept = float(e), float(c)
    fit.inv_log_r2 = _r2(ly, np.log(pred)) if np.all(pred > 0) else math.nan
    b, a = np.polyfit(lk, ly, 1)
    fit.power_slope, fit.power_intercept, fit.power_r2 = float(b), float(a), _r2(ly, a + b * lk)
    if per_seed is not None:
        slopes = []
        for s in range(per_seed.shape[1]):
            ys = per_seed[sel, s]
            if np.all(np.isfinite(ys)) and np.all(ys > 0):
                slopes.append(float(np.polyfit(llk, np.log(ys), 1)[0]))
        fit.seed_polylog_slopes = slopes
    return fit


def fit_window(traj: Trajectory, fit_from: int | None = None) -> tuple[int, int]:
    """The iterations over which the asymptotic rate is fitted.

    Start (unless ``fit_from`` is given): the first logged k where the mean max-softmax
    probability reaches 0.99, i.e. the tokens are selected and the norm-growth phase of the
    theory has begun (fallback max(10, K/100)).  End: the first logged k where the mean ‖W(k)‖_p
    reaches 99% of its final value — beyond it W has stopped moving (with the published
    ε ≈ 2.2e-16 the step is no longer normalised once ‖∇L‖_q < ε, see ``_batched_md``), so those
    iterations say nothing about the rate; K when the norm is still growing.
    """
    iters = traj.iters
    K = int(iters[-1])
    if fit_from is None:
        sm = traj.max_softmax.numpy().reshape(len(iters), -1).mean(axis=1)
        hit = np.flatnonzero(sm >= 0.99)
        fit_from = int(iters[hit[0]]) if hit.size else max(10, K // 100)
    wn = traj.w_norm.numpy().reshape(len(iters), -1).mean(axis=1)
    reach = np.flatnonzero(wn >= 0.99 * wn[-1])
    k_to = int(iters[reach[0]]) if reach.size else K
    if k_to <= fit_from:
        k_to = K
    return int(max(fit_from, 2)), k_to


# --------------------------------------------------------------------------------------
# E1 convergence


@dataclass
class PRun:
    """One trained p: trajectory of all seeds, selected tokens, matched SVMs, divergence."""

    p: float
    iterations: int
    traj: Trajectory
    alpha: np.ndarray  # (S, n)
    svm: list[SVMOutcome]  # q = p, per seed
    divergence: np.ndarray  # (L, S), NaN for unusable seeds
    verdicts: list[str]  # per seed: global / local / neither / unavailable
    svm_seconds: float = 0.0  # matched SVMs + verdicts

    @property
    def iters(self) -> np.ndarray:
        return self.traj.iters

    def svm_counts(self) -> dict[str, int]:
        out = {"ok": 0, "unconverged": 0, "infeasible": 0, "error": 0}
        for o in self.svm:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def verdict_counts(self) -> dict[str, int]:
        out = {"global": 0, "local": 0, "neither": 0, "unavailable": 0}
        for v in self.verdicts:
            out[v] = out.get(v, 0) + 1
        return out


@dataclass
class ConvergenceResult:
    config: ConvergenceConfig
    seeds: tuple[int, ...]
    data: SyntheticData
    runs: dict[float, PRun]
    fits: dict[float, RateFit]
    summary: dict
    seconds: dict
    cache: SVMCache = field(repr=False, default=None)
    out: Path | None = None


def _train_p(cfg: ConvergenceConfig, data: SyntheticData, p: float, progress: ProgressFn | None) -> Trajectory:
    K = cfg.iterations_for(p)
    label = f"train p={p:g}"
    cb = (lambda k: progress(label, k, K)) if progress else None
    return train_md(data.X, data.Y, data.Z, data.v, data.W0, p, cfg.lr, K, log_iters=log_grid(K, cfg.n_log),
                    normalize=cfg.normalize, eps=cfg.eps, progress=cb)


@_single_threaded
def run_convergence(config: ConvergenceConfig | Mapping | None = None, *, out: str | Path | None = None,
                    progress: ProgressFn | None = None, cache: SVMCache | None = None,
                    **overrides: Any) -> ConvergenceResult:
    """E1: batched normalised ℓp-AttGD over all seeds, for each p; see the module docstring."""
    cfg = _coerce(config, ConvergenceConfig, overrides)
    t_start = time.perf_counter()
    seeds = cfg.seed_list()
    data = convergence_batch(seeds, cfg.n, cfg.T, cfg.d, query=cfg.query, init=cfg.init, init_std=cfg.init_std)
    cache = cache or SVMCache(cfg.solver, cfg.tol)
    runs: dict[float, PRun] = {}
    fits: dict[float, RateFit] = {}
    train_s = svm_s = 0.0
    for p in cfg.ps:
        traj = _train_p(cfg, data, p, progress)
        train_s += traj.seconds
        alpha = _alpha(data.X, traj.final_W, data.Z)
        t0 = time.perf_counter()
        svm, verdicts = [], []
        for s, seed in enumerate(seeds):
            if cfg.verdicts:  # token_optimality solves the matched SVM; the cache keeps it
                o, v = cache.verdict(seed, data.X[s], data.Y[s], data.Z[s], data.v[s], alpha[s], p)
            else:
                o, v = cache.att(seed, data.X[s], data.Z[s], alpha[s], p), "unavailable"
            svm.append(o)
            verdicts.append(v)
            if progress:
                progress(f"SVM p={p:g}", 1, len(seeds))
        t_svm = time.perf_counter() - t0
        svm_s += t_svm
        D = _divergence(svm, traj.W, p, cfg.drop_unconverged)
        runs[p] = PRun(p, cfg.iterations_for(p), traj, alpha, svm, D, verdicts, t_svm)
        mean, _ = _mean_std(D, axis=1)
        k_from, k_to = fit_window(traj, cfg.fit_from)
        fits[p] = fit_rate(traj.iters, mean, k_from, per_seed=D, k_to=k_to)
    seconds = dict(train=train_s, svm=svm_s, total=time.perf_counter() - t_start)
    res = ConvergenceResult(cfg, seeds, data, runs, fits, {}, seconds, cache)
    res.summary = _convergence_summary(res)
    if out is not None:
        from attnopt.report.runs import as_run_dir

        rd = as_run_dir(out, cfg, experiment="e1-convergence")
        _write_convergence_files(rd, res)
        rd.write_report(_convergence_report(res))
        rd.write_summary(res.summary)
        res.out = rd.path
    return res


def _final(run: PRun, arr: np.ndarray) -> tuple[float, float]:
    m, s = _mean_std(arr[-1])
    return float(m), float(s)


def _fit_summary(fit: RateFit) -> dict:
    out = dataclasses.asdict(fit)
    slopes = out.pop("seed_polylog_slopes")
    out["best"] = fit.best
    out["seed_polylog_slope_mean"] = float(np.mean(slopes)) if slopes else math.nan
    out["seed_polylog_slope_std"] = float(np.std(slopes)) if slopes else math.nan
    return out


def _convergence_summary(res: ConvergenceResult) -> dict:
    per_p = {}
    for p, run in res.runs.items():
        D = run.divergence
        dm, ds = _final(run, D)
        fit = res.fits[p]
        per_p[f"{p:g}"] = {
            "p": p,
            "iterations": run.iterations,
            "seeds": len(res.seeds),
            "divergence_final_mean": dm,
            "divergence_final_std": ds,
            "divergence_final_median": float(np.nanmedian(D[-1])) if np.isfinite(D[-1]).any() else math.nan,
            "divergence_initial_mean": float(_mean_std(D[0])[0]),
            "seeds_used": int(np.isfinite(D[-1]).sum()),
            "svm": run.svm_counts(),
            "svm_issues": {f"seed {res.seeds[s]}": f"{o.status}: {o.message}"[:300]
                           for s, o in enumerate(run.svm) if o.status != "ok"},
            "verdicts": run.verdict_counts(),
            "loss_final_mean": float(run.traj.loss[-1].mean()),
            "max_softmax_final_mean": float(run.traj.max_softmax[-1].mean()),
            "w_norm_final_mean": float(run.traj.w_norm[-1].mean()),
            "rate_fit": _fit_summary(fit),
            "train_seconds": run.traj.seconds,
            "svm_seconds": run.svm_seconds,
        }
    return {"experiment": "e1-convergence", "seeds": [res.seeds[0], res.seeds[-1]] if res.seeds else [],
            "n_seeds": len(res.seeds), "per_p": per_p, "seconds": res.seconds,
            "svm_solves": res.cache.solves if res.cache else 0}


def _history_rows(res: ConvergenceResult) -> list[dict]:
    rows = []
    for p, run in res.runs.items():
        tr = run.traj
        Dm, Ds = _mean_std(run.divergence, axis=1)
        cols = {k: _mean_std(getattr(tr, k).numpy(), axis=1)
                for k in ("loss", "max_softmax", "logistic_prob", "w_norm")}
        nvalid = np.isfinite(run.divergence).sum(axis=1)
        for j, k in enumerate(tr.iters):
            row = {"p": p, "iteration": int(k), "divergence_mean": Dm[j], "divergence_std": Ds[j],
                   "n_seeds": int(nvalid[j])}
            for name, (m, s) in cols.items():
                row[f"{name}_mean"] = m[j]
                row[f"{name}_std"] = s[j]
            rows.append(row)
    return rows


def _seed_rows(res: ConvergenceResult) -> list[dict]:
    rows = []
    for p, run in res.runs.items():
        for s, seed in enumerate(res.seeds):
            o = run.svm[s]
            rows.append({
                "p": p, "seed": seed, "alpha": " ".join(str(int(a)) for a in run.alpha[s]),
                "svm_status": o.status, "svm_rel_gap": o.rel_gap, "svm_objective": o.objective,
                "divergence_final": run.divergence[-1, s], "verdict": run.verdicts[s],
                "loss_final": float(run.traj.loss[-1, s]), "max_softmax_final": float(run.traj.max_softmax[-1, s]),
                "w_norm_final": float(run.traj.w_norm[-1, s]),
            })
    return rows


def _series(res: ConvergenceResult, attr: str) -> dict:
    out = {}
    for p, run in res.runs.items():
        arr = run.divergence if attr == "divergence" else getattr(run.traj, attr).numpy()
        m, s = _mean_std(arr, axis=1)
        out[f"p = {p:g}"] = (run.iters, m, s)
    return out


def _write_convergence_files(rd, res: ConvergenceResult) -> None:
    from attnopt.report import figures as F

    rd.write_csv("convergence_history.csv", rows=_history_rows(res))
    rd.write_csv("convergence_seeds.csv", rows=_seed_rows(res))
    n = len(res.seeds)
    rd.save_figure("convergence.png", F.convergence_figure(
        _series(res, "divergence"), _series(res, "max_softmax"), _series(res, "w_norm"), _series(res, "loss"),
        title=f"E1: normalised ℓp-AttGD, matched ℓp-AttSVM (mean ± std over {n} seeds)"))
    curves = {f"p = {p:g}": (run.iters, _mean_std(run.divergence, axis=1)[0]) for p, run in res.runs.items()}
    rd.save_figure("rate.png", F.rate_figure(curves, {f"p = {p:g}": f for p, f in res.fits.items()}))
    ps = list(res.runs)
    fin = [_final(res.runs[p], res.runs[p].divergence) for p in ps]
    rd.save_figure("final_vs_p.png", F.sweep_figure(ps, [f[0] for f in fin], [f[1] for f in fin],
                                                     [res.runs[p].iterations for p in ps]))
    rd.save_figure("verdicts.png", F.verdict_figure({f"{p:g}": res.runs[p].verdict_counts() for p in ps}))


def _fmt(m: float, s: float | None = None, digits: int = 3) -> str:
    if m is None or not math.isfinite(m):
        return "n/a"
    f = f"{m:.{digits}g}" if abs(m) < 1e-2 and m != 0 else f"{m:.{digits}f}"
    if s is None or not math.isfinite(s):
        return f
    g = f"{s:.{digits}g}" if abs(s) < 1e-2 and s != 0 else f"{s:.{digits}f}"
    return f"{f} ± {g}"


def _convergence_report(res: ConvergenceResult) -> str:
    cfg = res.config
    lines = [
        "# E1 — directional convergence of normalised ℓp-AttGD to the ℓp-AttSVM",
        "",
        f"Seeds {res.seeds[0]}..{res.seeds[-1]} ({len(res.seeds)}), n={cfg.n}, T={cfg.T}, d={cfg.d}, "
        f"η={cfg.lr}, normalised={cfg.normalize}, W(0)={cfg.init}"
        + (f" (std {cfg.init_std})" if cfg.init == "normal" else "") + f", query={cfg.query}, float64, full batch, "
        f"v fixed. α = argmax of the final attention scores per seed; SVM solver `{cfg.solver}`.",
        "",
        "Metric: D_ψp(W^mm/‖W^mm‖_p, W(k)/‖W(k)‖_p) (SVM first), mean ± std over the seeds whose SVM is usable.",
        "",
        "| p | iterations | D at k=0 | D final (mean ± std) | median | seeds used | SVM ok / unconv. / infeas. / error "
        "| verdict global / local / neither / n.a. | max-softmax | loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in res.summary["per_p"].items():
        c, v = s["svm"], s["verdicts"]
        lines.append(
            f"| {key} | {s['iterations']} | {_fmt(s['divergence_initial_mean'])} | "
            f"{_fmt(s['divergence_final_mean'], s['divergence_final_std'])} | {_fmt(s['divergence_final_median'])} | "
            f"{s['seeds_used']}/{s['seeds']} | {c['ok']} / {c['unconverged']} / {c['infeasible']} / {c['error']} | "
            f"{v['global']} / {v['local']} / {v['neither']} / {v['unavailable']} | "
            f"{s['max_softmax_final_mean']:.4f} | {s['loss_final_mean']:.4f} |")
    lines += ["", "## Rate of the matched divergence against log k (claim 2)", "",
              "Fits of the mean curve on the logged iterations k_from ≤ k ≤ k_to: from where the mean max-softmax "
              "reaches 0.99 (tokens selected) to where ‖W(k)‖_p reaches 99% of its final value (a k_to below the "
              "last iteration means W stopped moving: with the published ε the step stops being normalised once "
              "‖∇L‖_q < ε). R² is measured on log D for all three models.",
              "", "| p | k range | D ∝ (log k)^b: b (R²) | D = c + e/log k: c, e (R²) | D ∝ k^b: b (R²) | best | per-seed b (mean ± std) |",
              "|---|---|---|---|---|---|---|"]
    for key, s in res.summary["per_p"].items():
        f = s["rate_fit"]
        lines.append(
            f"| {key} | {f['k_from']}–{f['k_to']} ({f['points']} pts) | {_fmt(f['polylog_slope'])} ({_fmt(f['polylog_r2'])}) | "
            f"{_fmt(f['inv_log_intercept'])}, {_fmt(f['inv_log_slope'])} ({_fmt(f['inv_log_r2'])}) | "
            f"{_fmt(f['power_slope'])} ({_fmt(f['power_r2'])}) | {f['best']} | "
            f"{_fmt(f['seed_polylog_slope_mean'], f['seed_polylog_slope_std'])} |")
    issues = {k: s["svm_issues"] for k, s in res.summary["per_p"].items() if s["svm_issues"]}
    if issues:
        lines += ["", "## SVM issues (seeds excluded from the means" + (
            ", unconverged ones too" if cfg.drop_unconverged else "; unconverged ones kept") + ")", ""]
        for key, d in issues.items():
            for seed, msg in list(d.items())[:20]:
                lines.append(f"- p={key}, {seed}: {msg}")
    sec = res.seconds
    lines += ["", f"Wall time: {sec['total']:.1f} s (training {sec['train']:.1f} s, matched SVMs + verdicts "
              f"{sec['svm']:.1f} s).", "",
              "Figures: `convergence.png`, `rate.png`, `final_vs_p.png`, `verdicts.png`. "
              "Data: `convergence_history.csv` (mean/std per logged iteration), `convergence_seeds.csv` (per seed)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# E1 matrix


@dataclass
class MatrixResult:
    config: MatrixConfig
    convergence: ConvergenceResult
    qs: tuple[float, ...]
    divergence: dict[tuple[float, float], np.ndarray]  # (p, q) -> (L_p, S)
    svm: dict[tuple[float, float], list[SVMOutcome]]
    table: list[dict]
    summary: dict
    seconds: dict
    out: Path | None = None

    def final(self, p: float, q: float) -> tuple[float, float]:
        return tuple(float(x) for x in _mean_std(self.divergence[(p, q)][-1]))  # type: ignore[return-value]


@_single_threaded
def run_matrix(config: MatrixConfig | Mapping | None = None, *, out: str | Path | None = None,
               progress: ProgressFn | None = None, convergence: ConvergenceResult | None = None,
               **overrides: Any) -> MatrixResult:
    """E1-matrix: D_ψp(W_q^mm(α_p)/‖·‖_p, W_p(k)/‖·‖_p) for every (p, q), same α and W(0).

    Reuses ``convergence`` (its trajectories and SVM cache) when given; otherwise runs
    :func:`run_convergence` first with the same configuration.  The run folder then holds the
    convergence outputs too.
    """
    if convergence is not None and config is None:
        cfg = MatrixConfig.from_dict(convergence.config.to_dict(), **overrides)
    else:
        cfg = _coerce(config, MatrixConfig, overrides)
    t_start = time.perf_counter()
    conv_fields = {f.name for f in fields(ConvergenceConfig)}
    conv_cfg = ConvergenceConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k in conv_fields})
    if convergence is None:
        convergence = run_convergence(conv_cfg, progress=progress)
    elif convergence.config != conv_cfg:
        raise ConfigError("run_matrix: the given convergence result was run with a different configuration")
    qs = cfg.q_list()
    data, seeds, cache = convergence.data, convergence.seeds, convergence.cache
    t0 = time.perf_counter()
    solves0 = cache.solves
    div, svms = {}, {}
    for p, run in convergence.runs.items():
        for q in qs:
            outs = []
            alpha = run.alpha if cfg.alpha_from == "p" else next(
                r.alpha for pp, r in convergence.runs.items() if math.isclose(pp, q))
            for s, seed in enumerate(seeds):
                outs.append(cache.att(seed, data.X[s], data.Z[s], alpha[s], q))
                if progress:
                    progress(f"SVM p={p:g} q={q:g}", 1, len(seeds))
            svms[(p, q)] = outs
            div[(p, q)] = _divergence(outs, run.traj.W, p, cfg.drop_unconverged)
    t_svm = time.perf_counter() - t0
    table = []
    for p in convergence.runs:
        for q in qs:
            m, s = _mean_std(div[(p, q)][-1])
            table.append({"p_trained": p, "q_svm": q, "iterations": convergence.runs[p].iterations,
                          "divergence_final_mean": float(m), "divergence_final_std": float(s),
                          "divergence_initial_mean": float(_mean_std(div[(p, q)][0])[0]),
                          "seeds_used": int(np.isfinite(div[(p, q)][-1]).sum()),
                          "matched": bool(math.isclose(p, q)),
                          "svm_not_ok": int(sum(o.status != "ok" for o in svms[(p, q)]))})
    seconds = dict(convergence=convergence.seconds, extra_svm=t_svm, extra_svm_solves=cache.solves - solves0,
                   total=convergence.seconds["total"] + (time.perf_counter() - t_start))
    res = MatrixResult(cfg, convergence, qs, div, svms, table, {}, seconds)
    res.summary = _matrix_summary(res)
    if out is not None:
        from attnopt.report.runs import as_run_dir

        rd = as_run_dir(out, cfg, experiment="e1-matrix")
        _write_convergence_files(rd, convergence)
        _write_matrix_files(rd, res)
        conv_md = _convergence_report(convergence).replace("# E1 —", "## E1 —", 1)
        rd.write_report(_matrix_report(res) + "\n\n" + conv_md)
        rd.write_summary(res.summary)
        res.out = convergence.out = rd.path
    return res


def _matrix_summary(res: MatrixResult) -> dict:
    diag_below = {}
    for p in res.convergence.runs:
        m = {q: res.final(p, q)[0] for q in res.qs}
        matched = [q for q in res.qs if math.isclose(q, p)]
        if matched:
            others = [v for q, v in m.items() if not math.isclose(q, p) and math.isfinite(v)]
            diag_below[f"{p:g}"] = bool(others) and all(m[matched[0]] < v for v in others)
    return {"experiment": "e1-matrix", "table": res.table, "matched_is_smallest": diag_below,
            "spec_p3_readoff": {f"{q:g}": v for q, v in SPEC_MATRIX_P3.items()},
            "convergence": res.convergence.summary, "seconds": res.seconds}


def _write_matrix_files(rd, res: MatrixResult) -> None:
    from attnopt.report import figures as F

    rows = []
    grid = {}
    for (p, q), D in res.divergence.items():
        iters = res.convergence.runs[p].iters
        m, s = _mean_std(D, axis=1)
        grid[(p, q)] = (iters, m, s)
        for j, k in enumerate(iters):
            rows.append({"p_trained": p, "q_svm": q, "iteration": int(k), "divergence_mean": m[j],
                         "divergence_std": s[j]})
    rd.write_csv("matrix_history.csv", rows=rows)
    rd.write_csv("matrix_final.csv", rows=res.table)
    rd.save_figure("matrix.png", F.matrix_figure(grid, list(res.convergence.runs), list(res.qs),
                                                 n_seeds=len(res.convergence.seeds),
                                                 note="same α and W(0)" if res.config.alpha_from == "p"
                                                 else "α of the q-run (published), same W(0)"))


def matrix_markdown(res: MatrixResult) -> str:
    """The final-value table: rows p trained, columns q of the SVM (mean ± std)."""
    ps = list(res.convergence.runs)
    head = "| p trained \\ q SVM | " + " | ".join(f"q = {q:g}" for q in res.qs) + " |"
    lines = [head, "|---" * (len(res.qs) + 1) + "|"]
    for p in ps:
        cells = []
        for q in res.qs:
            m, s = res.final(p, q)
            c = _fmt(m, s)
            cells.append(f"**{c}**" if math.isclose(p, q) else c)
        lines.append(f"| p = {p:g} ({res.convergence.runs[p].iterations} it.) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _matrix_report(res: MatrixResult) -> str:
    same = res.config.alpha_from == "p"
    lines = ["# E1-matrix — trained p against the ℓq-AttSVM" + (" of the same tokens" if same else ""), "",
             "D_ψp(W_q^mm/‖W_q^mm‖_p, W_p(k)/‖W_p(k)‖_p) at the final iteration, mean ± std over seeds; "
             + ("α and W(0) are the p-run's for every q" if same else
                "α of the q-SVM from the q-run (the published code's choice); W(0) shared")
             + " (matched q = p in bold).", "", matrix_markdown(res), "",
             "Matched q = p smallest in its row: " + ", ".join(
                 f"p={k}: {'yes' if v else 'NO'}" for k, v in res.summary["matched_is_smallest"].items()), "",
             "Spec read-off of the authors' p = 3 panel at 20,000 iterations: "
             + ", ".join(f"q={q:g} ≈ {v}" for q, v in SPEC_MATRIX_P3.items()) + ".", "",
             f"Extra SVM solves for the matrix: {res.seconds['extra_svm_solves']} in {res.seconds['extra_svm']:.1f} s.",
             "", "Figure: `matrix.png`; data: `matrix_history.csv`, `matrix_final.csv`."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# E1 path


@dataclass
class PathRun:
    p: float
    iterations: int
    traj: Trajectory
    alpha: np.ndarray
    svm: SVMOutcome
    path: np.ndarray  # (L, 2) the two entries of W(k)
    ray: np.ndarray  # (L, 2) the same entries of W^mm ‖W(k)‖_p / ‖W^mm‖_p (NaN if no SVM)
    divergence: np.ndarray  # (L,)
    verdict: str


@dataclass
class PathResult:
    config: PathConfig
    runs: dict[float, PathRun]
    summary: dict
    seconds: float
    out: Path | None = None


@_single_threaded
def run_path(config: PathConfig | Mapping | None = None, *, out: str | Path | None = None,
             progress: ProgressFn | None = None, **overrides: Any) -> PathResult:
    """E1-path: one seed, two entries of W(k) against the rescaled ℓp-AttSVM ray, per p."""
    cfg = _coerce(config, PathConfig, overrides)
    t0 = time.perf_counter()
    data = convergence_instance(cfg.seed, cfg.n, cfg.T, cfg.d, query=cfg.query, init=cfg.init, init_std=cfg.init_std)
    cache = SVMCache(cfg.solver, cfg.tol)
    (r1, c1), (r2, c2) = cfg.entries
    runs = {}
    for p in cfg.ps:
        K = cfg.iterations_for(p)
        cb = (lambda k, p=p, K=K: progress(f"path p={p:g}", k, K)) if progress else None
        tr = train_md(data.X, data.Y, data.Z, data.v, data.W0, p, cfg.lr, K, log_iters=log_grid(K, cfg.n_log),
                      normalize=cfg.normalize, eps=cfg.eps, progress=cb)
        alpha = _alpha(data.X, tr.final_W, data.Z)
        o, verdict = cache.verdict(cfg.seed, data.X, data.Y, data.Z, data.v, alpha, p)
        path = torch.stack([tr.W[:, r1, c1], tr.W[:, r2, c2]], dim=-1).numpy()
        if o.usable:
            Wmm = torch.from_numpy(o.solution)
            scale = (tr.w_norm / float(lp_norm(Wmm, p))).numpy()
            ray = np.stack([scale * o.solution[r1, c1], scale * o.solution[r2, c2]], axis=-1)
            D = directional_bregman(Wmm.unsqueeze(0), tr.W, p, dim=(-2, -1)).numpy()
        else:
            ray = np.full_like(path, np.nan)
            D = np.full(tr.iters.shape, np.nan)
        runs[p] = PathRun(p, K, tr, alpha, o, path, ray, D, verdict)
    res = PathResult(cfg, runs, {}, time.perf_counter() - t0)
    res.summary = {"experiment": "e1-path", "seed": cfg.seed, "entries": cfg.entries, "seconds": res.seconds,
                   "per_p": {f"{p:g}": {"iterations": r.iterations, "alpha": r.alpha.tolist(), "svm_status": r.svm.status,
                                        "divergence_final": float(r.divergence[-1]), "verdict": r.verdict,
                                        "w_norm_final": float(r.traj.w_norm[-1]),
                                        "max_softmax_final": float(r.traj.max_softmax[-1]),
                                        "loss_final": float(r.traj.loss[-1]),
                                        "path_final": r.path[-1].tolist(), "ray_final": r.ray[-1].tolist()}
                             for p, r in runs.items()}}
    if out is not None:
        from attnopt.report import figures as F
        from attnopt.report.runs import as_run_dir

        rd = as_run_dir(out, cfg, experiment="e1-path")
        rows = []
        for p, r in runs.items():
            for j, k in enumerate(r.traj.iters):
                rows.append({"p": p, "iteration": int(k), "w_a": r.path[j, 0], "w_b": r.path[j, 1],
                             "ray_a": r.ray[j, 0], "ray_b": r.ray[j, 1], "divergence": r.divergence[j],
                             "w_norm": float(r.traj.w_norm[j]), "max_softmax": float(r.traj.max_softmax[j]),
                             "loss": float(r.traj.loss[j])})
        rd.write_csv("path_history.csv", rows=rows)
        rd.save_figure("path.png", F.path_figure(
            {f"p = {p:g}": (r.path, r.ray) for p, r in runs.items()},
            {f"p = {p:g}": (r.traj.iters, r.traj.max_softmax.numpy()) for p, r in runs.items()},
            {f"p = {p:g}": (r.traj.iters, r.traj.loss.numpy()) for p, r in runs.items()},
            entries=cfg.entries, title=f"E1-path: seed {cfg.seed}, W(0) = {cfg.init}"))
        rd.write_report(_path_report(res))
        rd.write_summary(res.summary)
        res.out = rd.path
    return res


def _path_report(res: PathResult) -> str:
    cfg = res.config
    (r1, c1), (r2, c2) = cfg.entries
    lines = ["# E1-path — iterate path against the ℓp-AttSVM ray", "",
             f"Seed {cfg.seed}, W(0) = {cfg.init}, η = {cfg.lr}; entries W[{r1},{c1}] and W[{r2},{c2}]. "
             "The ray is W^mm rescaled to the iterate's ℓp norm.", "",
             "| p | iterations | α | SVM | D final | verdict | (W_a, W_b) final | ray final | max-softmax | loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in res.summary["per_p"].items():
        lines.append(f"| {key} | {s['iterations']} | {tuple(s['alpha'])} | {s['svm_status']} | {_fmt(s['divergence_final'])} | "
                     f"{s['verdict']} | ({s['path_final'][0]:.3f}, {s['path_final'][1]:.3f}) | "
                     f"({s['ray_final'][0]:.3f}, {s['ray_final'][1]:.3f}) | {s['max_softmax_final']:.4f} | {s['loss_final']:.4f} |")
    lines += ["", f"Wall time {res.seconds:.1f} s. Figure: `path.png`; data: `path_history.csv`."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# E2 joint


@dataclass
class JointRun:
    p: float
    iterations: int
    traj: Trajectory
    alpha: tuple[int, ...]
    expected: tuple[int, ...] | None
    att_svm: SVMOutcome
    dec_svm: SVMOutcome
    w_path: np.ndarray  # (L, 2): W[0,0], W[0,1]
    w_ray: np.ndarray  # (L, 2)
    v_path: np.ndarray  # (L, d)
    v_ray: np.ndarray  # (L, d)
    divergence_W: np.ndarray  # (L,)
    divergence_v: np.ndarray  # (L,)
    verdict: str
    first_iter_softmax_99: int | None
    first_iter_logistic_99: int | None

    @property
    def matches_spec(self) -> bool | None:
        return None if self.expected is None else tuple(self.alpha) == tuple(self.expected)


@dataclass
class JointResult:
    config: JointConfig
    runs: dict[float, JointRun]
    summary: dict
    seconds: float
    out: Path | None = None


def _first_reach(iters: np.ndarray, vals: np.ndarray, level: float) -> int | None:
    idx = np.flatnonzero(vals >= level)
    return int(iters[idx[0]]) if idx.size else None


@_single_threaded
def run_joint(config: JointConfig | Mapping | None = None, *, out: str | Path | None = None,
              progress: ProgressFn | None = None, **overrides: Any) -> JointResult:
    """E2: normalised ℓp-JointGD on the spec's instance; W → ℓp-AttSVM, v → decoder ℓp-SVM."""
    cfg = _coerce(config, JointConfig, overrides)
    t0 = time.perf_counter()
    data = joint_instance()
    cache = SVMCache(cfg.solver, cfg.tol)
    runs = {}
    for p in cfg.ps:
        K = cfg.iterations_for(p)
        cb = (lambda k, p=p, K=K: progress(f"joint p={p:g}", k, K)) if progress else None
        tr = train_md(data.X, data.Y, data.Z, data.v, data.W0, p, cfg.lr, K, log_iters=log_grid(K, cfg.n_log),
                      train_v=True, normalize=cfg.normalize, eps=cfg.eps, progress=cb)
        alpha = _alpha(data.X, tr.final_W, data.Z)
        ao, verdict = cache.verdict(("e2", p), data.X, data.Y, data.Z, tr.final_v, alpha, p)
        do = cache.decoder("e2", data.X, data.Y, alpha, p)
        w_path = torch.stack([tr.W[:, 0, 0], tr.W[:, 0, 1]], dim=-1).numpy()
        v_path = tr.v.numpy()
        L = tr.iters.size
        if ao.usable:
            Wmm = torch.from_numpy(ao.solution)
            sc = (tr.w_norm / float(lp_norm(Wmm, p))).numpy()
            w_ray = np.stack([sc * ao.solution[0, 0], sc * ao.solution[0, 1]], axis=-1)
            dW = directional_bregman(Wmm.unsqueeze(0), tr.W, p, dim=(-2, -1)).numpy()
        else:
            w_ray, dW = np.full((L, 2), np.nan), np.full(L, np.nan)
        if do.usable:
            vmm = torch.from_numpy(do.solution)
            vn = lp_norm(tr.v, p, dim=-1).numpy()
            v_ray = (vn / float(lp_norm(vmm, p)))[:, None] * do.solution[None, :]
            dv = directional_bregman(vmm.unsqueeze(0), tr.v, p, dim=-1).numpy()
        else:
            v_ray, dv = np.full((L, data.X.shape[-1]), np.nan), np.full(L, np.nan)
        runs[p] = JointRun(p, K, tr, tuple(int(a) for a in alpha), cfg.expected_for(p), ao, do, w_path, w_ray,
                           v_path, v_ray, dW, dv, verdict,
                           _first_reach(tr.iters, tr.max_softmax.numpy(), 0.99),
                           _first_reach(tr.iters, tr.logistic_prob.numpy(), 0.99))
    res = JointResult(cfg, runs, {}, time.perf_counter() - t0)
    res.summary = {
        "experiment": "e2-joint", "seconds": res.seconds,
        "all_match_spec": all(r.matches_spec is not False for r in runs.values()),
        "per_p": {f"{p:g}": {
            "iterations": r.iterations, "alpha": list(r.alpha), "expected": list(r.expected) if r.expected else None,
            "matches_spec": r.matches_spec, "att_svm": r.att_svm.status, "decoder_svm": r.dec_svm.status,
            "divergence_W_final": float(r.divergence_W[-1]), "divergence_v_final": float(r.divergence_v[-1]),
            "max_softmax_final": float(r.traj.max_softmax[-1]), "logistic_prob_final": float(r.traj.logistic_prob[-1]),
            "first_iteration_max_softmax_ge_0.99": r.first_iter_softmax_99,
            "first_iteration_logistic_prob_ge_0.99": r.first_iter_logistic_99,
            "verdict": r.verdict, "W_final": r.traj.final_W.tolist(), "v_final": r.traj.final_v.tolist(),
            "W_svm": None if r.att_svm.solution is None else r.att_svm.solution.tolist(),
            "v_svm": None if r.dec_svm.solution is None else r.dec_svm.solution.tolist()}
            for p, r in runs.items()}}
    if out is not None:
        from attnopt.report import figures as F
        from attnopt.report.runs import as_run_dir

        rd = as_run_dir(out, cfg, experiment="e2-joint")
        rows = []
        for p, r in runs.items():
            for j, k in enumerate(r.traj.iters):
                rows.append({"p": p, "iteration": int(k), "W00": r.w_path[j, 0], "W01": r.w_path[j, 1],
                             "ray_W00": r.w_ray[j, 0], "ray_W01": r.w_ray[j, 1],
                             "v0": r.v_path[j, 0], "v1": r.v_path[j, 1], "ray_v0": r.v_ray[j, 0], "ray_v1": r.v_ray[j, 1],
                             "divergence_W": r.divergence_W[j], "divergence_v": r.divergence_v[j],
                             "max_softmax": float(r.traj.max_softmax[j]),
                             "logistic_prob": float(r.traj.logistic_prob[j]), "loss": float(r.traj.loss[j])})
        rd.write_csv("joint_history.csv", rows=rows)
        rd.save_figure("joint.png", F.joint_figure(
            {f"p = {p:g}": (r.w_path, r.w_ray) for p, r in runs.items()},
            {f"p = {p:g}": (r.v_path, r.v_ray) for p, r in runs.items()},
            {f"p = {p:g}": (r.traj.iters, r.traj.max_softmax.numpy()) for p, r in runs.items()},
            {f"p = {p:g}": (r.traj.iters, r.traj.logistic_prob.numpy()) for p, r in runs.items()}))
        rd.write_report(_joint_report(res))
        rd.write_summary(res.summary)
        res.out = rd.path
    return res


def _joint_report(res: JointResult) -> str:
    lines = ["# E2 — joint ℓp-JointGD on the two-sample instance", "",
             "n=2, T=3, d=2, z_i = x_{i1} (token 0), W(0)=0, v(0)=0, normalised MD (W and v normalised separately), "
             f"η = {res.config.lr}.", "",
             "| p | iterations | tokens α | spec | match | D(W, W^mm) | D(v, v^mm) | softmax ≥ .99 at k | "
             "logistic ≥ .99 at k | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in res.summary["per_p"].items():
        m = s["matches_spec"]
        lines.append(f"| {key} | {s['iterations']} | {tuple(s['alpha'])} | {tuple(s['expected']) if s['expected'] else '–'} | "
                     f"{'yes' if m else ('NO' if m is False else '–')} | {_fmt(s['divergence_W_final'])} | "
                     f"{_fmt(s['divergence_v_final'])} | {s['first_iteration_max_softmax_ge_0.99']} | "
                     f"{s['first_iteration_logistic_prob_ge_0.99']} | {s['verdict']} |")
    lines += ["", f"Wall time {res.seconds:.1f} s. Figure: `joint.png`; data: `joint_history.csv`."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# the demo: a reduced E1 (convergence + matrix + path) and E2

#: Reduced iterations of the demo (a tenth to a fifth of the protocol's), per p.
DEMO_ITERATIONS: dict[float, int] = {1.75: 300, 2.0: 400, 3.0: 3000}


@dataclass(frozen=True)
class DemoConfig(_Config):
    """The demo: ``n_seeds`` seeds of E1 (matrix included) at ``iterations`` (None → the
    reduced :data:`DEMO_ITERATIONS`; an int or a mapping p → int as for E1, whose keys are the
    p's), the E1 path at the first and last p, and E2 at every p."""

    n_seeds: int = 20
    iterations: Any = None
    solver: str = "auto"

    def __post_init__(self) -> None:
        cls = type(self)
        object.__setattr__(self, "n_seeds", _int(cls, "n_seeds", self.n_seeds, 1))
        it = dict(DEMO_ITERATIONS) if self.iterations is None else self.iterations
        ps = tuple(it) if isinstance(it, Mapping) else tuple(DEMO_ITERATIONS)
        object.__setattr__(self, "iterations", _iterations(cls, it, _ps(cls, "iterations keys", ps)))
        _choice(cls, "solver", self.solver, SOLVERS)

    def ps(self) -> tuple[float, ...]:
        return tuple(self.iterations) if isinstance(self.iterations, dict) else tuple(DEMO_ITERATIONS)

    def parts(self) -> tuple[MatrixConfig, PathConfig, JointConfig]:
        ps = self.ps()
        path_ps = tuple(dict.fromkeys((ps[0], ps[-1])))
        return (MatrixConfig(ps=ps, iterations=self.iterations, n_seeds=self.n_seeds, solver=self.solver),
                PathConfig(ps=path_ps, iterations=self.iterations, solver=self.solver),
                JointConfig(ps=ps, iterations=self.iterations, solver=self.solver,
                            expected_tokens={k: v for k, v in SPEC_JOINT_TOKENS.items() if k in ps}))


@dataclass
class DemoResult:
    config: DemoConfig
    matrix: MatrixResult
    path: PathResult
    joint: JointResult
    summary: dict
    out: Path | None = None


def run_demo(config: DemoConfig | Mapping | None = None, *, out: str | Path | None = None,
             progress: ProgressFn | None = None, **overrides: Any) -> DemoResult:
    """The demo (see :class:`DemoConfig`); with ``out``, a run folder holding e1/, path/, e2/."""
    cfg = _coerce(config, DemoConfig, overrides)
    t0 = time.perf_counter()
    mcfg, pcfg, jcfg = cfg.parts()
    rd = None
    if out is not None:
        from attnopt.report.runs import as_run_dir, open_run_dir

        rd = as_run_dir(out, cfg, experiment="demo")
        sub = {name: open_run_dir(rd.path / name, c, experiment=exp)
               for name, c, exp in (("e1", mcfg, "e1-matrix"), ("path", pcfg, "e1-path"), ("e2", jcfg, "e2-joint"))}
    m = run_matrix(mcfg, out=rd and sub["e1"], progress=progress)
    pr = run_path(pcfg, out=rd and sub["path"], progress=progress)
    j = run_joint(jcfg, out=rd and sub["e2"], progress=progress)
    wall = time.perf_counter() - t0
    below = m.summary["matched_is_smallest"]
    summary = {"experiment": "demo", "wall_seconds": wall, "matched_is_smallest": below,
               "e2_tokens_match_spec": j.summary["all_match_spec"], "matrix": m.table,
               "e2": {k: {"alpha": v["alpha"], "expected": v["expected"]} for k, v in j.summary["per_p"].items()}}
    res = DemoResult(cfg, m, pr, j, summary)
    if rd is not None:
        rd.write_report(_demo_report(res, wall))
        rd.write_summary(summary)
        res.out = rd.path
    return res


def _demo_report(res: DemoResult, wall: float) -> str:
    below = res.summary["matched_is_smallest"]
    return "\n".join([
        "# attnopt demo — reduced E1 and E2", "",
        f"{res.config.n_seeds} seeds, iterations {res.config.iterations}; full protocol: `attnopt synthetic matrix` "
        "(100 seeds, 1500/2000/20000).", "",
        "## E1 matrix (final values)", "", matrix_markdown(res.matrix), "",
        "Matched q = p smallest in its row: " + ", ".join(f"p={k}: {'yes' if v else 'NO'}" for k, v in below.items()),
        "", "## E2 selected tokens", "",
        "\n".join(f"- p = {k}: α = {tuple(v['alpha'])}, spec {tuple(v['expected']) if v['expected'] else '–'}"
                  for k, v in res.joint.summary["per_p"].items()), "",
        "Details: [`e1/report.md`](e1/report.md), [`path/report.md`](path/report.md), [`e2/report.md`](e2/report.md); "
        "figures `e1/convergence.png`, `e1/matrix.png`, `e1/rate.png`, `path/path.png`, `e2/joint.png`.", "",
        f"Wall time {wall:.1f} s.",
    ])


__all__ = [
    "PROTOCOL_ITERATIONS", "SPEC_JOINT_TOKENS", "SPEC_MATRIX_P3", "ConfigError", "default_iterations",
    "ConvergenceConfig", "MatrixConfig", "PathConfig", "JointConfig",
    "SVMOutcome", "SVMCache", "RateFit", "fit_rate",
    "PRun", "ConvergenceResult", "MatrixResult", "PathRun", "PathResult", "JointRun", "JointResult",
    "run_convergence", "run_matrix", "run_path", "run_joint", "matrix_markdown",
    "DEMO_ITERATIONS", "DemoConfig", "DemoResult", "run_demo",
]
