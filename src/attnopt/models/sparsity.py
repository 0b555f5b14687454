r"""Weight sparsity of trained attention models, shared by the IMDB E4 analysis
(:mod:`attnopt.experiments.imdb.sparsity`) and the vision one
(:mod:`attnopt.experiments.vision.analysis`).

* :func:`abs_stats` — statistics of the magnitudes |w| of a pooled set of weights:
  ``entries`` = N, ``above_threshold`` = #{|w| > τ}, ``frac_near_zero`` = #{|w| < ε}/N,
  ``max_abs`` = max |w|, ``mean_abs`` = Σ|w|/N (in float64).
* :func:`magnitude_prune_` — magnitude pruning at level f ∈ [0, 1): in each matrix (or each
  group of it along its leading dimensions, e.g. each member of an ensemble) with N entries,
  k = round(f·N), every entry with |w| ≤ |w|_(k) (the k-th smallest magnitude, so ties at the
  cut go too) is set to 0.
"""

from __future__ import annotations

from typing import Iterable

import torch


def abs_stats(w: torch.Tensor, threshold: float, near_zero: float) -> dict:
    """``entries``, ``above_threshold`` (|w| > threshold), ``threshold``, ``frac_near_zero``
    (|w| < near_zero), ``near_zero``, ``max_abs`` and ``mean_abs`` of the entries of ``w``."""
    a = w.abs()
    return {
        "entries": int(a.numel()), "above_threshold": int((a > threshold).sum()), "threshold": threshold,
        "frac_near_zero": float((a < near_zero).double().mean()), "near_zero": near_zero,
        "max_abs": float(a.max()), "mean_abs": float(a.double().mean()),
    }


@torch.no_grad()
def magnitude_prune_(matrices: Iterable[torch.Tensor], fraction: float, groups: int = 0) -> None:
    """Zero the ``fraction`` smallest-|w| entries of every tensor in ``matrices``, in place.

    ``groups``: how many leading dimensions index independent groups (1 for a weight with a
    leading member axis: each member is pruned on its own entries); 0 prunes each tensor as a
    whole.  A tensor may be a view (e.g. the Q rows of a fused QKV weight): its base changes.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return
    for w in matrices:
        a = w.abs()
        lead = tuple(w.shape[:groups])
        flat = a.reshape(*lead, -1)
        k = int(round(fraction * flat.shape[-1]))
        if k == 0:
            continue
        cut = flat.kthvalue(k, dim=-1, keepdim=True).values
        w.masked_fill_(a <= cut.reshape(*lead, *([1] * (w.ndim - groups))), 0.0)


__all__ = ["abs_stats", "magnitude_prune_"]
