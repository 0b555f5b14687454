"""The CPU-scale IMDB campaign (issue 24): the learning-rate sweep's records under
``results/imdb-cpu/records`` as one table of docs/imdb_results.md (validation accuracy per
epoch, the honest number, time), so the page shows every recorded sweep trial and nothing else."""

from __future__ import annotations

import csv
import io

from attnopt.report.docs_tables.records import Records
from attnopt.report.tables import markdown_table

RECORDS = "results/imdb-cpu/records"


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


TABLES = {"imdb_cpu.sweep": sweep}
