"""Aggregated tables of the campaign's records (one row per plan cell).

* **E3** — n, mean ± sample std of the best test accuracy over epochs (the paper's metric),
  its 95 % confidence interval ``mean ± t(0.975, n−1)·s/√n`` (Student t: the trials are few
  and their spread unknown), the honest accuracy (test at the best-validation epoch), the
  last-epoch accuracy and the epochs to stop; beside them the paper's number and whether it
  lies inside our interval (n ≥ 2; the paper's own ± is ignored, so "no" means our trials'
  mean differs from theirs beyond our own spread).
* **E4** — per matrix type Q, K, V: entries with |w| > 0.06 and max |w| (mean ± std over
  trials), and the pruning accuracy at each recorded level.
* **E5** — per probe set: the mean normalised score of the marked token (mean ± std over
  trials) and the top hits; and, for ℓ1.1 against ℓ2 cells of the same dataset, protocol and
  size, trials paired by (seed, initialisation): on how many probes ℓ1.1 scores higher.
* **Verdicts** — the paper's claims between two cells (:mod:`.verdicts`).

Records of a learning-rate sweep (``[[sweep]]`` blocks: one seed per rate, a short epoch cap)
are not cells: they get a table of their own and never enter E3–E5 or a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnopt.experiments.imdb.config import PAPER_E3
from attnopt.experiments.imdb.records import PROBE_SETS, find_records, read_record, record_group
from attnopt.experiments.imdb.sparsity import PAPER_E4, PAPER_THRESHOLD
from attnopt.experiments.imdb.verdicts import claims, format_verdicts
from attnopt.report.stats import t_interval
from attnopt.report.tables import fmt, markdown_table, sample_stats

E5_PAPER = {"MD p=1.1": 0.439, "MD p=2": 0.312}  # authors' probes, one size-6 model each
#: the authors' probes drawn in the E5 heat map: the first four (positive, negative, negative, positive)
E5_MAP_PROBES = (0, 1, 2, 3)


@dataclass
class Aggregate:
    e3: list[dict]
    e4: list[dict]
    e5: list[dict]
    e5_pairs: list[dict]
    cells: dict[str, list[dict]]   # cell -> its records (read_record)
    duplicates: list[str] = field(default_factory=list)   # records of a trial met before (counted once)
    sweeps: dict[str, list[dict]] = field(default_factory=dict)   # sweep cell -> its records

    def markdown(self) -> str:
        parts = [format_e3(self.e3), format_e4(self.e4), format_e5(self.e5, self.e5_pairs),
                 format_verdicts(claims(self.cells))] if self.cells else ["## Cells\n\nno cell recorded yet"]
        return "\n\n".join(parts + ([format_sweeps(self.sweeps)] if self.sweeps else []))


def mean_std(vals) -> tuple[float, float]:
    """Mean and sample std of the finite values (see :func:`attnopt.report.tables.sample_stats`)."""
    return sample_stats(vals)[:2]


def _label(cfg: dict) -> str:
    opt = cfg["optimizer"]
    return f"MD p={float(cfg['p']):g}" if opt == "md" else {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD-momentum"}[opt]


def _cell_info(recs: list[dict]) -> dict:
    c, s = recs[0]["config"], recs[0]["summary"]
    return {"dataset": c["dataset"], "protocol": c["protocol"], "size": c["size"], "optimizer": _label(c),
            "lr": s.get("lr"), "n": len(recs), "max_epochs": s.get("max_epochs")}


def aggregate(results: str | Path | Sequence[str | Path]) -> Aggregate:
    """Read every complete record under ``results`` (one folder or several, e.g. copied from
    several machines: merged, each trial once — the first folder's record wins) and build the
    E3, E4 and E5 rows.  The tables depend on the records alone."""
    roots = [results] if isinstance(results, (str, Path)) else list(results)
    cells: dict[str, list[dict]] = {}
    sweeps: dict[str, list[dict]] = {}
    seen: dict[str, Path] = {}
    duplicates = []
    for path in (p for root in roots for p in find_records(Path(root))):
        rec = read_record(path)
        trial = rec["summary"]["record"]["trial"]
        if trial in seen:
            duplicates.append(f"{path} (same trial as {seen[trial]})")
            continue
        seen[trial] = path
        into = sweeps if record_group(rec["summary"]) == "sweep" else cells
        into.setdefault(rec["summary"]["record"]["cell"], []).append(rec)
    for recs in (*cells.values(), *sweeps.values()):  # the same order whichever folders the records came from
        recs.sort(key=lambda r: r["path"].name)
    order = sorted(cells, key=lambda k: (_cell_info(cells[k])["dataset"], _cell_info(cells[k])["protocol"],
                                         _cell_info(cells[k])["size"], k))
    cells = {k: cells[k] for k in order}
    e3, e4, e5 = [], [], []
    for name, recs in cells.items():
        info = {"cell": name} | _cell_info(recs)
        sums = [r["summary"] for r in recs]
        best = [100 * s["paper_best_test_acc"] for s in sums]
        row = dict(info)
        for key, fld in (("best", "paper_best_test_acc"), ("honest", "honest_test_acc"), ("last", "last_test_acc")):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([None if s.get(fld) is None else 100 * s[fld]
                                                              for s in sums])
        row["epochs_mean"], row["epochs_std"] = mean_std([float(s["epochs"]) for s in sums])
        row["ci_lo"], row["ci_hi"] = t_interval(best)
        c = recs[0]["config"]
        ref = PAPER_E3.get((round(float(c["p"]), 6), c["size"])) if c["optimizer"] == "md" and \
            c["dataset"] == "imdb" else None
        row["paper"] = ref
        row["paper_scale"] = paper_scale(c)
        row["paper_inside_ci"] = None if ref is None or len(best) < 2 or not row["paper_scale"] else \
            bool(row["ci_lo"] <= ref[0] <= row["ci_hi"])
        e3.append(row)
        r4 = dict(info)
        for t in ("Q", "K", "V"):
            r4[f"{t}_above_mean"], r4[f"{t}_above_std"] = mean_std(
                [float(r["e4"]["stats"][t]["above_threshold"]) for r in recs])
            r4[f"{t}_max_mean"], r4[f"{t}_max_std"] = mean_std([r["e4"]["stats"][t]["max_abs"] for r in recs])
            r4[f"{t}_entries"] = recs[0]["e4"]["stats"][t]["entries"]
        levels = [p["level"] for p in recs[0]["e4"]["pruning"]]
        r4["pruning"] = {lv: mean_std([100 * p["accuracy"] for r in recs for p in r["e4"]["pruning"]
                                       if p["level"] == lv]) for lv in levels}
        e4.append(r4)
        for ps in PROBE_SETS:
            m, s = mean_std([r["e5"][ps]["mean_score"] for r in recs])
            e5.append(info | {"probes": ps, "n_probes": recs[0]["e5"][ps]["n"], "score_mean": m, "score_std": s,
                              "top_mean": mean_std([float(r["e5"][ps]["top_hits"]) for r in recs])[0]})
    return Aggregate(e3, e4, e5, _pairs(cells), cells, duplicates, dict(sorted(sweeps.items())))


def _pairs(cells: dict[str, list[dict]]) -> list[dict]:
    """ℓ1.1 against ℓ2 on the probes, trials paired by (seed, init seed) within a (dataset,
    protocol, size, epoch cap)."""
    def md(recs, p):
        c = recs[0]["config"]
        return c["optimizer"] == "md" and round(float(c["p"]), 6) == p

    out = []
    for a, ra in cells.items():
        for b, rb in cells.items():
            if not (md(ra, 1.1) and md(rb, 2.0)):
                continue
            ia, ib = _cell_info(ra), _cell_info(rb)
            if any(ia[k] != ib[k] for k in ("dataset", "protocol", "size", "max_epochs")):
                continue
            key = lambda r: (r["summary"]["seed"], r["summary"]["init_seed"])  # noqa: E731
            mb = {key(r): r for r in rb}
            pairs = [(r, mb[key(r)]) for r in ra if key(r) in mb]
            if not pairs:
                continue
            for ps in PROBE_SETS:
                wins = losses = total = better = 0
                for x, y in pairs:
                    sx = {p["index"]: p["score"] for p in x["e5"][ps]["probes"]}
                    sy = {p["index"]: p["score"] for p in y["e5"][ps]["probes"]}
                    common = sorted(set(sx) & set(sy))
                    wins += sum(sx[i] > sy[i] for i in common)
                    losses += sum(sx[i] < sy[i] for i in common)
                    total += len(common)
                    better += x["e5"][ps]["mean_score"] > y["e5"][ps]["mean_score"]
                out.append({"cell_l11": a, "cell_l2": b, "probes": ps, "pairs": len(pairs), "probe_wins": wins,
                            "probe_losses": losses, "probe_comparisons": total, "pairs_l11_higher_mean": better})
    return out


def format_sweeps(sweeps: dict[str, list[dict]]) -> str:
    """One row per learning-rate sweep cell: its rate, trials, epochs and best validation
    accuracy (what picks the cells' rate), and the honest test accuracy beside it."""
    body = []
    for name, recs in sweeps.items():
        info, sums = _cell_info(recs), [r["summary"] for r in recs]
        pct = lambda k: [None if s.get(k) is None else 100 * s[k] for s in sums]  # noqa: E731
        body.append([name, info["dataset"], info["protocol"], info["size"], info["optimizer"], f"{info['lr']:g}",
                     info["n"], fmt(*mean_std([float(s["epochs"]) for s in sums]), 1),
                     fmt(*mean_std(pct("best_val_acc")), 2), fmt(*mean_std(pct("honest_test_acc")), 2)])
    return "\n".join(["## Learning-rate sweep", "", markdown_table(
        ["sweep cell", "dataset", "protocol", "size", "optimizer", "lr", "n", "epochs", "best validation acc (%)",
         "honest test acc (%)"], body), "",
        "Trials of the plan's [[sweep]] blocks: they pick each cell's rate by best validation accuracy and are not "
        "cells themselves (no row in E3–E5, no verdict)."])


#: the shape of the paper's IMDB models and data (TrainConfig's defaults): a cell of another
#: shape is another experiment, and the paper's number stands beside it as context only
PAPER_SHAPE = {"n_embd": 384, "n_hidden": 1536, "max_len": 512, "subset": None}


def paper_scale(cfg: dict) -> bool:
    """Whether a record's config has the paper's shape (width, MLP, tokens, all training reviews)."""
    return all(cfg.get(k, v) == v for k, v in PAPER_SHAPE.items())


def _ref(ref) -> str:
    return f"{ref[0]:.2f} ± {ref[1]:.2f} [{ref[2]:.2f}], {ref[3]}" if ref else "–"


def format_e3(rows: list[dict]) -> str:
    def inside(r) -> str:
        if r["paper"] is not None and not r["paper_scale"]:
            return "other scale"
        return {True: "yes", False: "no", None: "–"}[r["paper_inside_ci"]]

    body = [[r["cell"], r["dataset"], r["protocol"], r["size"], r["optimizer"], f"{r['lr']:g}", r["n"],
             fmt(r["best_mean"], r["best_std"], 2),
             "–" if not math.isfinite(r["ci_lo"]) else f"[{r['ci_lo']:.2f}, {r['ci_hi']:.2f}]",
             fmt(r["honest_mean"], r["honest_std"], 2), fmt(r["last_mean"], r["last_std"], 2),
             fmt(r["epochs_mean"], r["epochs_std"], 1), _ref(r["paper"]), inside(r)] for r in rows]
    return "\n".join([
        "## E3 — test accuracy (%) per cell", "",
        markdown_table(["cell", "dataset", "protocol", "size", "optimizer", "lr", "n", "best test (paper's metric)",
                        "95 % CI (t)", "honest (best-val epoch)", "last epoch", "epochs", "paper: best ± sd [last], "
                        "epochs", "paper's mean in our CI"], body), "",
        "Mean ± sample std over the cell's complete trials. Best test: the best test accuracy over epochs (selects on "
        "the test set, as the paper). 95 % CI: Student-t interval of our mean (n − 1 degrees of freedom); the last "
        "column says whether the paper's mean lies inside it (needs n ≥ 2; \"other scale\": the cell's width, "
        "tokens or training reviews are not the paper's, so its number is context only). Honest: test accuracy at the epoch of "
        "best validation accuracy (n/a under the paper protocol, which trains on the validation reviews)."])


def format_e4(rows: list[dict]) -> str:
    levels = sorted({lv for r in rows for lv in r["pruning"]})
    head = ["cell", "size", "optimizer", "lr", "n"] + [f"{t} > {PAPER_THRESHOLD:g}" for t in "QKV"] + \
        [f"max |{t}|" for t in "QKV"] + [f"acc @ {lv:g} pruned" for lv in levels]
    body = [[r["cell"], r["size"], r["optimizer"], f"{r['lr']:g}", r["n"]]
            + [fmt(r[f"{t}_above_mean"], r[f"{t}_above_std"], 0) for t in "QKV"]
            + [fmt(r[f"{t}_max_mean"], r[f"{t}_max_std"], 3) for t in "QKV"]
            + [fmt(*r["pruning"][lv], 2) if lv in r["pruning"] else "–" for lv in levels] for r in rows]
    paper = "; ".join(f"{t} {PAPER_E4[t][0]:,} vs {PAPER_E4[t][1]:,}" for t in "QKV")
    return "\n".join(["## E4 — weight sparsity per cell", "", markdown_table(head, body), "",
                      f"Entries with |w| > {PAPER_THRESHOLD:g} per matrix type pooled over blocks, mean ± std over "
                      f"trials. Paper (IMDB, size 6, ℓ1.1 vs ℓ2, one model each, 884,736 entries per type): {paper}. "
                      "Pruning: accuracy (%) after zeroing that fraction of each block matrix's smallest |w|."])


def format_e5(rows: list[dict], pairs: list[dict]) -> str:
    body = [[r["cell"], r["size"], r["optimizer"], r["probes"], r["n"], r["n_probes"],
             fmt(r["score_mean"], r["score_std"], 3), fmt(r["top_mean"], None, 1)] for r in rows]
    lines = ["## E5 — token selection per cell and probe set", "",
             markdown_table(["cell", "size", "optimizer", "probe set", "n", "probes", "mean normalised score",
                             "top hits (mean)"], body), "",
             "Score: last-layer [CLS] attention averaged over heads, min–max normalised over the tokens without "
             "[CLS]/[SEP] (the authors' definition), at the marked token; mean over probes, then mean ± std over "
             "trials. Probe sets: ours (60 reviews) and the authors' (44 of their 50 sentences usable). Paper "
             f"(IMDB, authors' probes, size 6, one model each): ℓ1.1 {E5_PAPER['MD p=1.1']}, ℓ2 {E5_PAPER['MD p=2']}."]
    if pairs:
        lines += ["", markdown_table(
            ["ℓ1.1 cell", "ℓ2 cell", "probe set", "paired trials", "probes where ℓ1.1 scores higher / lower / the same",
             "pairs where ℓ1.1's mean is higher"],
            [[p["cell_l11"], p["cell_l2"], p["probes"], p["pairs"], f"{p['probe_wins']} / {p['probe_losses']} / "
              f"{p['probe_comparisons'] - p['probe_wins'] - p['probe_losses']} of {p['probe_comparisons']}",
              f"{p['pairs_l11_higher_mean']} / {p['pairs']}"] for p in pairs])]
    return "\n".join(lines)


def band_curves(agg: Aggregate, column: str = "test_acc") -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Per (dataset, protocol, size) panel, per cell: epoch, mean, std and count of ``column``
    over the trials still running at that epoch."""
    out: dict[str, dict] = {}
    for name, recs in agg.cells.items():
        info = _cell_info(recs)
        panel = f"{info['dataset']} {info['protocol']} size {info['size']}"
        hs = [r["history"][column] for r in recs if column in r["history"]]
        if not hs:
            continue
        n = max(len(h) for h in hs)
        cols = [np.array([h[i] for h in hs if i < len(h)], dtype=float) for i in range(n)]
        out.setdefault(panel, {})[name] = {
            "epoch": np.arange(1, n + 1), "mean": np.array([c.mean() for c in cols]),
            "std": np.array([c.std(ddof=1) if c.size > 1 else 0.0 for c in cols]),
            "count": np.array([c.size for c in cols])}
    return out


def _size_or_largest(agg: Aggregate, size: int | None) -> int | None:
    """``size``, or by default the largest model size among the cells (None without cells)."""
    return size if size is not None else max((_cell_info(r)["size"] for r in agg.cells.values()), default=None)


def mean_histograms(agg: Aggregate, size: int | None = None) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
    """(bin edges, cell -> matrix type -> mean fraction of entries per bin) for cells of
    ``size`` (default: the largest size recorded)."""
    size = _size_or_largest(agg, size)
    edges, out = np.asarray([]), {}
    for name, recs in agg.cells.items():
        if _cell_info(recs)["size"] != size:
            continue
        edges = np.asarray(recs[0]["e4"]["hist_edges"])
        out[name] = {t: np.mean([np.asarray(r["e4"]["histograms"][t], float) / max(sum(r["e4"]["histograms"][t]), 1)
                                 for r in recs], axis=0) for t in recs[0]["e4"]["histograms"]}
    return edges, out


def mean_probe_maps(agg: Aggregate, probes: Sequence[int] = E5_MAP_PROBES, size: int | None = None
                    ) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """The E5 heat map's data, for the cells of ``size`` (default: the largest recorded) whose
    records kept whole maps (records written before they did are left out): the authors' probes
    among ``probes`` that every such record holds, each with its word pieces and marked
    positions, and per cell the normalised map of each, mean over the cell's trials."""
    size = _size_or_largest(agg, size)
    per_cell = {}
    for name, recs in agg.cells.items():
        per = [{p["index"]: p for p in r["e5"]["authors"]["probes"] if "map" in p} for r in recs]
        if _cell_info(recs)["size"] == size and all(per):
            per_cell[f"{_cell_info(recs)['optimizer']} ({name}, n={len(recs)})"] = per
    keep = [i for i in probes if all(i in d for per in per_cell.values() for d in per)]
    if not per_cell or not keep:
        return [], {}
    first = next(iter(per_cell.values()))[0]
    return ([{"index": i, "tokens": first[i]["tokens"], "marked": first[i]["marked"]} for i in keep],
            {label: [np.mean([np.asarray(d[i]["map"], float) for d in per], axis=0) for i in keep]
             for label, per in per_cell.items()})


def e3_csv_rows(agg: Aggregate) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "paper"} | {"paper": r["paper"] and list(r["paper"])} for r in agg.e3]


#: what :func:`write_tables` may write (the files the records give no data for are removed)
TABLE_FILES = ("tables.md", "e3.csv", "e4.csv", "e5.csv", "e5_pairs.csv", "learning_curves.png",
               "weight_histograms.png", "e5_heatmaps.png")


def write_tables(agg: Aggregate, folder: str | Path) -> list[Path]:
    """The files of :data:`TABLE_FILES` in ``folder`` that the records give data for; one left
    there by an earlier call that they no longer give data for is removed."""
    from attnopt.experiments.imdb.records import MATRIX_TYPES
    from attnopt.report.imdb_figures import band_curves_figure, binned_histograms_figure, probe_maps_figure
    from attnopt.report.runs import RunDir

    rd = RunDir(folder)
    paths = [rd.write_text("tables.md", "# Aggregated campaign tables\n\n" + agg.markdown() + "\n")]
    paths.append(rd.write_csv("e3.csv", rows=e3_csv_rows(agg)))
    paths.append(rd.write_csv("e4.csv", rows=[{k: v for k, v in r.items() if k != "pruning"}
                                              | {f"pruned_{lv:g}_acc_mean": m for lv, (m, _) in r["pruning"].items()}
                                              for r in agg.e4]))
    paths.append(rd.write_csv("e5.csv", rows=agg.e5))
    if agg.e5_pairs:
        paths.append(rd.write_csv("e5_pairs.csv", rows=agg.e5_pairs))
    if agg.cells:
        panels = {f"{panel}: {split}": cells for column, split in (("val_acc", "validation"), ("test_acc", "test"))
                  for panel, cells in band_curves(agg, column).items()}
        paths.append(rd.save_figure("learning_curves.png", band_curves_figure(panels, "accuracy (%)")))
        edges, hists = mean_histograms(agg)
        paths.append(rd.save_figure("weight_histograms.png",
                                    binned_histograms_figure(edges, hists, MATRIX_TYPES, PAPER_THRESHOLD)))
        probes, maps = mean_probe_maps(agg)
        if maps:
            paths.append(rd.save_figure("e5_heatmaps.png", probe_maps_figure(probes, maps)))
    for stale in set(TABLE_FILES) - {p.name for p in paths}:  # from an earlier call with other records
        (rd.path / stale).unlink(missing_ok=True)
    return paths


__all__ = ["Aggregate", "aggregate", "write_tables", "e3_csv_rows", "t_interval", "mean_std", "format_e3", "format_e4", "format_e5", "band_curves",
           "mean_histograms", "mean_probe_maps", "E5_PAPER", "E5_MAP_PROBES", "TABLE_FILES", "PAPER_SHAPE", "paper_scale"]
