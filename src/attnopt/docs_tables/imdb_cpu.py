"""The CPU-scale IMDB and SST-2 campaigns (issue 24) in docs/imdb_results.md, from the records
under ``results/imdb-cpu/records`` and ``results/sst2-cpu/records``: per campaign the
learning-rate sweep (validation accuracy per epoch, the honest number, time: every recorded
sweep trial and nothing else), the cells' E3, E4, E5 and verdict tables exactly as ``attnopt imdb
table results/<campaign>`` prints them, the README's summary of the cells, and the numbers the
page's prose quotes (:func:`claims`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from attnopt.experiments.imdb import verdicts
from attnopt.experiments.imdb.aggregate import Aggregate, aggregate, format_e3, format_e4, format_e5
from attnopt.docs_tables.records import Claim, Records
from attnopt.report.tables import fmt, markdown_table

DOC = "docs/imdb_results.md"


@dataclass(frozen=True)
class Campaign:
    """One campaign's results folder, the prefix of its table names and its test set's words."""

    results: str
    prefix: str
    test_set: str


IMDB = Campaign("results/imdb-cpu", "imdb_cpu", "5,000 reviews")
SST2 = Campaign("results/sst2-cpu", "sst2_cpu", "872 GLUE dev sentences")
CAMPAIGNS = (IMDB, SST2)


def _order(recs: list[dict]) -> tuple:
    s = recs[0]["summary"]
    return (0 if s["optimizer"].startswith("MD") else 1, s["optimizer"], s["lr"])


def sweep(rec: Records, camp: Campaign = IMDB) -> str:
    """Every recorded sweep trial (the aggregate's sweep records: the plan's [[sweep]] blocks)."""
    rows = []
    for recs in sorted(_aggregate(rec, camp).sweeps.values(), key=_order):
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
                           f"honest: test acc at best-val epoch ({camp.test_set})", "last train acc (%)",
                           "ensemble members: minutes"], rows)


def _aggregate(rec: Records, camp: Campaign = IMDB) -> Aggregate:
    return rec.memo(f"{camp.prefix}.aggregate", lambda: aggregate(rec.root / camp.results))


def _cells(camp: Campaign, section: Callable[[Aggregate], str]) -> Callable[[Records], str]:
    """A generator of one section of the cells' tables, without its heading."""
    def table(rec: Records) -> str:
        agg = _aggregate(rec, camp)
        if not agg.cells:
            return "(no cell recorded yet)"
        lines = section(agg).split("\n")
        return "\n".join(lines[2:] if lines[0].startswith("## ") else lines)
    return table


def cost(rec: Records, camp: Campaign = IMDB) -> str:
    """Accuracy against cost, per cell: mean validation accuracy over the seeds at every epoch,
    the median wall time of one member's epoch (an ensemble epoch's time over its member count:
    training and both evaluation passes), and the first epoch whose mean reaches 75 % with what
    the cell's n members cost up to it."""
    agg = _aggregate(rec, camp)
    if not agg.cells:
        return "(no cell recorded yet)"
    rows = []
    for name in sorted(agg.cells, key=lambda c: _order(agg.cells[c]) + (c,)):
        recs = agg.cells[name]
        hs = [r["history"] for r in recs]
        n = min(len(h["val_acc"]) for h in hs)
        val = [100 * float(np.mean([float(h["val_acc"][e]) for h in hs])) for e in range(n)]
        per = np.concatenate([np.asarray(h["epoch_time_s"], float) / np.asarray(h["members"], float) for h in hs])
        minutes = float(np.median(per)) / 60
        first = next((e + 1 for e, v in enumerate(val) if v >= 75.0), None)
        rows.append([name, recs[0]["summary"]["optimizer"], f"{recs[0]['summary']['lr']:g}", str(len(recs)),
                     " / ".join(f"{v:.1f}" for v in val), f"{minutes:.2f}",
                     "–" if first is None else f"epoch {first} (≈ {first * minutes * len(recs):.0f} min for the cell)"])
    return markdown_table(["cell", "optimizer", "lr", "n", "mean validation acc per epoch (%)",
                           "minutes per member-epoch (median)", "mean validation ≥ 75 % from"], rows)


def readme(rec: Records, camp: Campaign = IMDB) -> str:
    """The README's summary: per cell its honest accuracy; per accuracy claim its verdict."""
    agg = _aggregate(rec, camp)
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


def _tables(camp: Campaign) -> dict[str, Callable[[Records], str]]:
    p = camp.prefix
    return {f"{p}.sweep": lambda rec: sweep(rec, camp), f"readme.{p}": lambda rec: readme(rec, camp),
            f"{p}.cost": lambda rec: cost(rec, camp),
            f"{p}.e3": _cells(camp, lambda agg: format_e3(agg.e3)),
            f"{p}.e4": _cells(camp, lambda agg: format_e4(agg.e4)),
            f"{p}.e5": _cells(camp, lambda agg: format_e5(agg.e5, agg.e5_pairs)),
            f"{p}.verdicts": _cells(camp, lambda agg: verdicts.format_verdicts(verdicts.claims(agg.cells)))}


TABLES = {name: fn for camp in CAMPAIGNS for name, fn in _tables(camp).items()}


def _signed(x: float) -> str:
    return f"{x:+.2f}".replace("-", "−")


def claims(rec: Records) -> list[Claim]:
    """The numbers the page's prose quotes about the cells of every campaign: each cell's honest
    accuracy (and the range of its trials' last training loss: ln 2 = 0.693 is a constant
    prediction), and per tested claim its verdict and Welch p (accuracy claims also the
    difference and its 95 % CI)."""
    return [c for camp in CAMPAIGNS for c in _claims(rec, camp)]


def _claims(rec: Records, camp: Campaign) -> list[Claim]:
    agg = _aggregate(rec, camp)
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
