"""E4: weight sparsity of trained IMDB / SST-2 runs.

For each weight-matrix type (Q, K, V, the attention output O, and the MLP; each pooled over
blocks): histograms of |w|, the paper's count of entries with |w| > 0.06, the fraction near
zero (|w| < ``near_zero``), the maximum |w|, Hoyer sparsity
``(√n − ‖w‖₁/‖w‖₂) / (√n − 1)`` (0 = all entries equal, 1 = one non-zero), and the accuracy
after magnitude pruning each block weight matrix (Q, K, V, O, MLP-in, MLP-out separately) to
several sparsity levels.  Embeddings, LayerNorms and the head are never pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from attnopt.config import ConfigMixin, check_bool, check_choice, check_float, check_int, check_sequence, config_error
from attnopt.experiments.imdb.batching import DeviceSplit
from attnopt.experiments.imdb.engine import evaluate
from attnopt.experiments.imdb.execution import resolve_device
from attnopt.experiments.imdb.runs import load_model
from attnopt.models.encoder import EncoderClassifier
from attnopt.models.sparsity import abs_stats
from attnopt.models.sparsity import magnitude_prune_ as prune_
from attnopt.report.runs import as_run_dir
from attnopt.report.tables import markdown_table, pct
from attnopt.runtime import ProgressFn, report

#: The paper's E4 threshold on |w| and its counts (ℓ1.1 vs ℓ2, 6-block model, 884,736 entries).
PAPER_THRESHOLD = 0.06
PAPER_E4 = {"K": (18206, 27224), "Q": (13964, 14654), "V": (7643, 10127)}
PRUNE_LEVELS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
MATRIX_TYPES = ("Q", "K", "V", "O", "MLP")


@dataclass(frozen=True)
class SparsityConfig(ConfigMixin):
    runs: tuple = ()
    levels: tuple = PRUNE_LEVELS
    split: str = "test"
    eval_subset: int | None = None
    threshold: float = PAPER_THRESHOLD
    near_zero: float = 1e-3
    prune: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        runs = check_sequence(self, "runs", self.runs, lambda o, n, v: str(v), unique=False)
        object.__setattr__(self, "runs", runs)
        levels = check_sequence(self, "levels", self.levels, lambda o, n, v: check_float(o, n, v, ge=0.0, lt=1.0))
        object.__setattr__(self, "levels", levels)
        check_choice(self, "split", self.split, ("val", "test"))
        if self.eval_subset is not None:
            object.__setattr__(self, "eval_subset", check_int(self, "eval_subset", self.eval_subset, 1))
        object.__setattr__(self, "threshold", check_float(self, "threshold", self.threshold, ge=0.0))
        object.__setattr__(self, "near_zero", check_float(self, "near_zero", self.near_zero, gt=0.0))
        check_bool(self, "prune", self.prune)
        if not str(self.device):
            raise config_error(self, "device must be given")


@dataclass
class SparsityResult:
    out: Path | None
    stats: list[dict]
    pruning: list[dict]
    report: str


def pooled_weights(model: EncoderClassifier) -> dict[str, torch.Tensor]:
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
    return {t: {**abs_stats(w, threshold, near_zero), "hoyer": hoyer_sparsity(w)}
            for t, w in pooled_weights(model).items()}


def _prunable(model: EncoderClassifier) -> list[tuple[torch.Tensor, slice | None]]:
    """(weight, row slice) of every block matrix: Q, K, V rows of qkv separately, O, MLP in/out."""
    C = model.cfg.n_embd
    items = []
    for blk in model.blocks:
        w = blk.attn.qkv.weight
        items += [(w, slice(0, C)), (w, slice(C, 2 * C)), (w, slice(2 * C, 3 * C))]
        items += [(blk.attn.proj.weight, None), (blk.mlp.fc1.weight, None), (blk.mlp.fc2.weight, None)]
    return items


def magnitude_prune_(model: EncoderClassifier, fraction: float) -> None:
    """Zero the ``fraction`` smallest-|w| entries of each block weight matrix (Q, K, V rows of
    the fused qkv weight separately), in place (:func:`attnopt.models.sparsity.magnitude_prune_`)."""
    prune_((w if rows is None else w[rows] for w, rows in _prunable(model)), fraction)


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


def run_label(path: Path, cfg) -> str:
    return f"{cfg.optimizer_label()} s{cfg.size} seed{cfg.seed} ({path.name})"


def run_sparsity(config: SparsityConfig | dict, *, out=None, progress: ProgressFn | None = None, data_root=None,
                 cache=None) -> SparsityResult:
    """E4 over the run folders ``config.runs``; ``out`` gets sparsity.csv, pruning.csv,
    weight_histograms.png, pruning.png and report.md (nothing is written when it is None)."""
    from attnopt.data.reviews import load_reviews
    from attnopt.report.imdb_figures import pruning_figure, weight_histograms_figure

    cfg = SparsityConfig.coerce(config)
    if not cfg.runs:
        raise config_error(cfg, "runs: give at least one run folder")
    device = resolve_device(cfg.device)
    loaded = [(Path(p), *load_model(p, device)) for p in cfg.runs]  # every folder is checked before any work
    rd = as_run_dir(out, cfg, experiment="imdb-sparsity")
    stats_rows, prune_rows, pooled = [], [], {}
    for path, model, rcfg in loaded:
        label = run_label(path, rcfg)
        for t, d in weight_stats(model, cfg.threshold, cfg.near_zero).items():
            stats_rows.append({"run": str(path), "label": label, "optimizer": rcfg.optimizer_label(), "matrix": t} | d)
        pooled[label] = {t: w.abs().cpu().numpy() for t, w in pooled_weights(model).items()}
        if cfg.prune:
            n_eval = cfg.eval_subset if cfg.eval_subset is not None else rcfg.eval_subset
            data = load_reviews(rcfg.dataset, rcfg.max_len, rcfg.subset, n_eval, rcfg.data_seed,
                                rcfg.resolved_val_in_train(), rcfg.clean_html, data_root=data_root, cache=cache)
            dsplit = DeviceSplit(data.split(cfg.split), device)
            for r in pruning_curve(model, dsplit, cfg.levels):
                prune_rows.append({"run": str(path), "label": label, "split": cfg.split} | r)
        report(progress, "runs", 1, len(loaded))
    text = _report(cfg, stats_rows, prune_rows, list(pooled))
    if rd is not None:
        rd.write_csv("sparsity.csv", rows=stats_rows)
        rd.save_figure("weight_histograms.png", weight_histograms_figure(pooled, MATRIX_TYPES, cfg.threshold))
        if prune_rows:
            rd.write_csv("pruning.csv", rows=prune_rows)
            curves = {lab: ([r["level"] for r in prune_rows if r["label"] == lab],
                            [r["accuracy"] for r in prune_rows if r["label"] == lab]) for lab in pooled}
            rd.save_figure("pruning.png", pruning_figure(curves, cfg.split))
        rd.write_report(text)
        rd.write_summary({"runs": list(cfg.runs), "stats": stats_rows, "pruning": prune_rows})
    return SparsityResult(None if rd is None else rd.path, stats_rows, prune_rows, text)


def _report(cfg: SparsityConfig, stats_rows: list[dict], prune_rows: list[dict], labels: list[str]) -> str:
    lines = ["# E4 — weight sparsity", "",
             f"Entries with |w| > {cfg.threshold:g} per matrix type, pooled over blocks "
             f"(paper, 6 blocks, ℓ1.1 vs ℓ2: K {PAPER_E4['K'][0]:,} vs {PAPER_E4['K'][1]:,}; "
             f"Q {PAPER_E4['Q'][0]:,} vs {PAPER_E4['Q'][1]:,}; V {PAPER_E4['V'][0]:,} vs {PAPER_E4['V'][1]:,}; "
             "out of 884,736).", "",
             markdown_table(["run", "matrix", "entries", "> thr", "near zero", "max abs", "Hoyer"],
                            [[r["label"], r["matrix"], f"{r['entries']:,}", f"{r['above_threshold']:,}",
                              f"{pct(r['frac_near_zero'])} %", f"{r['max_abs']:.3f}", f"{r['hoyer']:.3f}"]
                             for r in stats_rows])]
    if prune_rows:
        lines += ["", f"Accuracy ({cfg.split} split) after magnitude pruning:", "",
                  markdown_table(["run"] + [f"{lvl:g}" for lvl in cfg.levels],
                                 [[lab] + [pct(r["accuracy"]) for r in prune_rows if r["label"] == lab]
                                  for lab in labels])]
    return "\n".join(lines)


__all__ = ["SparsityConfig", "SparsityResult", "run_sparsity", "weight_stats", "hoyer_sparsity", "magnitude_prune_",
           "pruning_curve", "pooled_weights", "PAPER_E4", "PAPER_THRESHOLD", "PRUNE_LEVELS", "MATRIX_TYPES", "run_label"]
