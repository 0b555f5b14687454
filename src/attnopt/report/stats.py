"""The statistics of the result tables, in one place: Student-t intervals, Welch's two-sample
test with the interval of the difference, Holm's step-down correction, and the verdict of a
directional claim ("cell A's metric is higher than cell B's").

A verdict compares **two cells' own samples** (Welch's t-test, unequal variances), never a
cell's mean against a published number: a paper's mean measured under another protocol or
scale is context, not a reference.  Values that are missing or not finite are dropped and
counted; a cell with fewer than two finite values gives no test ("–").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05


def finite(values: Iterable) -> tuple[np.ndarray, int]:
    """(the finite values as floats, how many were missing or not finite)."""
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    keep = np.isfinite(arr)
    return arr[keep], int((~keep).sum())


def t_interval(vals, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t confidence interval of the mean (nan for fewer than 2 values)."""
    a = np.asarray(vals, dtype=float)
    if a.size < 2:
        return float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + level / 2, a.size - 1)) * float(a.std(ddof=1)) / math.sqrt(a.size)
    return float(a.mean()) - half, float(a.mean()) + half


@dataclass(frozen=True)
class Welch:
    """Welch's test of mean(a) − mean(b): the difference, its ``level`` interval (Welch–
    Satterthwaite degrees of freedom), t, df and the two-sided p-value; n and dropped per side."""

    diff: float
    ci_lo: float
    ci_hi: float
    t: float
    df: float
    p: float
    n_a: int
    n_b: int
    dropped_a: int = 0
    dropped_b: int = 0

    @property
    def testable(self) -> bool:
        return math.isfinite(self.p)


def welch(a: Iterable, b: Iterable, level: float = 0.95) -> Welch:
    """Welch's two-sample t-test of the finite values of ``a`` against those of ``b``."""
    xa, da = finite(a)
    xb, db = finite(b)
    na, nb = xa.size, xb.size
    nan = float("nan")
    if na < 2 or nb < 2:
        diff = float(xa.mean() - xb.mean()) if na and nb else nan
        return Welch(diff, nan, nan, nan, nan, nan, na, nb, da, db)
    va, vb = xa.var(ddof=1) / na, xb.var(ddof=1) / nb
    diff = float(xa.mean() - xb.mean())
    se2 = va + vb
    if se2 == 0.0:  # both samples constant: the difference is exact
        p = 1.0 if diff == 0.0 else 0.0
        return Welch(diff, diff, diff, math.copysign(math.inf, diff) if diff else 0.0, nan, p, na, nb, da, db)
    df = se2**2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / math.sqrt(se2)
    p = float(2 * sps.t.sf(abs(t), df))
    half = float(sps.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    return Welch(diff, diff - half, diff + half, float(t), float(df), p, na, nb, da, db)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries stay NaN
    and do not count in the family."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    m = len(idx)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def verdict(test: Welch, p_adjusted: float, higher: bool = True, alpha: float = ALPHA) -> str:
    """``holds`` (significant in the claimed direction), ``fails`` (significant the other way),
    ``inconclusive`` (not significant), or ``–`` (no test: fewer than two values on a side)."""
    if not math.isfinite(p_adjusted):
        return "–"
    if p_adjusted >= alpha:
        return "inconclusive"
    return "holds" if (test.diff > 0) == higher else "fails"


__all__ = ["ALPHA", "Welch", "welch", "holm", "verdict", "t_interval", "finite"]
