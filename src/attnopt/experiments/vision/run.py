"""``run_vision`` (E6: train the ViT members of one optimiser, then analyse them) and
``run_compare`` (the ℓ1.1-vs-Adam table and |w| histograms over finished run folders).

A ``run_vision`` folder holds the run of every seed in ``seed-<s>/`` (each a complete run
folder of its own: config.json of that single seed, history.csv, checkpoint.pt,
weights.json, summary.json, report.md) and, at its top, the summary over seeds
(summary.json, marked complete last) and report.md.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attnopt.data.vision import load_images
from attnopt.errors import UserError
from attnopt.experiments.vision.analysis import MATRIX_TYPES, histogram_figure, mean_std, pruning_curves, weight_stats
from attnopt.experiments.vision.config import VisionConfig, steps_per_epoch
from attnopt.experiments.vision.train import (DeviceImages, Member, evaluate, resolve_device, resolve_precision,
                                              summarize_history, train_members)
from attnopt.models.vit import EnsembleViT
from attnopt.report.imdb_figures import epoch_curves_figure
from attnopt.report.runs import RunDir, as_run_dir, is_complete, open_run_dir, read_summary
from attnopt.report.tables import fmt, markdown_table, pct
from attnopt.runtime import ProgressFn, experiment_scope, report

EXPERIMENT = "vision-train"
COMPARE = "vision-compare"
ACCURACIES = ("honest_test_acc", "best_test_acc", "last_test_acc")


@dataclass
class VisionResult:
    config: VisionConfig
    members: list[dict]           # per seed: seed, summary (accuracies, weights, pruning)
    summary: dict[str, Any]       # the aggregate over seeds
    out: Path | None = None
    histories: dict[int, list[dict]] = field(default_factory=dict)  # per seed: one row per epoch


@dataclass
class CompareResult:
    rows: list[dict]
    table: str
    out: Path | None = None
    runs: list[Path] = field(default_factory=list)


def _member_summary(cfg: VisionConfig, history: list[dict], weights: dict, init: dict, pruning: list[float]) -> dict:
    return {**summarize_history(history), "seed": None, "optimizer": cfg.label(), "lr": cfg.resolved_lr(),
            "weights": weights, "weights_init": init,
            "pruning": {"levels": list(cfg.prune_levels), "test_acc": pruning}}


def _aggregate(cfg: VisionConfig, members: list[dict]) -> dict[str, Any]:
    agg: dict[str, Any] = {"experiment": EXPERIMENT, "dataset": cfg.dataset, "optimizer": cfg.label(),
                           "lr": cfg.resolved_lr(), "epochs": cfg.epochs, "seeds": [m["seed"] for m in members]}
    for key in ACCURACIES:
        agg[key] = mean_std([m[key] for m in members])
    for when in ("weights", "weights_init"):
        agg[when] = {t: {s: mean_std([m[when][t][s] for m in members])
                         for s in ("above_threshold", "frac_near_zero", "max_abs", "mean_abs")}
                     | {"entries": members[0][when][t]["entries"], "threshold": cfg.threshold,
                        "near_zero": cfg.near_zero} for t in MATRIX_TYPES}
    agg["pruning"] = {"levels": list(cfg.prune_levels),
                      "test_acc": [mean_std([m["pruning"]["test_acc"][i] for m in members])
                                   for i in range(len(cfg.prune_levels))]}
    return agg


def _report(cfg: VisionConfig, agg: Mapping[str, Any]) -> str:
    acc = lambda k: f"{pct(agg[k][0])} ± {pct(agg[k][1])} %" if agg[k][2] > 1 else f"{pct(agg[k][0])} %"  # noqa: E731
    m = cfg.model_config()
    lines = [f"# E6 vision — {cfg.label()} on {cfg.dataset}, seeds {', '.join(map(str, cfg.seeds))}", "",
             f"- ViT: {m.image_size} px, patch {m.patch} ({m.n_patches} patches + [CLS]), width {m.width}, depth "
             f"{m.depth}, {m.heads} heads, MLP {m.mlp}, dropout {m.dropout}",
             f"- lr {cfg.resolved_lr():g}, batch {cfg.batch_size}, {cfg.epochs} epochs, mean cross-entropy",
             f"- test accuracy at best validation epoch: {acc('honest_test_acc')}; best over epochs (paper's "
             f"metric, selects on test): {acc('best_test_acc')}; last epoch: {acc('last_test_acc')} "
             f"(n = {agg['honest_test_acc'][2]})", "",
             markdown_table(["matrix", "weights", "entries", f"\\|w\\| > {cfg.threshold:g}",
                             f"fraction \\|w\\| < {cfg.near_zero:g}", "mean \\|w\\|", "max \\|w\\|"],
                            [[t, when, w["entries"], fmt(*w["above_threshold"][:2], digits=1),
                              fmt(*w["frac_near_zero"][:2]), fmt(*w["mean_abs"][:2]), fmt(*w["max_abs"][:2])]
                             for t in MATRIX_TYPES
                             for when, w in (("trained", agg["weights"][t]), ("at init", agg["weights_init"][t]))]),
            "",
             markdown_table(["pruned fraction"] + [f"{x:g}" for x in agg["pruning"]["levels"]],
                            [["test acc %"] + [pct(a[0]) for a in agg["pruning"]["test_acc"]]])]
    return "\n".join(lines)


def _open_members(cfg: VisionConfig, rd: RunDir | None, device) -> list[Member]:
    out = []
    for s in cfg.seeds:
        folder = None
        if rd is not None:
            folder = open_run_dir(rd.path / f"seed-{s}", cfg.member(s), experiment=EXPERIMENT, resumable=True)
        out.append(Member(s, folder, device))
    return out


def _groups(cfg: VisionConfig, todo: list[Member]) -> list[list[Member]]:
    """Members trained together: those at the same epoch when batched, else one by one."""
    if not cfg.batched_members():
        return [[m] for m in todo]
    by_epoch: dict[int, list[Member]] = {}
    for m in todo:
        by_epoch.setdefault(m.epoch, []).append(m)
    return list(by_epoch.values())


def run_vision(config: VisionConfig | Mapping | None = None, *, out: "str | os.PathLike | RunDir | None" = None,
               progress: ProgressFn | None = None) -> VisionResult:
    """Train one ViT per seed with the configured optimiser (batched when ``config.ensemble``),
    analyse the weights, and summarise over seeds (see the module doc for the folder)."""
    cfg = VisionConfig.coerce(config)
    rd = as_run_dir(out, cfg, experiment=EXPERIMENT, resumable=True)
    with experiment_scope(cfg.threads):
        device = resolve_device(cfg.device)
        data = load_images(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, data_seed=cfg.data_seed,
                           subset=cfg.subset)
        members = _open_members(cfg, rd, device)
        done = {m.seed: read_summary(m.folder.path) for m in members if m.folder and is_complete(m.folder.path)}
        todo = [m for m in members if m.seed not in done]
        n_steps = steps_per_epoch(len(data.train), cfg.batch_size)
        total = sum(cfg.epochs - m.epoch for m in todo) * n_steps
        report(progress, "training (member steps)", 0, total)
        test = None
        for group in _groups(cfg, todo):
            model = train_members(cfg, group, data, device, progress, total)
            test = test or DeviceImages(data.test, data, cfg.model_config().image_size, device)
            precision = resolve_precision(cfg.precision, device)
            pruned = pruning_curves(model, lambda mdl: evaluate(mdl, test, cfg.eval_batch_size, precision)[1],
                                    cfg.prune_levels)
            init = EnsembleViT(cfg.model_config(), [m.seed for m in group])  # the weights training started from
            for k, m in enumerate(group):
                s = _member_summary(cfg, m.history, weight_stats(model, k, cfg.threshold, cfg.near_zero),
                                    weight_stats(init, k, cfg.threshold, cfg.near_zero),
                                    [row[k] for row in pruned]) | {"seed": m.seed}
                done[m.seed] = s
                if m.folder is not None:
                    m.folder.write_report(_report(cfg.member(m.seed), _aggregate(cfg.member(m.seed), [s])))
                    m.folder.write_summary(s)
            report(progress, "analysis (members)", len(group), len(todo))
        per_member = [done[s] for s in cfg.seeds]
        agg = _aggregate(cfg, per_member)
        if rd is not None:
            rd.write_report(_report(cfg, agg))
            rd.write_summary(agg | {"members": [f"seed-{s}" for s in cfg.seeds]})
    return VisionResult(cfg, per_member, agg, rd.path if rd is not None else None,
                        {m.seed: m.history for m in members})


# --------------------------------------------------------------------------- comparison


def _mean_history(path: Path, members: Sequence[str]) -> dict[str, np.ndarray]:
    """The members' history.csv columns averaged over members (epochs common to all)."""
    cols: list[dict[str, np.ndarray]] = []
    for m in members:
        with open(path / m / "history.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols.append({k: np.array([float(r[k]) for r in rows]) for k in rows[0]} if rows else {})
    n = min((len(c.get("epoch", ())) for c in cols), default=0)
    return {k: np.mean([c[k][:n] for c in cols], axis=0) for k in cols[0]} if n else {}


def _read_vision_run(path: Path) -> tuple[dict, list[dict]]:
    s = read_summary(path)
    if not (isinstance(s, dict) and s.get("experiment") == EXPERIMENT and s.get("complete") is True):
        raise UserError(f"{path} is not a finished 'vision train' run folder (no complete summary.json)")
    members = [read_summary(path / m) for m in s.get("members", [])]
    if any(m is None for m in members):
        raise UserError(f"{path}: a member folder of the run is missing or unreadable")
    return s, members


def run_compare(paths: Sequence["str | os.PathLike"], *, out: "str | os.PathLike | RunDir | None" = None,
                progress: ProgressFn | None = None) -> CompareResult:
    """The E6 table (mean ± sample std over seeds, n) of finished ``vision train`` runs and,
    with ``out``, compare.md, compare.json, vision_hist.png (|w| histograms of Q, K, V) and
    vision_curves.png (train loss / accuracy and test accuracy by epoch, mean over seeds) there."""
    if not paths:
        raise UserError("give at least one 'vision train' run folder to compare")
    rows, groups, curves, init = [], {}, {}, {}
    for p in map(Path, paths):
        s, members = _read_vision_run(p)
        label = f"{s['optimizer']} (lr {s['lr']:g})"
        if label in groups:  # two runs of one optimiser: tell them apart by folder
            label = f"{label} [{p.name}]"
        groups[label] = [m["weights"] for m in members]
        init.setdefault("initialisation", [m["weights_init"] for m in members])
        curves[f"{label}, mean of {len(members)}"] = _mean_history(p, s["members"])
        w = s["weights"]
        pr = s["pruning"]
        rows.append([label, s["dataset"], s["epochs"], s["honest_test_acc"][2],
                     *(f"{pct(s[k][0])} ± {pct(s[k][1])}" for k in ACCURACIES),
                     *(fmt(*w[t]["frac_near_zero"][:2]) for t in ("Q", "K", "V")),
                     *(fmt(*w[t]["above_threshold"][:2], digits=1) for t in ("Q", "K", "V")),
                     fmt(max(w[t]["max_abs"][0] for t in ("Q", "K", "V"))),
                     " / ".join(f"{lv:g}: {pct(a[0])}" for lv, a in zip(pr["levels"], pr["test_acc"]) if lv >= 0.5)])
        report(progress, "runs read", 1, len(paths))
    first = read_summary(Path(paths[0]))["weights"]["Q"]
    header = ["optimizer", "dataset", "epochs", "n", "test acc % at best val", "best test acc % (paper's)",
              "last test acc %", *(f"{t}: frac \\|w\\|<{first['near_zero']:g}" for t in "QKV"),
              *(f"{t}: #\\|w\\|>{first['threshold']:g}" for t in "QKV"), "max \\|w\\| (Q,K,V)",
              "test acc % after pruning"]
    table = markdown_table(header, rows) + "\n\nmean ± sample std over seeds (n seeds)."
    rd = as_run_dir(out, {"runs": [str(p) for p in paths]}, experiment=COMPARE)
    if rd is not None:
        rd.write_text("compare.md", table + "\n")
        rd.save_figure("vision_hist.png", histogram_figure(groups, init))
        rd.save_figure("vision_curves.png", epoch_curves_figure(
            {k: v for k, v in curves.items() if v}, panels=(("train_loss", "train loss (mean cross-entropy)"),
                                                            ("train_acc", "train accuracy (dropout on)"),
                                                            ("test_acc", "test accuracy"))))
        rd.write_json("compare.json", {"runs": [str(p) for p in paths], "header": header, "rows": rows})
        rd.write_summary({"experiment": COMPARE, "runs": [str(p) for p in paths], "rows": len(rows)})
    return CompareResult([dict(zip(header, r)) for r in rows], table, rd.path if rd else None,
                         [Path(p) for p in paths])


__all__ = ["run_vision", "run_compare", "VisionResult", "CompareResult", "EXPERIMENT"]
