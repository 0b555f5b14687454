"""The CPU-scale IMDB campaign (issue 24) in docs/imdb_results.md, from the records under
``results/imdb-cpu/records``: the learning-rate sweep (validation accuracy per epoch, the honest
number, time: every recorded sweep trial and nothing else) and the cells' E3, E4, E5 and verdict
tables exactly as ``attnopt imdb table results/imdb-cpu`` prints them."""

from __future__ import annotations

import csv
import io
from typing import Callable

from attnopt.experiments.imdb.aggregate import Aggregate, aggregate, format_e3, format_e4, format_e5
from attnopt.experiments.imdb import verdicts
from attnopt.report.docs_tables.records import Records
from attnopt.report.tables import markdown_table

RECORDS = "results/imdb-cpu/records"
RESULTS = "results/imdb-cpu"


def _summaries(rec: Records) -> list[tuple[str, dict]]:
    """(record folder relative to the repository, summary) of every complete sweep record."""
    root = rec.root / RECORDS
    out = []
    for path in sorted(root.glob("cpu-lr-*/*/summary.json")) if root.is_dir() else []:
        folder = path.parent.relative_to(rec.root).as_posix()
        s = rec.json(f"{folder}/summary.json")
        if s.get("complete") is True:
            out.append((folder, s))
    return out


def _order(s: dict) -> tuple:
    name = s["optimizer"]
    return (0 if name.startswith("MD") else 1, name, s["lr"])


def sweep(rec: Records) -> str:
    rows = []
    for folder, s in sorted(_summaries(rec), key=lambda fs: _order(fs[1])):
        hist = list(csv.DictReader(io.StringIO(rec.text(f"{folder}/history.csv"))))
        val = " / ".join(f"{100 * float(h['val_acc']):.1f}" for h in hist)
        minutes = sum(float(h["epoch_time_s"]) for h in hist) / 60
        rows.append([s["optimizer"], f"{s['lr']:g}", str(s["seed"]), str(s["epochs"]), val,
                     f"{100 * s['honest_test_acc']:.2f} (epoch {s['best_val_epoch']})",
                     f"{100 * s['final_train_acc']:.1f}", f"{s['members']}: {minutes:.0f}"])
    if not rows:
        return "(no sweep record yet)"
    return markdown_table(["optimizer", "lr", "seed", "epochs", "validation acc per epoch (%)",
                           "honest: test acc at best-val epoch (5,000 reviews)", "last train acc (%)",
                           "ensemble members: minutes"], rows)


def _cells(section: Callable[[Aggregate], str]) -> Callable[[Records], str]:
    """A generator of one section of the cells' tables, without its heading."""
    def table(rec: Records) -> str:
        agg = rec.memo("imdb_cpu.aggregate", lambda: aggregate(rec.root / RESULTS))
        if not agg.cells:
            return "(no cell recorded yet)"
        lines = section(agg).split("\n")
        return "\n".join(lines[2:] if lines[0].startswith("## ") else lines)
    return table


TABLES = {"imdb_cpu.sweep": sweep,
          "imdb_cpu.e3": _cells(lambda agg: format_e3(agg.e3)),
          "imdb_cpu.e4": _cells(lambda agg: format_e4(agg.e4)),
          "imdb_cpu.e5": _cells(lambda agg: format_e5(agg.e5, agg.e5_pairs)),
          "imdb_cpu.verdicts": _cells(lambda agg: verdicts.format_verdicts(verdicts.claims(agg.cells)))}
