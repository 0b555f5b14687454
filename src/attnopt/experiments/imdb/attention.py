"""E5: token selection of trained IMDB / SST-2 runs.

The last block's attention from the ``[CLS]`` query, averaged over heads and min–max
normalised over the review's tokens (as in the paper's notebook), drawn as a heat map over the
tokens (HTML and PNG); and a score on the probe set of :mod:`attnopt.experiments.imdb.probe`:
on how many reviews the marked sentiment word gets the most attention among the review's word
pieces (``[CLS]``/``[SEP]`` excluded; a word split into pieces scores the maximum over its
pieces), plus, for every pair of runs, on how many reviews run A gives the marked word a
higher normalised score than run B.
"""

from __future__ import annotations

import html
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnopt.config import ConfigMixin, check_bool, check_int, check_sequence, config_error
from attnopt.data.reviews import CLS_ID, SEP_ID, load_tokenizer
from attnopt.experiments.imdb.execution import resolve_device
from attnopt.experiments.imdb.probe import ProbeReview, probe_reviews
from attnopt.experiments.imdb.runs import load_model
from attnopt.experiments.imdb.sparsity import run_label
from attnopt.models.encoder import EncoderClassifier
from attnopt.report.runs import as_run_dir
from attnopt.report.tables import markdown_table
from attnopt.runtime import ProgressFn, report


@dataclass(frozen=True)
class AttentionConfig(ConfigMixin):
    runs: tuple = ()
    texts: tuple = ()
    maps: int = 6
    probe: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", check_sequence(self, "runs", self.runs, lambda o, n, v: str(v),
                                                        unique=False))
        object.__setattr__(self, "texts", check_sequence(self, "texts", self.texts, lambda o, n, v: str(v),
                                                         allow_empty=True, unique=False))
        object.__setattr__(self, "maps", check_int(self, "maps", self.maps, 0))
        check_bool(self, "probe", self.probe)


@dataclass
class AttentionResult:
    out: Path | None
    probe: list[dict]
    pairs: list[dict]
    report: str
    html: str


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
                tokenizer=None, data_root=None, over: str = "all") -> list[dict]:
    """Per probe review: normalised attention on the marked word, its rank, and whether it is top.

    With a = the head-averaged last-layer [CLS] attention, the score is
    ``(a_w − min a) / (max a − min a)`` where the min and max run over every token
    (``over="all"``) or, as in the authors' notebook, over the tokens without [CLS] and [SEP]
    (``over="content"``); a word split into pieces scores the maximum over its pieces.  Each row
    also holds the map itself over the tokens without [CLS]/[SEP]: ``tokens``, ``map`` (the
    normalised attention) and ``marked`` (positions of the marked word's pieces in them)."""
    if over not in ("all", "content"):
        raise ValueError(f"score_probe: over must be 'all' or 'content', got {over!r}")
    tok = tokenizer if tokenizer is not None else load_tokenizer(data_root)
    reviews = list(reviews) if reviews is not None else probe_reviews()
    rows = []
    for i, r in enumerate(reviews):
        ids, tokens, offsets = _token_spans(r.text, max_len, tok)
        raw = cls_attention(model, ids)
        content = [j for j, t in enumerate(ids) if t not in (CLS_ID, SEP_ID)]
        att = minmax(raw)
        if over == "content":
            att = np.zeros_like(raw)
            att[content] = minmax(raw[content])
        marked = [j for j in content if r.start <= offsets[j][0] < offsets[j][1] <= r.end]
        if not marked:
            raise ValueError(f"probe review {i}: the marked word {r.word!r} was truncated away or not found")
        word_score = float(max(att[j] for j in marked))
        rank = 1 + sum(1 for j in content if j not in marked and att[j] > word_score)
        rows.append({"index": i, "label": r.label, "word": r.word, "text": r.text, "score": word_score,
                     "rank": rank, "top": rank == 1, "n_tokens": len(content),
                     "tokens": [tokens[j] for j in content], "map": [float(att[j]) for j in content],
                     "marked": [content.index(j) for j in marked]})
    return rows


def heatmap_html(tokens: Sequence[str], scores: Sequence[float], title: str = "") -> str:
    """An HTML fragment: each word piece on a background shaded by its normalised score."""
    import matplotlib
    import matplotlib.colors as mcolors

    from attnopt.report.imdb_figures import HEATMAP_CMAP

    cmap = matplotlib.colormaps[HEATMAP_CMAP]
    spans = []
    for t, v in zip(tokens, scores):
        bg = mcolors.rgb2hex(cmap(0.05 + 0.9 * float(v))[:3])
        fg = "white" if v > 0.6 else "black"
        spans.append(f'<span title="{v:.3f}" style="background:{bg};color:{fg};padding:1px 3px;'
                     f'margin:1px;border-radius:3px;display:inline-block">{html.escape(t)}</span>')
    head = f"<div style='font:12px sans-serif;color:#555'>{html.escape(title)}</div>" if title else ""
    return f"<div style='margin:6px 0'>{head}{''.join(spans)}</div>"


def run_attention(config: AttentionConfig | dict, *, out=None, progress: ProgressFn | None = None,
                  data_root=None) -> AttentionResult:
    """E5 over the run folders ``config.runs``: heat maps (attention.html, attention_NN.png) for
    ``texts`` (default: the first ``maps`` probe reviews) and the probe score (probe_scores.csv,
    report.md).  ``out=None`` writes nothing."""
    from attnopt.report.imdb_figures import heatmap_figure

    cfg = AttentionConfig.coerce(config)
    if not cfg.runs:
        raise config_error(cfg, "runs: give at least one run folder")
    device = resolve_device(cfg.device)
    models = []
    for p in cfg.runs:
        model, rcfg = load_model(p, device)  # every folder is checked before any work
        models.append((rcfg, model, run_label(Path(p), rcfg)))
    tok = load_tokenizer(data_root)
    rd = as_run_dir(out, cfg, experiment="imdb-attention")
    probes = probe_reviews()
    shown = list(cfg.texts) if cfg.texts else [r.text for r in probes[:cfg.maps]]
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>[CLS] attention</title></head>"
             "<body style='font-family:sans-serif;max-width:1100px'>",
             "<h2>Last-layer [CLS] attention, averaged over heads, min–max normalised</h2>"]
    for k, text in enumerate(shown):
        parts.append(f"<h3>Review {k + 1}</h3><p style='color:#333'>{html.escape(text)}</p>")
        rows = []
        for rcfg, model, label in models:
            ids, tokens, _ = _token_spans(text, rcfg.max_len, tok)
            att = minmax(cls_attention(model, ids))
            with torch.no_grad():
                prob = float(torch.sigmoid(model(torch.as_tensor([ids], device=device))))
            rows.append((tokens, att, f"{label} — P(positive) = {prob:.3f}"))
            parts.append(heatmap_html(tokens, att, rows[-1][2]))
        if rd is not None:
            rd.save_figure(f"attention_{k + 1:02d}.png", heatmap_figure(*zip(*rows)))
        report(progress, "heat maps", 1, len(shown))
    summary, pairs, md = [], [], "# E5 — token selection\n\n(no probe score requested)"
    if cfg.probe:
        per_run = {label: score_probe(model, probes, rcfg.max_len, tok) for rcfg, model, label in models}
        summary, pairs = _probe_tables(per_run)
        md = _probe_report(summary, pairs, len(probes))
        parts.append(f"<h2>Probe score ({len(probes)} reviews, one marked sentiment word each)</h2><table border=1 "
                     "cellpadding=4 style='border-collapse:collapse'><tr><th>run</th><th>marked word gets the most "
                     "attention</th><th>mean normalised score</th><th>mean rank</th></tr>")
        parts += [f"<tr><td>{html.escape(s['run'])}</td><td>{s['top_hits']} / {s['reviews']}</td>"
                  f"<td>{s['mean_score']:.3f}</td><td>{s['mean_rank']:.2f}</td></tr>" for s in summary]
        parts.append("</table>")
        if rd is not None:
            rd.write_csv("probe_scores.csv", rows=[{"run": lab, **r} for lab, rows in per_run.items() for r in rows])
    parts.append("</body></html>")
    page = "\n".join(parts)
    if rd is not None:
        rd.write_text("attention.html", page)
        rd.write_report(md)
        rd.write_summary({"runs": list(cfg.runs), "probe": summary, "pairs": pairs})
    return AttentionResult(None if rd is None else rd.path, summary, pairs, md, page)


def _probe_tables(per_run: dict[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    summary = [{"run": lab, "reviews": len(rows), "top_hits": sum(r["top"] for r in rows),
                "mean_score": float(np.mean([r["score"] for r in rows])),
                "mean_rank": float(np.mean([r["rank"] for r in rows]))} for lab, rows in per_run.items()]
    pairs = [{"run_a": a, "run_b": b,
              "a_higher": sum(x["score"] > y["score"] for x, y in zip(ra, rb)),
              "b_higher": sum(y["score"] > x["score"] for x, y in zip(ra, rb)),
              "ties": sum(x["score"] == y["score"] for x, y in zip(ra, rb))}
             for (a, ra), (b, rb) in itertools.combinations(per_run.items(), 2)]
    return summary, pairs


def _probe_report(summary: list[dict], pairs: list[dict], n: int) -> str:
    md = ["# E5 — token selection", "",
          f"Probe set: {n} short reviews with one marked sentiment word each. Top = the marked word has the highest "
          "last-layer [CLS] attention (head-averaged) among the review's word pieces ([CLS]/[SEP] excluded).", "",
          markdown_table(["run", "top hits", "mean normalised score", "mean rank"],
                         [[s["run"], f"{s['top_hits']} / {s['reviews']}", f"{s['mean_score']:.3f}",
                           f"{s['mean_rank']:.2f}"] for s in summary])]
    if pairs:
        md += ["", "Pairwise: on how many probe reviews each run gives the marked word the higher normalised score.",
               "", markdown_table(["run A", "run B", "A higher", "B higher", "ties"],
                                  [[p["run_a"], p["run_b"], p["a_higher"], p["b_higher"], p["ties"]] for p in pairs])]
    return "\n".join(md)


__all__ = ["AttentionConfig", "AttentionResult", "run_attention", "cls_attention", "minmax", "score_probe",
           "heatmap_html"]
