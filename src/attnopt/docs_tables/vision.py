"""E6 on digits: the tables and the prose numbers of docs/vision_results.md and the README's
vision section, from the run folders under ``results/vision/digits/`` (per-seed summaries)."""

from __future__ import annotations

from attnopt.docs_tables.records import Claim, Records
from attnopt.report.stats import welch
from attnopt.report.tables import markdown_table, sample_stats

R = "results/vision/digits"
DOC = "docs/vision_results.md"
README = "README.md"
SEEDS = (1, 2, 3)
#: (run folder, label in the tables)
RUNS = (("md", "ℓ1.1-MD, lr 5e-2"), ("adam", "Adam, lr 1e-4"), ("adam-lr1e-3", "Adam, lr 1e-3"))
ACC_LABELS = {"md": "ℓ1.1-MD, lr 5e-2 (paper)", "adam": "Adam, lr 1e-4 (paper)", "adam-lr1e-3": "Adam, lr 1e-3 (control)"}
QKV = ("Q", "K", "V")
PRUNED = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)


def seeds(rec: Records, run: str) -> list[dict]:
    return [rec.json(f"{R}/{run}/seed-{s}/summary.json") for s in SEEDS]


def _ms(vals, digits: int, scale: float = 1.0) -> str:
    m, s, _ = sample_stats([scale * v for v in vals])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _mean(vals) -> float:
    return sample_stats(vals)[0]


def accuracy(rec: Records) -> str:
    rows = []
    for run, _ in RUNS:
        ss = seeds(rec, run)
        rows.append([ACC_LABELS[run]] + [_ms([s[k] for s in ss], 2, 100)
                                         for k in ("honest_test_acc", "best_test_acc", "last_test_acc")])
    return markdown_table(["optimizer", "test acc at best-val epoch", "best test acc over epochs (paper's metric)",
                           "last epoch"], rows)


def _weights_row(label: str, ws: list[dict], bold: bool) -> list[str]:
    counts = [_ms([w[m]["above_threshold"] for w in ws], 0) for m in QKV]
    if bold:
        counts = [f"**{c}**" for c in counts]
    near = " / ".join(f"{_mean([w[m]['frac_near_zero'] for w in ws]) * 100:.2f}" for m in QKV)
    mx = " / ".join(f"{_mean([w[m]['max_abs'] for w in ws]):.3f}" for m in QKV)
    return [label] + counts + [near, mx]


def weights(rec: Records) -> str:
    init = [s["weights_init"] for s in seeds(rec, "md")]
    for run, _ in RUNS[1:]:  # every optimizer starts from the seed's same weights
        if [s["weights_init"] for s in seeds(rec, run)] != init:
            raise ValueError(f"{run}: initial weights differ from the ℓ1.1-MD run's")
    rows = [_weights_row("at initialisation", init, False)]
    rows += [_weights_row(label, [s["weights"] for s in seeds(rec, run)], run == "md") for run, label in RUNS]
    return markdown_table(["weights", "Q: #\\|w\\| > 0.06", "K: #\\|w\\| > 0.06", "V: #\\|w\\| > 0.06",
                           "Q / K / V: % with \\|w\\| < 1e-3", "Q / K / V: max \\|w\\|"], rows)


def pruned_acc(rec: Records, run: str, level: float) -> list[float]:
    out = []
    for s in seeds(rec, run):
        levels = [float(x) for x in s["pruning"]["levels"]]
        out.append(s["pruning"]["test_acc"][levels.index(level)])
    return out


def pruning(rec: Records) -> str:
    rows = [[label] + [_ms(pruned_acc(rec, run, lv), 1, 100) for lv in PRUNED] for run, label in RUNS]
    return markdown_table(["pruned fraction"] + [f"{lv:g}" for lv in PRUNED], rows)


def readme(rec: Records) -> str:
    rows = []
    for run, _ in RUNS:
        ss = seeds(rec, run)
        counts = " / ".join(f"{_mean([s['weights'][m]['above_threshold'] for s in ss]):.0f}" for m in QKV)
        label = ACC_LABELS[run].replace("(control)", "(our control)")
        rows.append([label, _ms([s["honest_test_acc"] for s in ss], 2, 100) + " %", counts])
    init = seeds(rec, "md")
    at_init = " / ".join(f"{_mean([s['weights_init'][m]['above_threshold'] for s in init]):.0f}" for m in QKV)
    return markdown_table(["optimizer", "test accuracy at the best-validation epoch",
                           f"Q / K / V entries with \\|w\\| > 0.06 (at initialisation ≈ {at_init})"], rows)


TABLES = {"vision.accuracy": accuracy, "vision.weights": weights, "vision.pruning": pruning, "readme.vision": readme}


# ---------------------------------------------------------------------------------- prose


def _change(rec: Records, run: str, m: str) -> list[int]:
    """Per seed: trained minus initial count of |w| > 0.06 of matrix ``m``."""
    return [s["weights"][m]["above_threshold"] - s["weights_init"][m]["above_threshold"] for s in seeds(rec, run)]


def _rel_change(rec: Records, run: str, m: str) -> float:
    """Mean trained count over mean initial count − 1, in %."""
    ss = seeds(rec, run)
    return 100 * (_mean([s["weights"][m]["above_threshold"] for s in ss])
                  / _mean([s["weights_init"][m]["above_threshold"] for s in ss]) - 1)


def _words(n: int) -> str:
    return {1: "one", 2: "two", 3: "three", 4: "four"}.get(n, str(n))


def claims(rec: Records) -> list[Claim]:
    out: list[Claim] = []
    md = seeds(rec, "md")
    acc = {run: _mean([s["honest_test_acc"] for s in seeds(rec, run)]) * 100 for run, _ in RUNS}
    out.append(Claim(DOC, f"It trails ℓ1.1-MD by {acc['md'] - acc['adam']:.1f} points."))
    train = _mean([s["final_train_acc"] for s in seeds(rec, "adam")])
    out.append(Claim(DOC, f"train accuracy is {train:.2f}"))
    best = {run: _mean([s["best_test_acc"] for s in seeds(rec, run)]) * 100 for run, _ in RUNS}
    out.append(Claim(DOC, f"{best['adam-lr1e-3']:.1f} vs {best['md']:.1f} by the paper's metric"))
    # ℓ1.1-MD ends below its initial count in every (seed, matrix) case
    rel = [_rel_change(rec, "md", m) for m in QKV]
    out.append(Claim(DOC, f"{-rel[0]:.1f} % (Q), {-rel[1]:.1f} % (K) and {-rel[2]:.1f} % (V) fewer"))
    cases = [(s, m, c) for m in QKV for s, c in zip(SEEDS, _change(rec, "md", m))]
    below = sum(c < 0 for _, _, c in cases)
    out.append(Claim(DOC, f"below the seed's own initial count in {below} of {len(cases)} (seed, matrix) cases"))
    per_case = [100 * c / s["weights_init"][m]["above_threshold"] for m in QKV
                for s, c in zip(md, _change(rec, "md", m))]
    out.append(Claim(README, f"ℓ1.1-MD ends with {-max(rel):.1f}–{-min(rel):.1f} % fewer entries above 0.06 than at "
                             f"initialisation on average ({-max(per_case):.1f}–{-min(per_case):.1f} % per case), fewer "
                             f"in {below} of {len(cases)} (seed, matrix) cases"))
    adam_rel = [_rel_change(rec, run, m) for run in ("adam", "adam-lr1e-3") for m in QKV]
    out.append(Claim(DOC, f"Both Adam runs end with {min(adam_rel):.1f}–{max(adam_rel):.1f} % more on average"))
    neg = [(m, s, c) for m in QKV for s, c in zip(SEEDS, _change(rec, "adam", m)) if c < 0]
    listed = " and ".join(f"{m} of seed {s} ({c})" for m, s, c in neg)
    out.append(Claim(DOC, f"though {_words(len(neg))} Adam lr 1e-4 cases end below their start: {listed}"))
    gaps = [_mean([s["weights"][m]["above_threshold"] for s in seeds(rec, "adam-lr1e-3")])
            - _mean([s["weights"][m]["above_threshold"] for s in md]) for m in QKV]
    out.append(Claim(DOC, f"The gap to Adam lr 1e-3 is {gaps[0]:.0f} (Q), {gaps[1]:.0f} (K) and {gaps[2]:.0f} (V)"))
    under = sum(a["weights"][m]["above_threshold"] < b["weights"][m]["above_threshold"]
                for m in QKV for a, b in zip(md, seeds(rec, "adam-lr1e-3")))
    out.append(Claim(DOC, f"ℓ1.1-MD is below Adam lr 1e-3 in {under} of 9 cases"))
    near = {run: [_mean([s["weights"][m]["frac_near_zero"] for s in seeds(rec, run)]) * 100 for m in QKV]
            for run in ("md", "adam-lr1e-3")}
    init = [_mean([s["weights_init"][m]["frac_near_zero"] for s in md]) * 100 for m in QKV]
    out.append(Claim(DOC, "from " + " / ".join(f"{x:.2f}" for x in init) + " % to "
                     + " / ".join(f"{x:.2f}" for x in near["md"]) + " %"))
    sd = [sample_stats([s["weights"][m]["frac_near_zero"] * 100 for s in md])[1] for m in QKV]
    k = [(near["md"][i] - near["adam-lr1e-3"][i]) / sd[i] for i in range(3)]
    out.append(Claim(DOC, f"that difference is {k[0]:.1f} (Q), {k[1]:.1f} (K) and {k[2]:.1f} (V) ℓ1.1-MD stds"))
    out.append(Claim(README, f"the rise in the fraction below 1e-3 is only {min(k):.1f}–{max(k):.1f} standard "
                             "deviations of the ℓ1.1-MD seeds against Adam"))
    mx = {run: [_mean([s["weights"][m]["max_abs"] for s in seeds(rec, run)]) for m in QKV]
          for run in ("md", "adam-lr1e-3")}
    out.append(Claim(DOC, f"max |w| is {min(mx['md']):.2f}–{max(mx['md']):.2f}, against "
                          f"{min(mx['adam-lr1e-3']):.2f}–{max(mx['adam-lr1e-3']):.2f} for Adam"))
    out += _pruning_claims(rec)
    return out


def _pruning_claims(rec: Records) -> list[Claim]:
    out = []
    for lv in (0.5, 0.8, 0.9):
        a, b = pruned_acc(rec, "md", lv), pruned_acc(rec, "adam-lr1e-3", lv)
        w = welch(a, b)
        pair = f"{_ms(a, 1, 100)} vs {_ms(b, 1, 100)} at {lv * 100:.0f} % (Welch p = {w.p:.2g})"
        out.append(Claim(DOC, pair))
    p80, p90 = (welch(pruned_acc(rec, "md", lv), pruned_acc(rec, "adam-lr1e-3", lv)).p for lv in (0.8, 0.9))
    out.append(Claim(README, f"is not significant (Welch p = {p80:.2g} at 80 %, {p90:.2g} at 90 %)"))
    return out
