"""Configurations of the synthetic experiments (E1 convergence, matrix, path; E2 joint).

Every config is a frozen dataclass deriving from :class:`attnopt.config.ConfigMixin`; its
values are checked by :func:`validate`, one checker per field name shared by every config (a
field means the same thing wherever it appears), so an unknown key or a bad value is a
:class:`~attnopt.config.ConfigError` naming the config class and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from attnopt.config import (ConfigError, ConfigMixin, check_bool, check_choice, check_float, check_int, check_p,
                            check_ps, check_seeds, config_error)
from attnopt.data.synthetic import INITS, QUERIES
from attnopt.experiments.synthetic.md import DEFAULT_EPS, STEPS
from attnopt.mirror import check_p as mirror_check_p

#: Iterations of the published protocol per p (E1 and E2).
PROTOCOL_ITERATIONS: dict[float, int] = {1.75: 1500, 2.0: 2000, 3.0: 20000}
#: Tokens (0-indexed, one per sample) the spec reports for E2.
SPEC_JOINT_TOKENS: dict[float, tuple[int, int]] = {1.75: (1, 0), 2.0: (1, 0), 3.0: (0, 0)}
#: The spec's read-off of the authors' p = 3 matrix panel at 20,000 iterations (q -> D).
SPEC_MATRIX_P3: dict[float, float] = {3.0: 0.005, 2.0: 0.18, 1.75: 0.21}
SOLVERS = ("auto", "fast", "cvxpy")


def default_iterations(p: float) -> int:
    """Iterations for p: the protocol's where defined (1.75 → 1,500; 2 → 2,000; 3 → 20,000).

    Elsewhere: 1,500 for p < 1.75; geometric interpolation between the protocol points for
    1.75 < p < 3 (rounded to 100); 20,000 for p > 3 (a compute cap, not a convergence claim).
    """
    p = mirror_check_p(p)
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


def lookup(mapping: Mapping[float, Any], p: float, default: Any = None) -> Any:
    """``mapping[p]`` with the key matched up to 1e-12 (p's are floats)."""
    for k, v in mapping.items():
        if math.isclose(float(k), p, rel_tol=0, abs_tol=1e-12):
            return v
    return default


def check_iterations(owner: Any, name: str, val: Any, ps: tuple[float, ...]) -> Any:
    """None (the protocol's), an int ≥ 1 for every p, or a mapping p → int ≥ 1 covering ``ps``."""
    if val is None:
        return None
    if isinstance(val, Mapping):
        out = {}
        for k, v in val.items():
            key = check_p(owner, f"{name} key", float(k) if isinstance(k, str) else k)
            out[key] = check_int(owner, f"{name}[{k}]", v, 1)
        missing = [p for p in ps if lookup(out, p) is None]
        if missing:
            raise config_error(owner, f"{name} has no entry for p = {missing} (give an int, a full mapping, or None)")
        return out
    return check_int(owner, name, val, 1)


def _check_entries(owner: Any, name: str, val: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    try:
        pairs = tuple(tuple(int(i) for i in e) for e in val)
    except (TypeError, ValueError):
        raise config_error(owner, f"{name} must be two (row, col) index pairs, got {val!r}") from None
    if len(pairs) != 2 or any(len(e) != 2 for e in pairs):
        raise config_error(owner, f"{name} must be two (row, col) index pairs, got {val!r}")
    for r, c in pairs:
        if not (0 <= r < owner.d and 0 <= c < owner.d):
            raise config_error(owner, f"entry ({r}, {c}) is outside the {owner.d}x{owner.d} matrix W")
    return pairs  # type: ignore[return-value]


def _check_expected(owner: Any, name: str, val: Any) -> dict:
    exp = SPEC_JOINT_TOKENS if val is None else val
    if not isinstance(exp, Mapping):
        raise config_error(owner, f"{name} must map p to a token pair, got {exp!r}")
    try:
        return {float(k): tuple(int(t) for t in v) for k, v in exp.items()}
    except (TypeError, ValueError):
        raise config_error(owner, f"{name} must map p to a tuple of token indices, got {exp!r}") from None


def _optional(check: Callable) -> Callable:
    return lambda o, n, v: None if v is None else check(o, n, v)


#: One checker per field name, applied in this order (later checks may read earlier fields).
CHECKS: dict[str, Callable[[Any, str, Any], Any]] = {
    "seed": lambda o, n, v: check_int(o, n, v, 0),
    "seeds": _optional(check_seeds),
    "n_seeds": lambda o, n, v: check_int(o, n, v, 1),
    "seed_start": lambda o, n, v: check_int(o, n, v, 0),
    "ps": check_ps,
    "qs": _optional(check_ps),
    "iterations": lambda o, n, v: check_iterations(o, n, v, o.ps),
    "n": lambda o, n, v: check_int(o, n, v, 1),
    "T": lambda o, n, v: check_int(o, n, v, 2),
    "d": lambda o, n, v: check_int(o, n, v, 1),
    "lr": lambda o, n, v: check_float(o, n, v, gt=0),
    "normalize": check_bool,
    "eps": lambda o, n, v: check_float(o, n, v, ge=0),
    "step": lambda o, n, v: check_choice(o, n, v, STEPS),
    "init": lambda o, n, v: check_choice(o, n, v, INITS),
    "init_std": lambda o, n, v: check_float(o, n, v, ge=0),
    "query": lambda o, n, v: check_choice(o, n, v, QUERIES),
    "entries": _check_entries,
    "solver": lambda o, n, v: check_choice(o, n, v, SOLVERS),
    "tol": lambda o, n, v: check_float(o, n, v, gt=0),
    "n_log": lambda o, n, v: check_int(o, n, v, 2),
    "fit_from": _optional(lambda o, n, v: check_int(o, n, v, 2)),
    "drop_unconverged": check_bool,
    "verdicts": check_bool,
    "alpha_from": lambda o, n, v: check_choice(o, n, v, ("p", "q")),
    "expected_tokens": _check_expected,
}


def validate(cfg: Any) -> None:
    """Check and normalise every field of the frozen config ``cfg`` that has a checker."""
    names = {f.name for f in fields(cfg)}
    for name, check in CHECKS.items():
        if name in names:
            object.__setattr__(cfg, name, check(cfg, name, getattr(cfg, name)))


class Iterations:
    """``iterations_for(p)`` of a config with ``iterations`` (None, an int or a mapping)."""

    iterations: Any

    def iterations_for(self, p: float) -> int:
        if self.iterations is None:
            return default_iterations(p)
        if isinstance(self.iterations, dict):
            k = lookup(self.iterations, p)
            if k is None:  # pragma: no cover - validated
                raise KeyError(p)
            return k
        return self.iterations


@dataclass(frozen=True)
class ConvergenceConfig(Iterations, ConfigMixin):
    """E1 configuration (defaults = the spec's protocol).

    ``iterations``: None → :func:`default_iterations` per p; an int for every p; or a mapping
    p → int.  ``seeds``: explicit seeds, else ``seed_start .. seed_start + n_seeds − 1``.
    ``init``: W(0) = 0 ("zeros") or N(0, init_std²) entries ("normal"; the published aggregate
    runs use std 1, the single-seed path run W(0) = 0).  ``query``: z_i its own random vector
    ("random", published) or the first token ("first").  ``n_log``: size of the log-spaced grid
    on which W(k) is stored.  ``fit_from``: first iteration used by the rate fit (None → where
    the mean max-softmax reaches 0.99, see :func:`~attnopt.experiments.synthetic.rate.fit_window`).
    ``drop_unconverged``: exclude seeds whose SVM certificate did not converge from the means
    (infeasible seeds are always excluded).  ``step``: "exact" (default: the gradient without
    cancellation, exactly normalised) or "published" (autograd, G/(‖G‖_q + ε)); ``eps``: the ε
    of the published step (float64 machine epsilon, as published); see
    :mod:`attnopt.experiments.synthetic.md`.
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
    step: str = "exact"
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
        validate(self)

    def seed_list(self) -> tuple[int, ...]:
        if self.seeds is not None:
            return self.seeds
        return tuple(range(self.seed_start, self.seed_start + self.n_seeds))


@dataclass(frozen=True)
class MatrixConfig(ConvergenceConfig):
    """E1-matrix configuration: a :class:`ConvergenceConfig` plus the SVM exponents ``qs``
    (None → the trained ``ps``) and ``alpha_from``: "p" (default) solves the ℓq-AttSVM for the
    tokens selected by the p-run, so both sides of the divergence share α (and W(0)); "q" uses
    the q-run's tokens, as the published code did (then every q must be among the ``ps``)."""

    qs: tuple[float, ...] | None = None
    alpha_from: str = "p"

    def __post_init__(self) -> None:
        validate(self)
        if self.alpha_from == "q":
            missing = [q for q in self.q_list() if lookup(dict.fromkeys(self.ps, True), q) is None]
            if missing:
                raise config_error(self, f"alpha_from='q' needs a trained run for every q; missing q = {missing}")

    def q_list(self) -> tuple[float, ...]:
        return self.qs if self.qs is not None else self.ps

    def convergence(self) -> ConvergenceConfig:
        """The E1 configuration this matrix trains."""
        names = {f.name for f in fields(ConvergenceConfig)}
        return ConvergenceConfig.from_dict({k: v for k, v in self.to_dict().items() if k in names})


@dataclass(frozen=True)
class PathConfig(Iterations, ConfigMixin):
    """E1-path configuration: one seed, W(0) = 0 by default, entries W[1,2] and W[3,4]."""

    seed: int = 1
    ps: tuple[float, ...] = (1.75, 3.0)
    iterations: Any = None
    n: int = 6
    T: int = 8
    d: int = 10
    lr: float = 0.1
    normalize: bool = True
    step: str = "exact"
    eps: float = DEFAULT_EPS
    init: str = "zeros"
    init_std: float = 1.0
    query: str = "random"
    entries: tuple[tuple[int, int], tuple[int, int]] = ((1, 2), (3, 4))
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 1000

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class JointConfig(Iterations, ConfigMixin):
    """E2 configuration: the spec's fixed instance, W(0) = 0, v(0) = 0, η = 0.1.

    ``expected_tokens``: p → selected tokens to check against (default: the spec's)."""

    ps: tuple[float, ...] = (1.75, 2.0, 3.0)
    iterations: Any = None
    lr: float = 0.1
    normalize: bool = True
    step: str = "exact"
    eps: float = DEFAULT_EPS
    solver: str = "auto"
    tol: float = 1e-6
    n_log: int = 1000
    expected_tokens: Any = None

    def __post_init__(self) -> None:
        validate(self)

    def expected_for(self, p: float) -> tuple[int, ...] | None:
        return lookup(self.expected_tokens, p)


__all__ = ["PROTOCOL_ITERATIONS", "SPEC_JOINT_TOKENS", "SPEC_MATRIX_P3", "SOLVERS", "ConfigError",
           "default_iterations", "check_iterations", "lookup", "validate", "Iterations", "DEFAULT_EPS", "ConvergenceConfig", "MatrixConfig",
           "PathConfig", "JointConfig"]
