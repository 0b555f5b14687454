"""E4-style analysis of trained ViT members: |w| statistics of the Q, K, V (and O, MLP) weights,
histograms, and test accuracy after magnitude pruning; the ℓ1.1-vs-Adam comparison table and
histogram figure over several ``vision train`` run folders.

For each matrix type, pooled over blocks (per member): entries, the count with |w| above
``threshold`` (the paper's E4 count used 0.06), the fraction below ``near_zero``, max |w| and
mean |w|.  Pruning zeroes, per member and per block matrix (Q, K, V, O, MLP in/out
separately), the ``level`` fraction of entries of smallest |w|; embeddings, LayerNorms and the
head are never pruned.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from attnopt.models.sparsity import abs_stats
from attnopt.models.sparsity import magnitude_prune_ as prune_
from attnopt.models.vit import EnsembleViT
from attnopt.report.tables import sample_stats

MATRIX_TYPES = ("Q", "K", "V", "O", "MLP")
#: |w| histogram bin edges: 0, then log-spaced from 1e-6 to 10 (40 bins)
HIST_EDGES = np.concatenate([[0.0], np.logspace(-6, 1, 40)])


def _pooled(model: EnsembleViT, k: int) -> dict[str, torch.Tensor]:
    mats = model.attention_matrices()
    return {t: torch.cat([m[k].detach().flatten().double().cpu() for m in mats[t]]) for t in MATRIX_TYPES}


def weight_stats(model: EnsembleViT, k: int, threshold: float, near_zero: float) -> dict[str, dict]:
    """Per matrix type of member k: entries, above_threshold, frac_near_zero, max_abs, mean_abs, hist."""
    out = {}
    for t, w in _pooled(model, k).items():
        counts, _ = np.histogram(np.clip(w.abs().numpy(), 0.0, HIST_EDGES[-1]), bins=HIST_EDGES)
        out[t] = {**abs_stats(w, threshold, near_zero), "hist": counts.tolist()}
    return out


def magnitude_prune_(model: EnsembleViT, fraction: float) -> None:
    """Zero, per member, the ``fraction`` smallest-|w| entries of every block matrix, in place
    (:func:`attnopt.models.sparsity.magnitude_prune_` with the member axis as the group)."""
    prune_((w for mats in model.attention_matrices().values() for w in mats), fraction, groups=1)


def pruning_curves(model: EnsembleViT, evaluate_acc, levels: Sequence[float]) -> list[list[float]]:
    """Per level, the per-member accuracies ``evaluate_acc(model)`` after pruning to that level
    (the weights are restored afterwards)."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = []
    try:
        for lvl in levels:
            magnitude_prune_(model, float(lvl))
            rows.append([float(a) for a in evaluate_acc(model)])
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(saved[n])
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
    return rows


#: (mean, sample std (NaN for one value), n) of the finite values
mean_std = sample_stats


def histogram_figure(groups: dict[str, list[dict]], reference: dict[str, list[dict]] | None = None,
                     types: Sequence[str] = ("Q", "K", "V")):
    """One panel per matrix type: the distribution of |w| (fraction of entries per log bin,
    mean over members) for each run label in ``groups`` (label → member weight stats), and
    dashed, the ``reference`` ones (e.g. the initial weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    centers = np.sqrt(HIST_EDGES[1:-1] * HIST_EDGES[2:])
    for ax, t in zip(axes, types):
        for (label, stats), ls in [(g, "-") for g in groups.items()] + [(g, "--") for g in (reference or {}).items()]:
            h = np.mean([np.asarray(s[t]["hist"], float) / s[t]["entries"] for s in stats], axis=0)
            ax.step(centers, h[1:], where="mid", ls=ls, label=f"{label} (n={len(stats)})")
        ax.axvline(stats[0][t]["threshold"], color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"|w| of {t} (all blocks)")
        ax.set_title(t)
    axes[0].set_ylabel("fraction of entries")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["weight_stats", "magnitude_prune_", "pruning_curves", "histogram_figure", "mean_std", "MATRIX_TYPES",
           "HIST_EDGES"]
