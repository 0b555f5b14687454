"""The paper's claims tested between the campaign's cells: Welch's two-sample t-test between
two cells' trials and Holm's correction across the claims of one (dataset, protocol, size,
epoch cap) table, each with a verdict (holds / fails / inconclusive).  The paper's numbers ride along as
context only: measured at another scale, they are never the reference of a test."""

from __future__ import annotations

import math

from attnopt.experiments.imdb.config import PAPER_E3
from attnopt.experiments.imdb.records import PROBE_SETS
from attnopt.experiments.imdb.sparsity import PAPER_E4, PAPER_THRESHOLD
from attnopt.report.stats import holm, verdict, welch
from attnopt.report.tables import fmt, markdown_table, sample_stats


def _kind(recs: list[dict]) -> str:
    c = recs[0]["config"]
    return f"md{round(float(c['p']), 6):g}" if c["optimizer"] == "md" else c["optimizer"]


def _accuracy(recs: list[dict]) -> tuple[str, list]:
    """The honest test accuracy (%) of each trial, or the paper's best-over-epochs where the
    protocol has no honest number."""
    honest = [r["summary"].get("honest_test_acc") for r in recs]
    if any(h is not None for h in honest):
        return "honest test acc (%)", [None if h is None else 100 * h for h in honest]
    return "best test acc over epochs (%)", [100 * r["summary"]["paper_best_test_acc"] for r in recs]


def _qkv_above(recs: list[dict]) -> list[float]:
    return [float(sum(r["e4"]["stats"][t]["above_threshold"] for t in "QKV")) for r in recs]


def claims(cells: dict[str, list[dict]]) -> list[dict]:
    """The paper's claims that the cells can test, per table — (dataset, protocol, size, epoch
    cap): cells trained to other epoch caps answer other questions —: ℓ1.1 more
    accurate than ℓ2, ℓ3 and each baseline; ℓ1.1 sparser than ℓ2 (fewer Q/K/V entries above the
    paper's threshold: the paper's direction); ℓ1.1 gives the marked sentiment token a higher
    E5 score than ℓ2 (each probe set).  Welch's test between the two cells' trials, Holm's
    correction across the claims of one table.  Where a table has
    several cells of one optimizer, the one with the most trials speaks for it (first by name
    on a tie); the verdict table names the cells it compared."""
    groups: dict[tuple, dict[str, tuple[str, list[dict]]]] = {}
    for name, recs in sorted(cells.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        c = recs[0]["config"]
        table = (c["dataset"], c["protocol"], c["size"], recs[0]["summary"].get("max_epochs"))
        groups.setdefault(table, {}).setdefault(_kind(recs), (name, recs))
    out = []
    for (dataset, protocol, size, max_epochs), kinds in groups.items():
        rows = []
        if "md1.1" not in kinds:
            continue
        a_name, a = kinds["md1.1"]
        for other, label in (("md2", "ℓ2"), ("md3", "ℓ3"), ("adam", "Adam"), ("adamw", "AdamW"), ("sgd", "SGD-m")):
            if other in kinds:
                b_name, b = kinds[other]
                metric, va = _accuracy(a)
                rows.append({"claim": f"ℓ1.1 more accurate than {label}", "metric": metric, "a": a_name,
                             "b": b_name, "va": va, "vb": _accuracy(b)[1], "higher": True,
                             "paper": _paper_gap(dataset, size, other)})
        if "md2" in kinds:
            b_name, b = kinds["md2"]
            rows.append({"claim": "ℓ1.1 sparser than ℓ2", "metric": f"Q+K+V entries > {PAPER_THRESHOLD:g}",
                         "a": a_name, "b": b_name, "va": _qkv_above(a), "vb": _qkv_above(b), "higher": False,
                         "paper": f"{sum(v[0] - v[1] for v in PAPER_E4.values()):+,} (size 6, 1 model each)"
                         if dataset == "imdb" else "–"})
            for ps in PROBE_SETS:
                rows.append({"claim": f"ℓ1.1 selects sentiment tokens more sharply than ℓ2 ({ps} probes)",
                             "metric": "E5 mean normalised score", "a": a_name, "b": b_name,
                             "va": [r["e5"][ps]["mean_score"] for r in a], "vb": [r["e5"][ps]["mean_score"] for r in b],
                             "higher": True,
                             "paper": "0.439 vs 0.312 (size 6, 1 model each)" if dataset == "imdb" else "–"})
        tests = [welch(r["va"], r["vb"]) for r in rows]
        adjusted = holm([t.p for t in tests])
        for r, t, padj in zip(rows, tests, adjusted):
            out.append({k: v for k, v in r.items() if k not in ("va", "vb")} | {
                "dataset": dataset, "protocol": protocol, "size": size, "max_epochs": max_epochs, "test": t, "p_holm": padj,
                "mean_a": sample_stats(r["va"]), "mean_b": sample_stats(r["vb"]),
                "verdict": verdict(t, padj, r["higher"])})
    return out


def _paper_gap(dataset: str, size: int, other: str) -> str:
    if dataset != "imdb" or not other.startswith("md"):
        return "–"
    a, b = PAPER_E3.get((1.1, size)), PAPER_E3.get((float(other[2:]), size))
    return "–" if a is None or b is None else f"{a[0] - b[0]:+.2f} (best test, 10 seeds)"


def format_verdicts(rows: list[dict]) -> str:
    def ms(name, x):
        m, sd, n = x
        return f"{name}: {fmt(m, sd, 2)} (n={n})"

    def num(x, d=3):
        return "–" if x is None or not math.isfinite(x) else f"{x:.{d}g}"

    body = []
    for r in rows:
        t = r["test"]
        ci = "–" if not math.isfinite(t.ci_lo) else f"{t.diff:+.3g} [{t.ci_lo:+.3g}, {t.ci_hi:+.3g}]"
        dropped = t.dropped_a + t.dropped_b
        cap = "" if r.get("max_epochs") is None else f", ≤ {r['max_epochs']} epochs"
        body.append([f"{r['dataset']} {r['protocol']} size {r['size']}{cap}", r["claim"], r["metric"], ms(r["a"], r["mean_a"]),
                     ms(r["b"], r["mean_b"]), ci, num(t.p), num(r["p_holm"]), r["verdict"], r["paper"],
                     str(dropped) if dropped else ""])
    return "\n".join([
        "## Verdicts — the paper's claims, tested between our cells", "",
        markdown_table(["table", "claim", "metric", "ℓ1.1 cell", "other cell", "difference [95 % CI]", "Welch p",
                        "Holm p", "verdict", "paper (context)", "missing"], body) if body else "no testable claim yet",
        "", "Welch's two-sample t-test between the two cells' trials (unequal variances, Welch–Satterthwaite degrees "
        "of freedom), Holm's correction across the claims of one (dataset, protocol, size, epoch cap) table, "
        "α = 0.05. holds: significant in the claimed direction; fails: significant the other way; inconclusive: not "
        "significant; "
        "–: fewer than two finite values in a cell. Missing or non-finite values are dropped and counted in the last "
        "column. The paper's numbers are context measured at its scale, never the reference of a test."])


__all__ = ["claims", "format_verdicts"]
