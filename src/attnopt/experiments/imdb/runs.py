"""Reading finished IMDB runs back: their configuration and summary, their trained model, their
histories, and the E3/E6 table (mean ± std over seeds beside the paper's numbers).

A run folder is one whose config.json names the experiment ``imdb-train`` (or an older run
folder with an IMDB training config); an ensemble's folder is searched for its members.  The
same run reached twice (the same folder through two paths, or a copy with the same
configuration and seed) counts once.
"""

from __future__ import annotations

import csv
import os
from dataclasses import fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnopt.errors import RunFolderError
from attnopt.files import read_json, read_json_object
from attnopt.report.tables import sample_stats
from attnopt.experiments.imdb.checkpoint import CHECKPOINT, model_state
from attnopt.experiments.imdb.config import PAPER_E3, RESUME_MUTABLE, TrainConfig
from attnopt.experiments.imdb.train import EXPERIMENT
from attnopt.models.encoder import EncoderClassifier
from attnopt.report.tables import fmt


def _stored(path: Path) -> dict | None:
    """The recorded configuration of the folder ``path``; None when it has no config.json.  A
    config.json that is not valid JSON is a RunFolderError naming it (never skipped quietly)."""
    if not (path / "config.json").is_file():
        return None
    record = read_json(path / "config.json", RunFolderError)
    stored = record.get("config") if isinstance(record, dict) else None
    return stored if isinstance(stored, dict) else None


def _is_run(stored: dict | None) -> bool:
    if stored is None:
        return False
    exp = stored.get("experiment")
    return exp == EXPERIMENT or (exp is None and "optimizer" in stored and "size" in stored)


def read_run(path: str | os.PathLike) -> tuple[TrainConfig, dict]:
    """(config, summary) of a run folder; a folder that is not one is a RunFolderError."""
    path = Path(path)
    stored = _stored(path)
    if not _is_run(stored):
        raise RunFolderError(f"{path} is not an IMDB training run folder (no config.json of `imdb train`)")
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig.from_dict({k: v for k, v in stored.items() if k in known})
    summary = read_json_object(path / "summary.json", RunFolderError) if (path / "summary.json").is_file() else {}
    return cfg, summary


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[EncoderClassifier, TrainConfig]:
    """The trained model of a run folder (from its checkpoint, loaded as plain tensors), in eval mode."""
    path = Path(path)
    cfg, _ = read_run(path)
    ckpt_file = path / CHECKPOINT
    if not ckpt_file.is_file():
        raise RunFolderError(f"{path}: no {CHECKPOINT} (the run has not finished an epoch)")
    model = EncoderClassifier(cfg.model_config())
    try:
        model.load_state_dict(model_state(ckpt_file))
    except RuntimeError as exc:
        raise RunFolderError(f"{ckpt_file} does not fit the run's model ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), cfg


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders among ``paths`` (a folder holding runs is searched recursively), each once."""
    found: list[Path] = []
    for p in map(Path, paths):
        if _is_run(_stored(p)):
            found.append(p)
        elif p.is_dir():
            found.extend(q.parent for q in sorted(p.rglob("config.json")) if _is_run(_stored(q.parent)))
        else:
            raise RunFolderError(f"{p}: no such run folder")
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())


def run_histories(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, np.ndarray]]:
    """Per run folder (label: optimiser, size, seed, folder name), its ``history.csv`` as arrays."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for run in find_runs(paths):
        hist = run / "history.csv"
        if not hist.is_file():
            continue
        with hist.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            continue
        cfg, _ = read_run(run)
        label = f"{cfg.optimizer_label()} s{cfg.size} seed{cfg.seed} ({run.name})"
        out[label] = {k: np.asarray([float(r[k]) for r in rows]) for k in rows[0]}
    return out


def _variant(cfg: TrainConfig) -> str:
    parts = []
    if cfg.protocol != "honest":
        parts.append(f"{cfg.protocol} protocol")
    if cfg.loss is not None and cfg.loss != ("authors" if cfg.protocol == "paper" else "bce"):
        parts.append(f"loss {cfg.loss}")
    if cfg.protocol == "honest" and cfg.init_seed is not None:
        parts.append("shared init")
    if cfg.norm != "post":
        parts.append(f"{cfg.norm}-LN")
    if cfg.pool != "cls":
        parts.append(f"{cfg.pool} pool")
    if cfg.subset:
        parts.append(f"subset {cfg.subset}")
    if cfg.max_len != 512:
        parts.append(f"max_len {cfg.max_len}")
    if cfg.protocol == "honest" and cfg.val_in_train:
        parts.append("val in train")
    return ", ".join(parts)


def _finished(s: dict) -> bool:
    if "complete" in s:
        return s["complete"] is True
    return not s.get("running") and s.get("stop_reason") is not None


def results_table(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """One row per (dataset, optimiser, size, variant): mean ± std over distinct runs (accuracies in %).

    Runs with the same configuration and seed (copies, or one folder named twice) count once;
    the row's ``duplicates`` lists the folders left out."""
    groups: dict[tuple, dict[tuple, tuple[Path, TrainConfig, dict]]] = {}
    dupes: dict[tuple, list[str]] = {}
    for run in find_runs(paths):
        cfg, summary = read_run(run)
        if not summary or summary.get("epochs", 0) == 0:
            continue
        key = (cfg.dataset, cfg.optimizer, cfg.p if cfg.optimizer == "md" else 0.0, cfg.optimizer_label(), cfg.size,
               cfg.resolved_lr(), _variant(cfg))
        ident = tuple(sorted((k, repr(v)) for k, v in cfg.to_dict().items() if k not in RESUME_MUTABLE))
        group = groups.setdefault(key, {})
        if ident in group:
            dupes.setdefault(key, []).append(f"{run} (same run as {group[ident][0]})")
            continue
        group[ident] = (run, cfg, summary)

    def ms(vals: list) -> tuple[float, float]:  # in percent
        return sample_stats(None if v is None else 100 * v for v in vals)[:2]

    rows = []
    order = {"md": 0, "adam": 1, "adamw": 2, "sgd": 3}
    for key in sorted(groups, key=lambda k: (k[0], k[4], order[k[1]], k[2], k[6])):
        dataset, opt, p, label, size, lr, variant = key
        sums = [s for _, _, s in groups[key].values()]
        row = {"dataset": dataset, "optimizer": label, "size": size, "lr": lr, "variant": variant,
               "seeds": len(sums), "unfinished": sum(1 for s in sums if not _finished(s)),
               "duplicates": dupes.get(key, [])}
        for name, fld in (("honest", "honest_test_acc"), ("paper_best", "paper_best_test_acc"),
                          ("last", "last_test_acc")):
            row[f"{name}_mean"], row[f"{name}_std"] = ms([s.get(fld) for s in sums])
        row["epochs_mean"] = float(np.mean([s["epochs"] for s in sums]))
        plain = opt == "md" and dataset == "imdb" and variant in ("", "paper protocol")
        row["paper_ref"] = PAPER_E3.get((round(p, 6), size)) if plain else None
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown E3/E6 table: our honest and paper-style numbers beside the paper's."""
    head = ("| dataset | optimizer | size | lr | variant | seeds | honest test acc % (best-val epoch) | "
            "best test acc % over epochs (paper's metric) | last-epoch test acc % | epochs | "
            "paper: best [last], epochs |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ref = r["paper_ref"]
        ref_s = f"{ref[0]:.2f} ± {ref[1]:.2f} [{ref[2]:.2f}], {ref[3]}" if ref else "–"
        seeds = f"{r['seeds']}" + (f" ({r['unfinished']} unfinished)" if r["unfinished"] else "")
        lines.append(
            f"| {r['dataset']} | {r['optimizer']} | {r['size']} | {r['lr']:g} | {r['variant'] or '–'} | {seeds} | "
            f"{fmt(r['honest_mean'], r['honest_std'], 2)} | {fmt(r['paper_best_mean'], r['paper_best_std'], 2)} | "
            f"{fmt(r['last_mean'], r['last_std'], 2)} | {r['epochs_mean']:.1f} | {ref_s} |"
        )
    lines.append("")
    lines.append("Honest: test accuracy at the epoch of best validation accuracy (validation carved from train; n/a "
                 "under the paper protocol, which trains on it). Paper's metric: best test accuracy over epochs "
                 "(selects on the test set). Mean ± sample std over distinct runs.")
    dupes = [d for r in rows for d in r["duplicates"]]
    if dupes:
        lines.append("")
        lines.append("Counted once (same configuration and seed as another run): " + "; ".join(dupes) + ".")
    return "\n".join(lines)


__all__ = ["read_run", "load_model", "find_runs", "run_histories", "results_table", "format_table"]
