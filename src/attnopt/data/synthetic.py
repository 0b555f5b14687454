r"""Synthetic data for the ℓp-AttGD experiments E1 (W only) and E2 (joint W, v).

E1 (one instance per seed; the spec's protocol, seeds 1..100)::

    v ~ N(0, I_d),  Y_i = ±1 w.p. 1/2,  x_{it} ~ N(0, I_d),  z_i ~ N(0, I_d)
    then every token x_{it}, every query z_i and v are rescaled to unit ℓ2 norm.

The draws come from a ``torch.Generator`` seeded with the seed, in the order v, Y, X, Z, and
are drawn in float32 (the published generator's default dtype, so the random numbers are the
same), then cast to the working dtype and normalised there.  ``query="first"`` replaces
z_i by the first token x_{i1} (the self-attention case; Z is still drawn so X does not change).
The initial W(0) is drawn from the same generator *after* the data, so the data of a seed do
not depend on the initialisation, and two runs with different p but the same seed share W(0).

E2 is the fixed two-sample instance of the spec (n=2, T=3, d=2, z_i = x_{i1}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

Query = Literal["random", "first"]
Init = Literal["zeros", "normal"]

QUERIES = ("random", "first")
INITS = ("zeros", "normal")


@dataclass(frozen=True)
class SyntheticData:
    """One synthetic data set, optionally with a leading seed dimension S.

    Shapes: ``X (..., n, T, d)``, ``Y (..., n)`` in {±1}, ``Z (..., n, d)``, ``v (..., d)``,
    ``W0 (..., d, d)`` (the initial key–query matrix).  ``seeds`` lists the seeds along the
    leading dimension (empty for a fixed instance).
    """

    X: torch.Tensor
    Y: torch.Tensor
    Z: torch.Tensor
    v: torch.Tensor
    W0: torch.Tensor
    seeds: tuple[int, ...] = ()

    @property
    def batched(self) -> bool:
        return self.X.ndim == 4

    def seed_slice(self, s: int) -> "SyntheticData":
        """The data of the s-th seed (position along the leading dimension)."""
        if not self.batched:
            raise ValueError("seed_slice needs batched data (a leading seed dimension)")
        return SyntheticData(self.X[s], self.Y[s], self.Z[s], self.v[s], self.W0[s], (self.seeds[s],))


def _check_sizes(n: int, T: int, d: int) -> None:
    for name, val, lo in (("n", n, 1), ("T", T, 2), ("d", d, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {val!r}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def convergence_instance(
    seed: int,
    n: int = 6,
    T: int = 8,
    d: int = 10,
    *,
    query: Query = "random",
    init: Init = "normal",
    init_std: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> SyntheticData:
    """The E1 data of one seed (see the module docstring); W(0) per ``init``/``init_std``."""
    _check_sizes(n, T, d)
    if query not in QUERIES:
        raise ValueError(f"query must be one of {QUERIES}, got {query!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if not (init_std >= 0.0):
        raise ValueError(f"init_std must be >= 0, got {init_std!r}")
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(d, generator=g)
    Y = 2.0 * (torch.randn(n, generator=g) > 0).to(torch.float32) - 1.0
    X = torch.randn(n, T, d, generator=g)
    Z = torch.randn(n, d, generator=g)
    X, Z, v, Y = (_unit(X.to(dtype)), _unit(Z.to(dtype)), _unit(v.to(dtype)), Y.to(dtype))
    if query == "first":
        Z = X[:, 0, :].clone()
    if init == "normal" and init_std > 0:
        W0 = (init_std * torch.randn(d, d, generator=g)).to(dtype)
    else:
        W0 = torch.zeros(d, d, dtype=dtype)
    return SyntheticData(X, Y, Z, v, W0, (int(seed),))


def convergence_batch(seeds: Sequence[int], *args: Any, **kwargs: Any) -> SyntheticData:
    """E1 data of several seeds stacked along a leading seed dimension: ``X (S, n, T, d)``, ...

    The other arguments (``n, T, d``, ``query``, ``init``, ``init_std``, ``dtype``) are those
    of :func:`convergence_instance`, which draws each seed."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must not be empty")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    parts = [convergence_instance(s, *args, **kwargs) for s in seeds]
    stack = lambda name: torch.stack([getattr(p, name) for p in parts])  # noqa: E731
    return SyntheticData(stack("X"), stack("Y"), stack("Z"), stack("v"), stack("W0"), seeds)


def kq_init(seeds: Sequence[int], d: int, m: int, std: float, dtype: torch.dtype = torch.float64):
    """Initial factors ``K, Q (S, d, m)`` with N(0, std²) entries for the (K, Q) run of each seed,
    drawn from a generator seeded with ``seed + 1_000_003`` (the E1 data of the seed are
    untouched; the same seed gives the same factors for every p)."""
    _check_sizes(1, 2, d)
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        raise ValueError(f"m must be an integer >= 1, got {m!r}")
    Ks, Qs = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed) + 1_000_003)
        Ks.append(std * torch.randn(d, m, generator=g))
        Qs.append(std * torch.randn(d, m, generator=g))
    return torch.stack(Ks).to(dtype), torch.stack(Qs).to(dtype)


#: The E2 tokens of the spec (two samples, three tokens each, d = 2).
JOINT_X = (
    ((-2.7, 1.2), (1.4, 2.1), (1.3, -0.1)),
    ((0.4, -2.2), (-1.1, -0.4), (0.9, 0.1)),
)
JOINT_Y = (1.0, -1.0)


def joint_instance(dtype: torch.dtype = torch.float64) -> SyntheticData:
    """The E2 instance: the spec's X, Y = (+1, −1), z_i = x_{i1}, W(0) = 0 and v(0) = 0."""
    X = torch.tensor(JOINT_X, dtype=dtype)
    Y = torch.tensor(JOINT_Y, dtype=dtype)
    Z = X[:, 0, :].clone()
    d = X.shape[-1]
    return SyntheticData(X, Y, Z, torch.zeros(d, dtype=dtype), torch.zeros(d, d, dtype=dtype), ())


__all__ = [
    "SyntheticData",
    "convergence_instance",
    "convergence_batch",
    "joint_instance",
    "kq_init",
    "JOINT_X",
    "JOINT_Y",
    "QUERIES",
    "INITS",
]
