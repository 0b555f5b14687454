"""The figures of the convex-attention experiments, saved into a run folder."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def accuracy_figure(run, histories: dict[str, list[dict]], p: int, train_fraction: float) -> None:
    """accuracy.png: train (dashed) and test (solid) accuracy of every model against its steps."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, h) in enumerate(histories.items()):
        steps = [max(r["step"], 1) for r in h]
        ax.plot(steps, [r["train_acc"] for r in h], color=f"C{i}", ls="--", label=f"{name} train")
        ax.plot(steps, [r["test_acc"] for r in h], color=f"C{i}", ls="-", label=f"{name} test")
    ax.set_xscale("log")
    ax.set_xlabel("optimisation steps (AdamW minibatch steps / FISTA iterations)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"a ÷ b mod {p}, train fraction {train_fraction}")
    ax.axhline(0.99, color="gray", lw=0.5)
    ax.legend(fontsize=7)
    run.save_figure("accuracy.png", fig)


def objective_figure(run, histories: dict, opt: float) -> None:
    """objective.png: left, the distance to the convex optimum of the two models sharing the
    objective; right, every model's training objective, against wall time."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name in ("convex", "simplex"):
        h = histories[name]
        ax.plot([max(r["time"], 1e-4) for r in h], [r["objective"] - opt + 1e-12 * abs(opt) for r in h], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("objective − convex optimum")
    ax.set_title("same objective: convex (FISTA) vs simplex (Adam)")
    ax.legend()
    ax = axes[1]
    for name in ("convex", "simplex", "softmax"):
        h = histories[name]
        ax.plot([max(r["time"], 1e-4) for r in h], [r["objective"] for r in h],
                label=f"{name}" + (" (own weight-decay objective)" if name == "softmax" else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("training objective")
    ax.legend(fontsize=8)
    run.save_figure("objective.png", fig)


def attention_figure(run, prob, Z, simplex, softmax, te: dict, num: int = 3) -> None:
    """attention.png: per-position attention of the three students on ``num`` test sentences
    (convex: row norms of Z; simplex: head weights scaled by their output; softmax: the mean map)."""
    row = prob.group_norms(Z).sum(dim=(0, 1))  # (n,)
    with torch.no_grad():
        W = simplex.attention()
        mag = simplex.V.norm(dim=1) * simplex.B.abs().sum(1)
        srow = (mag[:, None] * W).sum(0)
        A = softmax.attention_maps(te["X"][:num], te["mask"][:num])  # (num, heads, n, n)
    fig, axes = plt.subplots(num, 1, figsize=(11, 3.0 * num), squeeze=False)
    fig.subplots_adjust(hspace=1.0)
    for i in range(num):
        m = te["mask"][i]
        L = int(m.sum())
        toks = te["tokens"][i][:L]
        cr = (row[:L] / row[:L].sum().clamp_min(1e-300)).numpy()
        sr = (srow[:L] / srow[:L].sum().clamp_min(1e-300)).numpy()
        qr = A[i].mean(0)[:L, :L].mean(0).numpy()
        ax = axes[i, 0]
        ax.imshow(np.stack([cr, sr, qr]), aspect="auto", cmap="viridis")
        ax.set_yticks(range(3), ["convex (row norms)", "simplex (Σ weights)", "softmax (mean map)"], fontsize=7)
        ax.set_xticks(range(L), toks, rotation=60, fontsize=7)
    fig.suptitle("attention over token positions (test sentences; each row normalised to sum 1)")
    run.save_figure("attention.png", fig)
