"""The single-seed H100 IMDB runs (E3–E5): tables and prose numbers of docs/imdb_results.md and
the README's IMDB section, from the records kept with that page under ``docs/imdb_h100/``
(each run's summary.json, and the CSVs written by ``attnopt imdb table / sparsity /
attention-map``)."""

from __future__ import annotations

import csv
import io
import json

from attnopt.docs_tables.records import Claim, Records
from attnopt.report.tables import markdown_table

R = "docs/imdb_h100"
DOC = "docs/imdb_results.md"
README = "README.md"
#: (record prefix, name in the tables, label of the analyses' CSVs)
RUNS = (("e3_p1.1", "MD ℓ1.1", "MD p=1.1 s3 seed0 (p1.1)"), ("e3_p2", "MD ℓ2", "MD p=2 s3 seed0 (p2)"),
        ("e3_p3", "MD ℓ3", "MD p=3 s3 seed0 (p3)"), ("e6_adam", "Adam", "Adam s3 seed0 (adam)"),
        ("e6_adamw", "AdamW", None), ("e6_sgd", "SGD-momentum", None))
ORDER = ("e3_p1.1", "e3_p2", "e3_p3", "e6_adam", "e6_adamw", "e6_sgd")


def _rows(rec: Records, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(rec.text(f"{R}/{name}"))))


def _summary(rec: Records, run: str) -> dict:
    return rec.json(f"{R}/{run}_summary.json")


def _paper(rec: Records) -> dict[str, list | None]:
    """optimizer → [best mean, best std, last mean, epochs] of the paper, from table.csv."""
    return {r["optimizer"]: (json.loads(r["paper_ref"]) if r["paper_ref"] else None) for r in _rows(rec, "table.csv")}


def _lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _stopped(s: dict) -> str:
    return "stopped" if s["stop_reason"] == "stop_file" else f"{100 * 0.995:.1f} % train"


def e3(rec: Records) -> str:
    paper = _paper(rec)
    rows = []
    for run, name, _ in RUNS:
        s = _summary(rec, run)
        ref = paper.get(s["optimizer"])
        best = f"{_pct(s['paper_best_test_acc'])} (epoch {s['paper_best_test_epoch']})"
        rows.append([name, _lr(s["lr"]), f"{s['epochs']} ({_stopped(s)})",
                     f"{_pct(s['honest_test_acc'])} (epoch {s['best_val_epoch']})",
                     f"**{_pct(s['paper_best_test_acc'])}** (epoch {s['paper_best_test_epoch']})" if ref else best,
                     _pct(s["last_test_acc"]),
                     f"{ref[0]:.2f} ± {ref[1]:.2f} [{ref[2]:.2f}], {ref[3]}" if ref else "–"])
    return markdown_table(["optimizer", "lr", "epochs run", "honest: test acc at best-val epoch",
                           "best test acc over epochs (paper's metric)", "last epoch",
                           "paper (size 3, 10 seeds): best [last], epochs"], rows)


def e3_readme(rec: Records) -> str:
    paper = _paper(rec)
    rows = []
    for run in ("e3_p1.1", "e3_p3", "e3_p2", "e6_adam", "e6_adamw", "e6_sgd"):
        s = _summary(rec, run)
        ref = paper.get(s["optimizer"])
        name = {"e3_p1.1": "MD ℓ1.1", "e3_p3": "MD ℓ3", "e3_p2": "MD ℓ2"}.get(run, s["optimizer"])
        wd = rec.json(f"{R}/{run}_config.json")["config"].get("weight_decay")
        if wd is None and s["optimizer"] == "AdamW":
            wd = 0.01  # ImdbConfig.resolved_weight_decay: AdamW's default when none is given
        extra = f", wd {wd:g}" if wd else ""
        if s["stop_reason"] == "stop_file":
            ran = f"{s['epochs']} (stopped; paper {ref[3]})" if ref else f"{s['epochs']} (stopped)"
        else:
            ran = f"{s['epochs']} (99.5 % train acc)"
        rows.append([f"{name} (lr {_lr(s['lr'])}{extra})", _pct(s["honest_test_acc"]),
                     f"**{_pct(s['paper_best_test_acc'])}**" if ref else _pct(s["paper_best_test_acc"]),
                     f"{ref[0]:.2f} ± {ref[1]:.2f}" if ref else "–", ran])
    return markdown_table(["optimizer", "honest: test acc at best-val epoch", "best test acc over epochs (paper's metric)",
                           "paper (10 seeds)", "epochs run"], rows)


def _sparsity(rec: Records) -> dict[tuple[str, str], dict]:
    return {(r["label"], r["matrix"]): r for r in _rows(rec, "sparsity.csv")}


def _pruned(rec: Records) -> dict[tuple[str, float], float]:
    return {(r["label"], float(r["level"])): float(r["accuracy"]) for r in _rows(rec, "pruning.csv")
            if r["split"] == "test"}


def e4(rec: Records) -> str:
    sp, pr = _sparsity(rec), _pruned(rec)
    rows = []
    for _, name, label in RUNS:
        if label is None:
            continue
        counts = [f"{int(sp[(label, m)]['above_threshold']):,}" for m in "QKV"]
        acc = [_pct(pr[(label, lv)]) for lv in (0.9, 0.99)]
        if name == "MD ℓ1.1":
            acc[1] = f"**{acc[1]}**"
        rows.append([name] + counts + [f"{float(sp[(label, m)]['max_abs']):.3f}" for m in "KV"] + [" / ".join(acc)])
    return markdown_table(["run", "Q", "K", "V", "max \\|w\\| K", "max \\|w\\| V",
                           "test acc after magnitude-pruning 90 % / 99 % of every block weight matrix "
                           "(embeddings, norms, head kept)"], rows)


def _probe(rec: Records) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in _rows(rec, "probe_scores.csv"):
        out.setdefault(r["run"], []).append(r)
    return out


def e5(rec: Records) -> str:
    pb = _probe(rec)
    rows = []
    for _, name, label in RUNS:
        if label is None:
            continue
        rs = pb[label]
        top = sum(r["top"] == "True" for r in rs)
        score = sum(float(r["score"]) for r in rs) / len(rs)
        rank = sum(float(r["rank"]) for r in rs) / len(rs)
        rows.append([name, f"{top} / {len(rs)}", f"{score:.3f}", f"{rank:.2f}"])
    return markdown_table(["run", "top hits", "mean normalised score", "mean rank"], rows)


TABLES = {"imdb.e3": e3, "imdb.e4": e4, "imdb.e5": e5, "readme.imdb": e3_readme}


def claims(rec: Records) -> list[Claim]:
    s = {run: _summary(rec, run) for run in ORDER}
    paper = _paper(rec)
    best = {r: 100 * s[r]["paper_best_test_acc"] for r in ORDER}
    honest = {r: 100 * s[r]["honest_test_acc"] for r in ORDER}
    out = [Claim(DOC, f"ℓ1.1 ({best['e3_p1.1']:.2f}) > ℓ3 ({best['e3_p3']:.2f}) > ℓ2 ({best['e3_p2']:.2f}). It also "
                      f"holds on the honest metric: {honest['e3_p1.1']:.2f} > {honest['e3_p3']:.2f} > "
                      f"{honest['e3_p2']:.2f}")]
    if not (best["e3_p1.1"] > best["e3_p3"] > best["e3_p2"] and honest["e3_p1.1"] > honest["e3_p3"] > honest["e3_p2"]):
        raise ValueError("the IMDB ordering the pages state does not hold in the records")
    gap = {r: best[r] - paper[s[r]["optimizer"]][0] for r in ("e3_p1.1", "e3_p3", "e3_p2")}
    g = lambda x: f"{x:+.2f}".replace("-", "−")  # noqa: E731
    out.append(Claim(DOC, f"{g(gap['e3_p1.1'])} for ℓ1.1, {g(gap['e3_p3'])} for ℓ3, {g(gap['e3_p2'])} for ℓ2"))
    out.append(Claim(README, f"ℓ1.1 {g(gap['e3_p1.1'])}, ℓ3 {g(gap['e3_p3'])}, ℓ2 {g(gap['e3_p2'])}"))
    ad = [best[r] for r in ("e6_adam", "e6_adamw")] + [honest[r] for r in ("e6_adam", "e6_adamw")]
    out.append(Claim(DOC, f"on both metrics ({min(ad):.1f}–{max(ad):.1f})"))
    out.append(Claim(DOC, f"The ℓ2 run's last epoch dipped to {100 * s['e3_p2']['last_test_acc']:.2f}"))
    sp, pr = _sparsity(rec), _pruned(rec)
    l1, l2 = RUNS[0][2], RUNS[1][2]
    mk = {m: (float(sp[(l1, m)]["max_abs"]), float(sp[(l2, m)]["max_abs"])) for m in "KV"}
    ratios = [a / b for a, b in mk.values()]
    out.append(Claim(DOC, f"ℓ1.1's largest weights are {min(ratios):.1f}–{max(ratios):.1f}× those of ℓ2 "
                          f"(K {mk['K'][0]:.2f} vs {mk['K'][1]:.2f}, V {mk['V'][0]:.2f} vs {mk['V'][1]:.2f})"))
    out.append(Claim(README, f"K {mk['K'][0]:.2f} vs {mk['K'][1]:.2f} and V {mk['V'][0]:.2f} vs {mk['V'][1]:.2f} "
                             "against ℓ2"))
    out.append(Claim(README, f"it keeps {_pct(pr[(l1, 0.99)])} % test accuracy"))
    out.append(Claim(DOC, f"it still has {_pct(pr[(l1, 0.99)])} % test accuracy"))
    out.append(Claim(README, f"(K {int(sp[(l1, 'K')]['above_threshold']):,} vs {int(sp[(l2, 'K')]['above_threshold']):,} "
                             "at size 3)"))
    pb = _probe(rec)
    a = {r["index"]: float(r["score"]) for r in pb[l1]}
    b = {r["index"]: float(r["score"]) for r in pb[l2]}
    win, lose = sum(a[i] > b[i] for i in a), sum(a[i] < b[i] for i in a)
    out.append(Claim(DOC, f"on {win} reviews and ℓ2 on {lose}; {len(a) - win - lose} are ties"))
    out.append(Claim(README, f"higher than ℓ2 on {win} reviews, and ℓ2 ranks it higher on {lose}"))
    return out
