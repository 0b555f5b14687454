"""A campaign trial's record: the small, committed trace of one finished training run.

``<results>/records/<cell>/<trial>/`` holds

* ``config.json`` — the run's identity (as written by ``imdb train``, so ``imdb table RUN…``
  reads a record like a run folder);
* ``history.csv`` — per-epoch losses and accuracies (6 significant digits);
* ``report.md`` — the run's one-page report;
* ``e4.json`` — per matrix type (Q, K, V, O, MLP; pooled over blocks): entries above 0.06,
  max |w|, fraction near zero, Hoyer sparsity, a histogram of |w| on fixed log-spaced bins
  (:data:`HIST_EDGES`, so records add up), and the accuracy after magnitude pruning;
* ``e5.json`` — per probe set (ours, the authors'), per probe the normalised [CLS] attention
  score of the marked token (min–max over the tokens without [CLS]/[SEP], as the authors), and
  for the authors' sentences the whole map (word pieces and their scores);
* ``summary.json`` — the run's summary plus ``"record"`` (trial key, cell, plan group: "cell" or
  "sweep"), written last with
  ``"complete": true``.

No checkpoint.  The record is assembled in a temporary folder beside its place (named by host,
pid and a random token, so workers on several machines never share one) and renamed into place
by one ``rename(2)``, which never replaces a non-empty folder: a record folder exists only when
complete, and when two workers finish the same trial the first record stays and the second
is discarded (:class:`RecordExists`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import uuid
from pathlib import Path

import numpy as np
import torch

from attnopt.errors import RunFolderError
from attnopt.files import read_json_object
from attnopt.experiments.imdb.attention import score_probe
from attnopt.experiments.imdb.batching import DeviceSplit
from attnopt.experiments.imdb.probe import authors_probes, probe_reviews
from attnopt.experiments.imdb.sparsity import MATRIX_TYPES, pooled_weights, pruning_curve, weight_stats
from attnopt.report.runs import RunDir

#: |w| histogram bin edges: 0, then 10 log-spaced bins per decade from 1e-5 to 10.
HIST_EDGES = np.concatenate([[0.0], np.logspace(-5, 1, 61)])
RECORD_FILES = ("config.json", "history.csv", "report.md", "e4.json", "e5.json", "summary.json")
PROBE_SETS = ("ours", "authors")
#: the probe sets whose whole maps a record keeps (the authors' sentences: about 15 pieces each)
MAP_SETS = ("authors",)
#: the plan block a record's trial came from (records written before the field existed: "cell")
GROUPS = ("cell", "sweep")


class RecordExists(RunFolderError):
    """The trial's record is already in place (written by another worker); ours was discarded."""


def weight_histograms(model) -> dict[str, list[int]]:
    """Per matrix type, counts of |w| in the bins of :data:`HIST_EDGES` (the last bin is open)."""
    out = {}
    for t, w in pooled_weights(model).items():
        a = w.abs().double().cpu().numpy()
        counts, _ = np.histogram(np.minimum(a, HIST_EDGES[-1]), bins=HIST_EDGES)
        out[t] = [int(c) for c in counts]
    return out


def e4_stats(model, split: DeviceSplit | None, levels, split_name: str = "test", batch_size: int = 500) -> dict:
    """E4 statistics of a trained model (pruning accuracy on ``split`` when given)."""
    stats = weight_stats(model)
    prune = [] if split is None else pruning_curve(model, split, levels, batch_size)
    return {"stats": stats, "hist_edges": [float(e) for e in HIST_EDGES], "histograms": weight_histograms(model),
            "pruning": [{"level": r["level"], "accuracy": r["accuracy"]} for r in prune],
            "pruning_split": None if split is None else split_name}


def e5_scores(model, max_len: int, tokenizer, data_root=None) -> dict:
    """Per probe set, per probe: the marked token's normalised score and its rank; for the sets
    in :data:`MAP_SETS` (the authors' short sentences) also the whole map (word pieces, their
    normalised scores to 3 decimals, the marked pieces), from which the E5 heat maps are drawn."""
    ours = probe_reviews()
    usable, excluded = authors_probes(tokenizer, data_root)
    out = {}
    for name, idx, reviews in (("ours", list(range(len(ours))), ours),
                               ("authors", [i for i, _ in usable], [r for _, r in usable])):
        rows = score_probe(model, reviews, max_len, tokenizer, over="content")
        out[name] = {"n": len(rows), "mean_score": float(np.mean([r["score"] for r in rows])),
                     "top_hits": int(sum(r["top"] for r in rows)),
                     "probes": [{"index": i, "score": round(r["score"], 6), "rank": r["rank"]}
                                | ({"tokens": r["tokens"], "map": [round(v, 3) for v in r["map"]],
                                    "marked": r["marked"]} if name in MAP_SETS else {})
                                for i, r in zip(idx, rows)]}
    out["authors"]["excluded"] = [{"index": i, "reason": why} for i, why in excluded]
    out["normalisation"] = "min-max over the tokens without [CLS]/[SEP] (the authors' definition)"
    return out


def compact_history(path: Path) -> str:
    """history.csv with floats to 6 significant digits (keeps records small)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(rows[0] if rows else [])
    for r in rows[1:]:
        w.writerow([_short(v) for v in r])
    return buf.getvalue()


def _short(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.6g}"


def write_record(run: Path, dest: Path, *, model, cell: str, key: str, eval_split: DeviceSplit | None,
                 levels, tokenizer, split_name: str = "test", data_root=None, group: str = "cell") -> Path:
    """Assemble the record of the finished run folder ``run`` at ``dest`` (atomically); ``group``
    says whether the plan asked for the trial in a ``[[cell]]`` or a ``[[sweep]]`` block."""
    if group not in GROUPS:
        raise ValueError(f"write_record: group must be one of {GROUPS}, got {group!r}")
    dest = Path(dest)
    if dest.exists():
        raise RecordExists(f"{dest} exists already; a record is never overwritten (delete it to redo the trial)")
    summary = json.loads((run / "summary.json").read_text())
    cfg_json = json.loads((run / "config.json").read_text())
    tmp = dest.parent / f".{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rd = RunDir(tmp)
    rd.write_json("config.json", cfg_json)
    rd.write_text("history.csv", compact_history(run / "history.csv"))
    rd.write_text("report.md", (run / "report.md").read_text())
    with torch.no_grad():
        rd.write_json("e4.json", e4_stats(model, eval_split, levels, split_name))
        rd.write_json("e5.json", e5_scores(model, int(cfg_json["config"].get("max_len", 512)), tokenizer, data_root))
    summary = {k: v for k, v in summary.items() if k != "complete"}
    rd.write_summary(summary | {"record": {"trial": key, "cell": cell, "group": group, "files": list(RECORD_FILES)}}, complete=True)
    try:
        os.rename(tmp, dest)  # a non-empty dest (another worker's record) makes this fail: never replaced
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if dest.exists():
            raise RecordExists(f"{dest}: recorded meanwhile by another worker; this worker's copy was discarded"
                               ) from None
        raise RunFolderError(f"{dest}: cannot move the record into place ({exc})") from None
    return dest


def record_complete(path: Path) -> bool:
    """Whether ``path`` holds a complete record (every file, summary marked complete)."""
    path = Path(path)
    if not all((path / f).is_file() for f in RECORD_FILES):
        return False
    try:
        s = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(s, dict) and s.get("complete") is True and isinstance(s.get("record"), dict)


def find_records(root: Path) -> list[Path]:
    """Complete records under ``root`` (a results folder or a records folder), sorted.

    Safe while other workers write records into ``root``: a record is assembled in a hidden
    temporary folder and renamed into place, so hidden folders are not entered, and a folder
    that vanishes during the walk is skipped (``os.walk`` ignores its scan error, where
    ``Path.rglob`` raised ``FileNotFoundError``; measured: a scan racing renames failed within
    a second)."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        if "summary.json" in files and record_complete(Path(folder)):
            found.append(Path(folder))
    return sorted(found)


def read_record(path: Path) -> dict:
    """A record as plain data: config (the run's identity), summary, history columns, e4, e5."""
    path = Path(path)
    def part(name: str) -> dict:
        return read_json_object(path / name, RunFolderError)

    cfg = part("config.json").get("config")
    with (path / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    hist = {k: np.asarray([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
    return {"path": path, "config": cfg, "summary": part("summary.json"), "history": hist,
            "e4": part("e4.json"), "e5": part("e5.json")}


def record_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def record_group(summary: dict) -> str:
    """"cell" or "sweep": the plan block the record's trial came from (older records: "cell")."""
    return summary.get("record", {}).get("group", "cell")


__all__ = ["write_record", "RecordExists", "record_complete", "find_records", "read_record", "record_size", "weight_histograms",
           "e4_stats", "e5_scores", "record_group", "HIST_EDGES", "GROUPS", "MAP_SETS", "RECORD_FILES", "PROBE_SETS", "MATRIX_TYPES"]
