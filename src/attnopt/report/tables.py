"""Number formatting and Markdown tables, one formatter for every report and console table."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def fmt(m: float | None, s: float | None = None, digits: int = 3) -> str:
    """``m`` (and ``± s``) with ``digits`` decimals, or significant digits below 0.01;
    "n/a" for a missing or non-finite mean."""
    if m is None or not math.isfinite(m):
        return "n/a"
    f = f"{m:.{digits}g}" if abs(m) < 1e-2 and m != 0 else f"{m:.{digits}f}"
    if s is None or not math.isfinite(s):
        return f
    g = f"{s:.{digits}g}" if abs(s) < 1e-2 and s != 0 else f"{s:.{digits}f}"
    return f"{f} ± {g}"


def sample_stats(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample standard deviation (ddof = 1; NaN for a single value), n) of the finite
    values; None and non-finite entries are skipped, and no values give (NaN, NaN, 0)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(vals) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage with ``digits`` decimals ("–" when missing)."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    return f"{100 * x:.{digits}f}"


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
