"""Matplotlib figures of the IMDB / SST-2 experiments (Agg backend; save with ``RunDir.save_figure``).

Every function takes plain arrays (no experiment objects) and returns a ``Figure``:

* :func:`epoch_curves_figure` — E3/E6: train, validation and test accuracy per epoch, one line per run;
* :func:`weight_histograms_figure` — E4: histograms of |w| per matrix type, one line per run;
* :func:`pruning_figure` — E4: accuracy against the fraction of each block matrix pruned;
* :func:`heatmap_figure` — E5: tokens shaded by their normalised [CLS] attention, one panel per run;
* :func:`band_curves_figure` — campaign: mean accuracy per epoch with a ±1 std band, per cell;
* :func:`binned_histograms_figure` — campaign: mean fraction of |w| per (log) bin, per cell;
* :func:`probe_maps_figure` — campaign E5: one row per cell, the probes' word pieces shaded by
  their mean normalised attention, the marked word underlined.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: the colour map of the E5 heat maps (the HTML version uses the same)
HEATMAP_CMAP = "Greens"


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def epoch_curves_figure(curves: Mapping[str, Mapping[str, np.ndarray]], *,
                        panels: Sequence[tuple[str, str]] = (("train_acc", "train accuracy"),
                                                             ("val_acc", "validation accuracy"),
                                                             ("test_acc", "test accuracy")),
                        title: str = ""):
    """One panel per history column (epochs on x), one line per run ``label -> {column: values}``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    colors = _colors(len(curves))
    for ax, (col, name) in zip(axes[0], panels):
        for (label, hist), c in zip(curves.items(), colors):
            if col in hist:
                ax.plot(hist["epoch"], hist[col], color=c, label=label, lw=1.4)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def weight_histograms_figure(pooled: Mapping[str, Mapping[str, np.ndarray]], types: Sequence[str],
                             threshold: float):
    """Per matrix type, log-count histograms of |w| (``pooled[label][type]``), the threshold dashed."""
    fig, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.2), squeeze=False)
    for ax, t in zip(axes[0], types):
        hi = max(float(p[t].max()) for p in pooled.values()) or 1.0
        bins = np.linspace(0.0, hi, 60)
        for lab, p in pooled.items():
            ax.hist(p[t], bins=bins, histtype="step", log=True, label=lab)
        ax.axvline(threshold, color="k", lw=0.8, ls="--")
        ax.set_title(f"|W_{t}|")
        ax.set_xlabel("|w|")
    axes[0][0].set_ylabel("entries (log)")
    axes[0][-1].legend(fontsize=7)
    return fig


def pruning_figure(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], split: str):
    """Accuracy (%) against the pruned fraction, ``curves[label] = (levels, accuracies)``."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lab, (levels, acc) in curves.items():
        ax.plot(levels, [100 * a for a in acc], marker="o", label=lab)
    ax.set_xlabel("fraction of each block matrix pruned (smallest |w|)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.legend(fontsize=7)
    return fig


def heatmap_figure(tokens_per_row: Sequence[Sequence[str]], scores_per_row: Sequence[Sequence[float]],
                   titles: Sequence[str], wrap: int = 16):
    """One panel per run, tokens in wrapped lines, cells shaded by their score in [0, 1]."""
    n_lines = [max(1, math.ceil(len(t) / wrap)) for t in tokens_per_row]
    fig, axes = plt.subplots(len(tokens_per_row), 1, figsize=(wrap * 0.75, sum(0.45 * k + 0.5 for k in n_lines)),
                             squeeze=False, gridspec_kw={"height_ratios": [k + 1 for k in n_lines]})
    for ax, toks, scores, title, k in zip(axes[:, 0], tokens_per_row, scores_per_row, titles, n_lines):
        grid = np.full((k, wrap), np.nan)
        for j, v in enumerate(scores):
            grid[j // wrap, j % wrap] = v
        ax.imshow(np.ma.masked_invalid(grid), cmap=HEATMAP_CMAP, vmin=-0.05, vmax=1.05, aspect="auto")
        for j, t in enumerate(toks):
            ax.text(j % wrap, j // wrap, t, ha="center", va="center", fontsize=7,
                    color="white" if scores[j] > 0.6 else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def band_curves_figure(panels: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], ylabel: str = "test accuracy (%)"):
    """One panel per ``panels`` key, one line per cell: ``{epoch, mean, std, count}`` arrays
    (fractions; drawn in %), the band mean ± std over the trials still running."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.8), squeeze=False)
    for ax, (title, cells) in zip(axes[0], panels.items()):
        for (label, c), col in zip(cells.items(), _colors(len(cells))):
            m, s = 100 * np.asarray(c["mean"]), 100 * np.asarray(c["std"])
            ax.plot(c["epoch"], m, color=col, lw=1.3, label=f"{label} (n={int(np.max(c['count']))})")
            ax.fill_between(c["epoch"], m - s, m + s, color=col, alpha=0.2, lw=0)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def binned_histograms_figure(edges: np.ndarray, cells: Mapping[str, Mapping[str, np.ndarray]],
                             types: Sequence[str], threshold: float):
    """Per matrix type, the fraction of entries per |w| bin (log |w| axis; the first bin, from 0,
    is drawn at the second edge / 10), one step line per cell; the threshold dashed."""
    edges = np.asarray(edges, dtype=float)
    left = edges.copy()
    left[0] = edges[1] / 10 if edges.size > 1 else 1e-6
    fig, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.2), squeeze=False)
    for ax, t in zip(axes[0], types):
        for (label, h), col in zip(cells.items(), _colors(len(cells))):
            if t in h:
                ax.stairs(h[t], left, color=col, label=label)
        ax.axvline(threshold, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"|W_{t}|")
        ax.set_xlabel("|w|")
    axes[0][0].set_ylabel("fraction of entries")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    return fig


def probe_maps_figure(probes: Sequence[Mapping], maps: Mapping[str, Sequence[np.ndarray]]):
    """``probes``: per probe its ``tokens`` and ``marked`` positions; ``maps``: per row label
    (a cell), one score array in [0, 1] per probe.  One heat-map row per cell, the probes side by
    side (a blank column between two), each piece written in its cell, the marked ones in bold."""
    cols, labels, bold = [], [], []
    for k, p in enumerate(probes):
        if k:
            cols.append(None)
            labels.append("")
            bold.append(False)
        cols += [(k, j) for j in range(len(p["tokens"]))]
        labels += list(p["tokens"])
        bold += [j in p["marked"] for j in range(len(p["tokens"]))]
    rows = list(maps)
    grid = np.full((len(rows), len(cols)), np.nan)
    for r, name in enumerate(rows):
        for c, kj in enumerate(cols):
            if kj is not None:
                grid[r, c] = maps[name][kj[0]][kj[1]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.62 * len(cols) + 2.5), 0.5 * len(rows) + 1.2))
    ax.imshow(np.ma.masked_invalid(grid), cmap=HEATMAP_CMAP, vmin=-0.05, vmax=1.05, aspect="auto")
    for r in range(len(rows)):
        for c, text in enumerate(labels):
            if cols[c] is not None:
                ax.text(c, r, text, ha="center", va="center", fontsize=7, fontweight="bold" if bold[c] else "normal",
                        color="white" if grid[r, c] > 0.6 else "black")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks([])
    ax.set_title("E5: last-layer [CLS] attention, min–max over the sentence (mean over seeds); marked word in bold",
                 fontsize=8, loc="left")
    fig.tight_layout()
    return fig


__all__ = ["epoch_curves_figure", "weight_histograms_figure", "pruning_figure", "heatmap_figure", "band_curves_figure",
           "binned_histograms_figure", "probe_maps_figure", "HEATMAP_CMAP"]
