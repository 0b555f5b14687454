"""E4 (weight sparsity) and E5 (token selection) analyses of trained IMDB / SST-2 runs.

E4 — for each weight-matrix type (Q, K, V, the attention output O, and the MLP; each pooled
over blocks): histograms of |w|, the paper's count of entries with |w| > 0.06, the fraction
near zero (|w| < ``near_zero``), the maximum |w|, Hoyer sparsity
``(√n − ‖w‖₁/‖w‖₂) / (√n − 1)`` (0 = all entries equal, 1 = one non-zero), and the accuracy
after magnitude pruning each block weight matrix (Q, K, V, O, MLP-in, MLP-out separately) to
several sparsity levels.  Embeddings, LayerNorms and the head are never pruned.

E5 — the last block's attention from the ``[CLS]`` query, averaged over heads and min–max
normalised over the review's tokens (as in the paper's notebook), drawn as a heat map over
the tokens (HTML and PNG); and a quantitative score on the probe set of
:mod:`attnopt.experiments.sentiment_probe`: on how many reviews the marked sentiment word
gets the most attention among the review's word pieces (``[CLS]``/``[SEP]`` excluded; a
word split into pieces scores the maximum over its pieces), plus, for every pair of runs,
on how many reviews run A gives the marked word a higher normalised score than run B.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnopt.data.reviews import CLS_ID, SEP_ID, load_reviews, load_tokenizer
from attnopt.experiments.imdb import DeviceSplit, evaluate, load_model
from attnopt.experiments.sentiment_probe import ProbeReview, probe_reviews
from attnopt.models.encoder import EncoderClassifier
from attnopt.report.runs import RunDir

#: The paper's E4 threshold on |w| and its counts (ℓ1.1 vs ℓ2, 6-block model, 884,736 entries).
PAPER_THRESHOLD = 0.06
PAPER_E4 = {"K": (18206, 27224), "Q": (13964, 14654), "V": (7643, 10127)}
PRUNE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
MATRIX_TYPES = ("Q", "K", "V", "O", "MLP")


# --------------------------------------------------------------------------- E4


def _pooled(model: EncoderClassifier) -> dict[str, torch.Tensor]:
    mats = model.weight_matrices()
    pooled = {t: torch.cat([m.detach().flatten() for m in mats[t]]) for t in ("Q", "K", "V", "O")}
    pooled["MLP"] = torch.cat([m.detach().flatten() for m in mats["MLP_in"] + mats["MLP_out"]])
    return pooled


def hoyer_sparsity(w: torch.Tensor) -> float:
    """Hoyer's measure (√n − ‖w‖₁/‖w‖₂)/(√n − 1): 0 for equal magnitudes, 1 for one non-zero."""
    w = w.double().flatten()
    n = w.numel()
    l2 = float(w.norm())
    if n < 2 or l2 == 0.0:
        return float("nan")
    return (math.sqrt(n) - float(w.abs().sum()) / l2) / (math.sqrt(n) - 1)


def weight_stats(model: EncoderClassifier, threshold: float = PAPER_THRESHOLD,
                 near_zero: float = 1e-3) -> dict[str, dict]:
    """Per matrix type: entries, count above ``threshold``, fraction near zero, max |w|, Hoyer."""
    out = {}
    for t, w in _pooled(model).items():
        a = w.abs()
        out[t] = {
            "entries": int(a.numel()),
            "above_threshold": int((a > threshold).sum()),
            "threshold": threshold,
            "frac_near_zero": float((a < near_zero).double().mean()),
            "near_zero": near_zero,
            "max_abs": float(a.max()),
            "mean_abs": float(a.double().mean()),
            "hoyer": hoyer_sparsity(w),
        }
    return out


def _prunable(model: EncoderClassifier) -> list[tuple[torch.Tensor, slice | None]]:
    """(weight, row slice) of every block matrix: Q, K, V rows of qkv separately, O, MLP in/out."""
    C = model.cfg.n_embd
    items = []
    for blk in model.blocks:
        w = blk.attn.qkv.weight
        items += [(w, slice(0, C)), (w, slice(C, 2 * C)), (w, slice(2 * C, 3 * C))]
        items += [(blk.attn.proj.weight, None), (blk.mlp.fc1.weight, None), (blk.mlp.fc2.weight, None)]
    return items


@torch.no_grad()
def magnitude_prune_(model: EncoderClassifier, fraction: float) -> None:
    """Zero the ``fraction`` smallest-|w| entries of each block weight matrix, in place."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return
    for w, rows in _prunable(model):
        view = w if rows is None else w[rows]
        k = int(round(fraction * view.numel()))
        if k == 0:
            continue
        cut = view.abs().flatten().kthvalue(k).values
        view.masked_fill_(view.abs() <= cut, 0.0)


def pruning_curve(model: EncoderClassifier, split: DeviceSplit, levels: Sequence[float] = PRUNE_LEVELS,
                  batch_size: int = 500, precision: str = "fp32") -> list[dict]:
    """Accuracy on ``split`` after magnitude pruning to each level (the model is restored after)."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rows = []
    try:
        for lvl in levels:
            model.load_state_dict(saved)
            magnitude_prune_(model, float(lvl))
            loss, acc = evaluate(model, split, batch_size, precision)
            rows.append({"level": float(lvl), "accuracy": acc, "loss": loss})
    finally:
        model.load_state_dict(saved)
    return rows


def _run_label(path: Path, cfg) -> str:
    return f"{cfg.optimizer_label()} s{cfg.size} seed{cfg.seed} ({path.name})"


def sparsity_report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, levels: Sequence[float] = PRUNE_LEVELS,
                    split: str = "test", eval_subset: int | None = None, threshold: float = PAPER_THRESHOLD,
                    near_zero: float = 1e-3, device: str = "cpu", data_root=None, cache=None,
                    prune: bool = True, progress: bool = False) -> dict:
    """E4 over one or more run folders; writes sparsity.csv, pruning.csv, histograms and report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rd = RunDir(out)
    stats_rows, prune_rows, pooled, labels = [], [], [], []
    for path in map(Path, runs):
        model, cfg = load_model(path, device)
        label = _run_label(path, cfg)
        labels.append(label)
        st = weight_stats(model, threshold, near_zero)
        for t, d in st.items():
            stats_rows.append({"run": str(path), "label": label, "optimizer": cfg.optimizer_label(), "matrix": t} | d)
        pooled.append({t: w.abs().cpu().numpy() for t, w in _pooled(model).items()})
        if prune:
            n_eval = eval_subset if eval_subset is not None else cfg.eval_subset
            data = load_reviews(cfg.dataset, cfg.max_len, cfg.subset, n_eval, cfg.data_seed, cfg.val_in_train,
                                cfg.clean_html, data_root=data_root, cache=cache, progress=progress)
            dsplit = DeviceSplit(data.split(split), torch.device(device))
            for r in pruning_curve(model, dsplit, levels):
                prune_rows.append({"run": str(path), "label": label, "split": split} | r)
    rd.write_csv("sparsity.csv", rows=stats_rows)
    if prune_rows:
        rd.write_csv("pruning.csv", rows=prune_rows)

    fig, axes = plt.subplots(1, len(MATRIX_TYPES), figsize=(4 * len(MATRIX_TYPES), 3.2))
    for ax, t in zip(axes, MATRIX_TYPES):
        hi = max(float(p[t].max()) for p in pooled) or 1.0
        bins = np.linspace(0.0, hi, 60)
        for lab, p in zip(labels, pooled):
            ax.hist(p[t], bins=bins, histtype="step", log=True, label=lab)
        ax.axvline(threshold, color="k", lw=0.8, ls="--")
        ax.set_title(f"|W_{t}|" if t != "MLP" else "|W_MLP|")
        ax.set_xlabel("|w|")
    axes[0].set_ylabel("entries (log)")
    axes[-1].legend(fontsize=7)
    rd.save_figure("weight_histograms.png", fig)
    if prune_rows:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for lab in labels:
            rr = [r for r in prune_rows if r["label"] == lab]
            ax.plot([r["level"] for r in rr], [100 * r["accuracy"] for r in rr], marker="o", label=lab)
        ax.set_xlabel("fraction of each block matrix pruned (smallest |w|)")
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.legend(fontsize=7)
        rd.save_figure("pruning.png", fig)

    lines = ["# E4 — weight sparsity", "",
             f"Entries with |w| > {threshold:g} per matrix type, pooled over blocks "
             f"(paper, 6 blocks, ℓ1.1 vs ℓ2: K {PAPER_E4['K'][0]:,} vs {PAPER_E4['K'][1]:,}; "
             f"Q {PAPER_E4['Q'][0]:,} vs {PAPER_E4['Q'][1]:,}; V {PAPER_E4['V'][0]:,} vs {PAPER_E4['V'][1]:,}; "
             "out of 884,736).", "",
             "| run | matrix | entries | > thr | near zero | max abs | Hoyer |", "|---|---|---|---|---|---|---|"]
    for r in stats_rows:
        lines.append(f"| {r['label']} | {r['matrix']} | {r['entries']:,} | {r['above_threshold']:,} | "
                     f"{100 * r['frac_near_zero']:.2f} % | {r['max_abs']:.3f} | {r['hoyer']:.3f} |")
    if prune_rows:
        lines += ["", f"Accuracy ({split} split) after magnitude pruning:", "",
                  "| run | " + " | ".join(f"{lvl:g}" for lvl in levels) + " |", "|---|" + "---|" * len(levels)]
        for lab in labels:
            rr = [r for r in prune_rows if r["label"] == lab]
            lines.append(f"| {lab} | " + " | ".join(f"{100 * r['accuracy']:.2f}" for r in rr) + " |")
    rd.write_report("\n".join(lines))
    return {"stats": stats_rows, "pruning": prune_rows, "out": str(rd.path)}


# --------------------------------------------------------------------------- E5


@torch.no_grad()
def cls_attention(model: EncoderClassifier, ids: Sequence[int], layer: int = -1) -> np.ndarray:
    """Attention from the [CLS] query over the review's tokens, averaged over heads (length T)."""
    device = next(model.parameters()).device
    x = torch.as_tensor([list(ids)], dtype=torch.long, device=device)
    was = model.training
    model.eval()
    maps = model.attention_probs(x)
    model.train(was)
    return maps[layer][0, :, 0, :].mean(0).double().cpu().numpy()


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    return np.zeros_like(x) if hi <= lo else (x - lo) / (hi - lo)


def _token_spans(text: str, max_len: int, tok):
    enc = tok.encode(text)
    n = min(len(enc.ids), max_len)
    return enc.ids[:n], enc.tokens[:n], enc.offsets[:n]


def score_probe(model: EncoderClassifier, reviews: Sequence[ProbeReview] | None = None, max_len: int = 512,
                tokenizer=None, data_root=None) -> list[dict]:
    """Per probe review: normalised attention on the marked word, its rank, and whether it is top."""
    tok = tokenizer if tokenizer is not None else load_tokenizer(data_root)
    reviews = list(reviews) if reviews is not None else probe_reviews()
    rows = []
    for i, r in enumerate(reviews):
        ids, tokens, offsets = _token_spans(r.text, max_len, tok)
        att = minmax(cls_attention(model, ids))
        content = [j for j, t in enumerate(ids) if t not in (CLS_ID, SEP_ID)]
        marked = [j for j in content if r.start <= offsets[j][0] < offsets[j][1] <= r.end]
        if not marked:
            raise ValueError(f"probe review {i}: the marked word {r.word!r} was truncated away or not found")
        word_score = float(max(att[j] for j in marked))
        others = [att[j] for j in content if j not in marked]
        rank = 1 + sum(1 for v in others if v > word_score)
        rows.append({"index": i, "label": r.label, "word": r.word, "text": r.text, "score": word_score,
                     "rank": rank, "top": rank == 1, "n_tokens": len(content)})
    return rows


_CMAP = "Greens"


def _color(v: float) -> str:
    import matplotlib
    import matplotlib.colors as mcolors

    return mcolors.rgb2hex(matplotlib.colormaps[_CMAP](0.05 + 0.9 * float(v))[:3])


def heatmap_html(tokens: Sequence[str], scores: Sequence[float], title: str = "") -> str:
    """An HTML fragment: each word piece on a background shaded by its normalised score."""
    spans = []
    for t, v in zip(tokens, scores):
        fg = "white" if v > 0.6 else "black"
        spans.append(f'<span title="{v:.3f}" style="background:{_color(v)};color:{fg};padding:1px 3px;'
                     f'margin:1px;border-radius:3px;display:inline-block">{html.escape(t)}</span>')
    head = f"<div style='font:12px sans-serif;color:#555'>{html.escape(title)}</div>" if title else ""
    return f"<div style='margin:6px 0'>{head}{''.join(spans)}</div>"


def heatmap_figure(tokens_per_row: Sequence[Sequence[str]], scores_per_row: Sequence[Sequence[float]],
                   titles: Sequence[str], wrap: int = 16):
    """A matplotlib figure: one panel per run, tokens in wrapped lines, cells shaded by score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_lines = [max(1, math.ceil(len(t) / wrap)) for t in tokens_per_row]
    fig, axes = plt.subplots(len(tokens_per_row), 1, figsize=(wrap * 0.75, sum(0.45 * k + 0.5 for k in n_lines)),
                             squeeze=False, gridspec_kw={"height_ratios": [k + 1 for k in n_lines]})
    for ax, toks, scores, title, k in zip(axes[:, 0], tokens_per_row, scores_per_row, titles, n_lines):
        grid = np.full((k, wrap), np.nan)
        for j, v in enumerate(scores):
            grid[j // wrap, j % wrap] = v
        ax.imshow(np.ma.masked_invalid(grid), cmap=_CMAP, vmin=-0.05, vmax=1.05, aspect="auto")
        for j, t in enumerate(toks):
            v = scores[j]
            ax.text(j % wrap, j // wrap, t, ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def attention_report(runs: Sequence[str | os.PathLike], out: str | os.PathLike, texts: Sequence[str] = (),
                     n_probe_maps: int = 6, probe: bool = True, device: str = "cpu", data_root=None) -> dict:
    """E5 over run folders: heat maps (HTML + PNG) for ``texts`` (default: probe reviews) and the probe score."""
    rd = RunDir(out)
    tok = load_tokenizer(data_root)
    models = []
    for path in map(Path, runs):
        model, cfg = load_model(path, device)
        models.append((path, cfg, model, _run_label(path, cfg)))
    if not models:
        raise ValueError("attention-map needs at least one run folder")
    probes = probe_reviews()
    shown = list(texts) if texts else [r.text for r in probes[:n_probe_maps]]

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>[CLS] attention</title></head>"
             "<body style='font-family:sans-serif;max-width:1100px'>",
             "<h2>Last-layer [CLS] attention, averaged over heads, min–max normalised</h2>"]
    pngs = []
    for k, text in enumerate(shown):
        parts.append(f"<h3>Review {k + 1}</h3><p style='color:#333'>{html.escape(text)}</p>")
        toks_rows, score_rows, titles = [], [], []
        for path, cfg, model, label in models:
            ids, tokens, _ = _token_spans(text, cfg.max_len, tok)
            att = minmax(cls_attention(model, ids))
            with torch.no_grad():
                prob = float(torch.sigmoid(model(torch.as_tensor([ids], device=next(model.parameters()).device))))
            title = f"{label} — P(positive) = {prob:.3f}"
            parts.append(heatmap_html(tokens, att, title))
            toks_rows.append(tokens)
            score_rows.append(att)
            titles.append(title)
        pngs.append(str(rd.save_figure(f"attention_{k + 1:02d}.png", heatmap_figure(toks_rows, score_rows, titles))))

    result: dict = {"maps_png": pngs, "out": str(rd.path)}
    if probe:
        per_run = {}
        for path, cfg, model, label in models:
            rows = score_probe(model, probes, cfg.max_len, tok)
            per_run[label] = rows
        score_rows_csv = [{"run": lab, **r} for lab, rows in per_run.items() for r in rows]
        rd.write_csv("probe_scores.csv", rows=score_rows_csv)
        summary = []
        for lab, rows in per_run.items():
            summary.append({"run": lab, "reviews": len(rows), "top_hits": sum(r["top"] for r in rows),
                            "mean_score": float(np.mean([r["score"] for r in rows])),
                            "mean_rank": float(np.mean([r["rank"] for r in rows]))})
        pairs = []
        for (a, ra), (b, rb) in itertools.combinations(per_run.items(), 2):
            pairs.append({"run_a": a, "run_b": b,
                          "a_higher": sum(x["score"] > y["score"] for x, y in zip(ra, rb)),
                          "b_higher": sum(y["score"] > x["score"] for x, y in zip(ra, rb)),
                          "ties": sum(x["score"] == y["score"] for x, y in zip(ra, rb))})
        result |= {"probe": summary, "pairs": pairs}
        parts.append(f"<h2>Probe score ({len(probes)} reviews, one marked sentiment word each)</h2><table border=1 "
                     "cellpadding=4 style='border-collapse:collapse'><tr><th>run</th><th>marked word gets the most "
                     "attention</th><th>mean normalised score</th><th>mean rank</th></tr>")
        for s in summary:
            parts.append(f"<tr><td>{html.escape(s['run'])}</td><td>{s['top_hits']} / {s['reviews']}</td>"
                         f"<td>{s['mean_score']:.3f}</td><td>{s['mean_rank']:.2f}</td></tr>")
        parts.append("</table>")
        md = ["# E5 — token selection", "",
              f"Probe set: {len(probes)} short reviews with one marked sentiment word each. "
              "Top = the marked word has the highest last-layer [CLS] attention (head-averaged) among the review's "
              "word pieces ([CLS]/[SEP] excluded).", "",
              "| run | top hits | mean normalised score | mean rank |", "|---|---|---|---|"]
        md += [f"| {s['run']} | {s['top_hits']} / {s['reviews']} | {s['mean_score']:.3f} | {s['mean_rank']:.2f} |"
               for s in summary]
        if pairs:
            md += ["", "Pairwise: on how many probe reviews each run gives the marked word the higher "
                   "normalised score.",
                   "", "| run A | run B | A higher | B higher | ties |", "|---|---|---|---|---|"]
            md += [f"| {p['run_a']} | {p['run_b']} | {p['a_higher']} | {p['b_higher']} | {p['ties']} |" for p in pairs]
        rd.write_report("\n".join(md))
    parts.append("</body></html>")
    rd.write_text("attention.html", "\n".join(parts))
    result["html"] = str(rd / "attention.html")
    return result


__all__ = [
    "weight_stats", "hoyer_sparsity", "magnitude_prune_", "pruning_curve", "sparsity_report", "cls_attention",
    "minmax", "score_probe", "heatmap_html", "heatmap_figure", "attention_report", "PAPER_E4", "PRUNE_LEVELS",
]

