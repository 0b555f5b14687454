"""The CPU-scale IMDB campaign (issue 24) in docs/imdb_results.md, from the records under
``results/imdb-cpu/records``: the learning-rate sweep (validation accuracy per epoch, the honest
number, time: every recorded sweep trial and nothing else), the cells' E3, E4, E5 and verdict
tables exactly as ``attnopt imdb table results/imdb-cpu`` prints them, the README's summary of
the cells, and the numbers the page's prose quotes (:func:`claims`)."""

from __future__ import annotations

from typing import Callable

from attnopt.experiments.imdb import verdicts
from attnopt.experiments.imdb.aggregate import Aggregate, aggregate, format_e3, format_e4, format_e5
from attnopt.docs_tables.records import Claim, Records
from attnopt.report.tables import fmt, markdown_table

RESULTS = "results/imdb-cpu"
DOC = "docs/imdb_results.md"


def _order(recs: list[dict]) -> tuple:
    s = recs[0]["summary"]
    return (0 if s["optimizer"].startswith("MD") else 1, s["optimizer"], s["lr"])


def sweep(rec: Records) -> str:
    """Every recorded sweep trial (the aggregate's sweep records: the plan's [[sweep]] blocks)."""
    rows = []
    for recs in sorted(_aggregate(rec).sweeps.values(), key=_order):
        for r in recs:
            s, h = r["summary"], r["history"]
            val = " / ".join(f"{100 * float(v):.1f}" for v in h["val_acc"])
            minutes = float(h["epoch_time_s"].sum()) / 60
            rows.append([s["optimizer"], f"{s['lr']:g}", str(s["seed"]), str(s["epochs"]), val,
                         f"{100 * s['honest_test_acc']:.2f} (epoch {s['best_val_epoch']})",
                         f"{100 * s['final_train_acc']:.1f}", f"{s['members']}: {minutes:.0f}"])
    if not rows:
        return "(no sweep record yet)"
    return markdown_table(["optimizer", "lr", "seed", "epochs", "validation acc per epoch (%)",
                           "honest: test acc at best-val epoch (5,000 reviews)", "last train acc (%)",
                           "ensemble members: minutes"], rows)


def _aggregate(rec: Records) -> Aggregate:
    return rec.memo("imdb_cpu.aggregate", lambda: aggregate(rec.root / RESULTS))


def _cells(section: Callable[[Aggregate], str]) -> Callable[[Records], str]:
    """A generator of one section of the cells' tables, without its heading."""
    def table(rec: Records) -> str:
        agg = _aggregate(rec)
        if not agg.cells:
            return "(no cell recorded yet)"
        lines = section(agg).split("\n")
        return "\n".join(lines[2:] if lines[0].startswith("## ") else lines)
    return table


def readme(rec: Records) -> str:
    """The README's summary: per cell its honest accuracy; per accuracy claim its verdict."""
    agg = _aggregate(rec)
    if not agg.cells:
        return "(no cell recorded yet)"
    acc = {v["b"]: v for v in verdicts.claims(agg.cells) if v["claim"].startswith("ℓ1.1 more accurate")}
    rows = []
    for r in agg.e3:
        v = acc.get(r["cell"])
        rows.append([r["optimizer"], f"{r['lr']:g}", str(r["n"]), f"{r['max_epochs']}",
                     fmt(r["honest_mean"], r["honest_std"], 2),
                     "–" if v is None else f"{v['verdict']} (Welch p = {v['test'].p:.2g})"])
    return markdown_table(["optimizer", "lr", "seeds", "epochs", "honest test acc (%)",
                           "ℓ1.1 more accurate than it?"], rows)


TABLES = {"imdb_cpu.sweep": sweep, "readme.imdb_cpu": readme,
          "imdb_cpu.e3": _cells(lambda agg: format_e3(agg.e3)),
          "imdb_cpu.e4": _cells(lambda agg: format_e4(agg.e4)),
          "imdb_cpu.e5": _cells(lambda agg: format_e5(agg.e5, agg.e5_pairs)),
          "imdb_cpu.verdicts": _cells(lambda agg: verdicts.format_verdicts(verdicts.claims(agg.cells)))}


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def claims(rec: Records) -> list[Claim]:
    """The numbers the page's prose quotes about the cells: each cell's honest accuracy (and the
    range of its trials' last training loss: ln 2 = 0.693 is a constant prediction), and per
    tested claim its verdict and Welch p (accuracy claims also the difference and its 95 % CI)."""
    agg = _aggregate(rec)
    out = []
    for r in agg.e3:
        if r["n"] < 2:
            continue
        loss = [float(t["history"]["train_loss"][-1]) for t in agg.cells[r["cell"]]]
        out.append(Claim(DOC, f"`{r['cell']}` {r['honest_mean']:.2f} ± {r['honest_std']:.2f} % (n = {r['n']}; last "
                              f"training loss {min(loss):.3f}–{max(loss):.3f})"))
    for v in verdicts.claims(agg.cells):
        t = v["test"]
        if t.p != t.p:  # fewer than two values in a cell: no test to quote
            continue
        diff = f"{_signed(t.diff)} points [{_signed(t.ci_lo)}, {_signed(t.ci_hi)}], " \
            if v["claim"].startswith("ℓ1.1 more accurate") else ""
        out.append(Claim(DOC, f"{v['claim']} — {v['verdict']}: {diff}Welch p = {t.p:.2g}"))
    return out
