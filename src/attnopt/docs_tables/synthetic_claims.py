"""Numbers quoted in the prose of the synthetic pages (the README and docs/synthetic_results.md),
each rebuilt from the records under ``results/synthetic/``."""

from __future__ import annotations

from attnopt.docs_tables.records import Claim, Records
from attnopt.docs_tables.synthetic import (DOC, PS, README, STEPS, _cell, _d, _drift, _eps_rows, _kq,
                                                  _log10, _per_p, _pert_rows, _summary, _timing)
from attnopt.report.tables import fmt


def _both(text: str) -> list[Claim]:
    return [Claim(DOC, text), Claim(README, text)]


def _span(xs, f: str = ".3f") -> str:
    return f"{min(xs):{f}}–{max(xs):{f}}"


def _neg_span(xs, f: str = ".1f") -> str:
    """A range of negative numbers written from the smaller magnitude: −9.9 to −11.3."""
    lo, hi = max(xs), min(xs)
    return f"−{-lo:{f}} to −{-hi:{f}}"


def matrix_claims(rec: Records) -> list[Claim]:
    out = []
    m = {(s, p): _cell(rec, s, p, p)["divergence_final_mean"] for s in STEPS for p in PS}
    ratio = m[("published", "1.75")] / m[("exact", "1.75")]
    cut = 100 * (1 - m[("exact", "2")] / m[("published", "2")])
    out.append(Claim(DOC, f"lowers the matched divergence at p = 1.75 {ratio:.1f}-fold ({fmt(m[('exact', '1.75')])} "
                          f"vs {fmt(m[('published', '1.75')])}) and at p = 2 by {cut:.0f} % ({fmt(m[('exact', '2')])} "
                          f"vs {fmt(m[('published', '2')])})"))
    out.append(Claim(README, f"step lowers the matched divergence {ratio:.1f}-fold at p = 1.75"))
    read = _summary(rec, "e1_matrix_exact")["spec_p3_readoff"]["3"]
    out += _both(f"({fmt(m[('exact', '3')])} vs ≈ {read:g})")
    solves = {s: _summary(rec, f"e1_matrix_{s}")["convergence"]["svm_solves"]
              + _summary(rec, f"e1_matrix_{s}")["seconds"]["extra_svm_solves"] for s in STEPS}
    out.append(Claim(DOC, f"({solves['exact']} distinct solves with the exact step, {solves['published']} with the "
                          "published one"))
    out.append(Claim(README, f"({solves['exact']} distinct solves with the exact step)"))
    runs = {s: _per_p(rec, f"e1_matrix_{s}") for s in STEPS}
    for s in STEPS:
        for p in PS:
            if not _summary(rec, f"e1_matrix_{s}")["matched_is_smallest"][p]:
                raise ValueError(f"claim 1 fails for {s}, p = {p}: the pages say it holds")
    v = {s: [runs[s][p]["verdicts"] for p in PS] for s in STEPS}
    j = lambda vs, k: " / ".join(str(x[k]) for x in vs)  # noqa: E731
    out.append(Claim(README, f"{j(v['exact'], 'global')} are globally optimal, {j(v['exact'], 'local')} only locally "
                             f"optimal and {j(v['exact'], 'neither')} neither (p = 1.75 / 2 / 3, exact step; "
                             f"{j(v['published'], 'global')}, {j(v['published'], 'local')} and "
                             f"{j(v['published'], 'neither')} with the published one)"))
    fits = {s: [runs[s][p]["rate_fit"] for p in PS] for s in STEPS}
    cut_at = [f["k_to"] for f in fits["published"][:2]]
    out.append(Claim(DOC, f"{cut_at[0]:,} and {cut_at[1]:,} with the published one at p = 1.75 and 2"))
    out.append(Claim(README, f"the published step cut them at k = {cut_at[0]:,} and {cut_at[1]:,} for p = 1.75 and 2"))
    fe = fits["exact"]
    r2 = (f"R² {_span([f['power_r2'] for f in fe])} against {_span([f['polylog_r2'] for f in fe])}")
    out += _both(r2)
    out.append(Claim(DOC, f"b ≈ {_neg_span([f['polylog_slope'] for f in fe])} (per seed "
                          f"{_neg_span([f['seed_polylog_slope_mean'] for f in fe])} on average)"))
    out.append(Claim(README, f"b_log ≈ {_neg_span([f['polylog_slope'] for f in fe])}"))
    return out


def sweep_claims(rec: Records) -> list[Claim]:
    ex, pub = _per_p(rec, "psweep_exact"), _per_p(rec, "psweep_published")
    small = [p for p in ex if float(p) <= 3]
    out = [Claim(DOC, f"the final divergence is at most {fmt(max(ex[p]['divergence_final_mean'] for p in small))} "
                      "for every p ≤ 3")]
    nei = [ex[p]["verdicts"]["neither"] for p in ex if p != "4"]
    out.append(Claim(DOC, f"{ex['4']['verdicts']['neither']} of its {ex['4']['seeds']} final α are neither globally "
                          f"nor locally optimal, against {min(nei)}–{max(nei)} for the other p"))
    parts = [f"{p}: {_d(ex[p])} (both)" if _d(ex[p]) == _d(pub[p]) else f"{p}: {_d(ex[p])} / {_d(pub[p])}"
             for p in ex]
    out.append(Claim(README, "exact / published): p = " + "; ".join(parts)))
    dw = {s: _per_p(rec, f"donewhen_{s}") for s in STEPS}
    ps = list(dw["exact"])
    out.append(Claim(README, f"ends at D = {_d(dw['exact'][ps[0]])} and {_d(dw['exact'][ps[1]])} (exact) against "
                             f"{_d(dw['published'][ps[0]])} and {_d(dw['published'][ps[1]])} (published)"))
    out.append(Claim(DOC, f"(D {_d(dw['published'][ps[0]])} and {_d(dw['published'][ps[1]])}"))
    path = {s: _per_p(rec, f"e1_path_{s}") for s in STEPS}
    out.append(Claim(README, f"final divergence {path['exact']['1.75']['divergence_final']:.3g} / "
                             f"{path['published']['1.75']['divergence_final']:.3g} (p = 1.75, exact / published) and "
                             f"{path['exact']['3']['divergence_final']:.3g} / "
                             f"{path['published']['3']['divergence_final']:.3g} (p = 3)"))
    return out


def eps_claims(rec: Records) -> list[Claim]:
    by = {(r["gradient"], r["eps"]): r for r in _eps_rows(rec)}
    epss = list(dict.fromkeys(r["eps"] for r in _eps_rows(rec)))
    pub, small, zero = epss[0], [e for e in epss[1:] if e > 0], 0.0
    a, x = by[("autograd", pub)], by[("exact", pub)]
    out = _both(f"the true ‖G‖_q is {_log10(a['log10_true_grad_norm_median'])} (median over the seeds), below "
                f"ε = {pub:.2g}")
    out.append(Claim(DOC, f"stalls at the same place (D {_d(x)} against {_d(a)}, ‖W‖_p {x['w_norm_final_mean']:.0f} "
                          f"against {a['w_norm_final_mean']:.0f})"))
    out.append(Claim(README, f"stalls at the same place (D {fmt(x['divergence_final_mean'])} against "
                             f"{fmt(a['divergence_final_mean'])})"))
    ds = ", ".join(fmt(by[("exact", e)]["divergence_final_mean"]) for e in small[:-1])
    labels = ", ".join(f"{e:.0e}".replace("e-0", "e-") for e in small[:-1])
    out.append(Claim(DOC, f"D falls from {fmt(x['divergence_final_mean'])} to {ds} and "
                          f"{fmt(by[('exact', small[-1])]['divergence_final_mean'])} as ε goes to {labels} and "
                          f"{small[-1]:.0e}".replace("e-0", "e-")))
    auto_min = min(by[("autograd", e)]["divergence_final_mean"] for e in epss)
    out.append(Claim(DOC, f"With autograd's gradient D stays at {fmt(auto_min)} or above for every ε"))
    az = by[("autograd", zero)]
    out.append(Claim(DOC, f"at ε = 0 the true ‖G‖_q at its last iterate, {_log10(az['log10_true_grad_norm_median'])}"))
    xz = by[("exact", zero)]
    out += _both(f"D {_d(xz)}, ‖W‖_p {xz['w_norm_final_mean']:.3g}")
    out.append(Claim(DOC, f"its true ‖G‖_q at the end, {_log10(xz['log10_true_grad_norm_median'])}"))
    return out


def joint_claims(rec: Records) -> list[Claim]:
    ex, pub = _per_p(rec, "e2_joint_exact"), _per_p(rec, "e2_joint_published")
    w = [pub[p]["divergence_W_final"] / ex[p]["divergence_W_final"] for p in ("1.75", "2")]
    v = [pub[p]["divergence_v_final"] / ex[p]["divergence_v_final"] for p in ("1.75", "2")]
    return [Claim(DOC, f"brings W {w[0]:,.0f}× and {w[1]:,.0f}× and v {v[0]:,.0f}× and {v[1]:,.0f}× closer to their "
                       "SVM directions at p = 1.75 and 2")]


def kq_claims(rec: Records) -> list[Claim]:
    runs = list(_kq(rec).values())
    nuc = [r["targets"]["nuclear"]["cosine_final_mean"] for r in runs]
    other = [r["targets"][t]["cosine_final_mean"] for r in runs for t in ("l2", "lp")]
    for r in runs:
        if r["closest_by_cosine"] != "nuclear":
            raise ValueError(f"E7 p = {r['p']}, m = {r['m']}: the closest SVM is {r['closest_by_cosine']}")
    out = [Claim(DOC, f"(cosine {_span(nuc, '.2f')}), not to the Frobenius or the ℓp one ({_span(other, '.2f')})")]
    out.append(Claim(README, f"(cosine {_span(nuc, '.2f')} against {_span(other, '.2f')})"))
    full = [r for r in runs if r["m"] == 10]
    out.append(Claim(DOC, f"numerical rank {_span([r['rank_final_mean'] for r in full], '.1f')} on average"))
    out.append(Claim(DOC, f"nuclear solution has rank {_span([r['rank_nuclear_svm_mean'] for r in full], '.1f')}"))
    d = _drift(rec)
    fell = [r["seeds_cos_fell"] for r in d]
    long = d[0]["iterations_long"]
    for r in d:
        if not r["cos_long_mean"] > r["cos_protocol_mean"]:
            raise ValueError(f"E7 drift p = {r['p']}, m = {r['m']}: the mean cosine did not rise")
    text = (f"Run on to {long:,} iterations, the mean cosine to the nuclear SVM rises for every (p, m), but it falls for "
            f"{min(fell)} to {max(fell)} of the {d[0]['seeds_compared']} seeds")
    out += _both(text)
    return out


def timing_claims(rec: Records) -> list[Claim]:
    t = {n: _timing(rec, n) for n in ("e1_timing_exact_quiet", "e1_timing_published_quiet", "e1_timing_exact",
                                      "e1_timing_published")}
    eq, pq, el, pl = (t[n] for n in t)
    slower = 100 * (eq["batched_wall_s"] / pq["batched_wall_s"] - 1)
    faster = 100 * (1 - el["batched_wall_s"] / pl["batched_wall_s"])
    out = [Claim(DOC, f"{slower:.0f} % slower in the quieter pair, {faster:.0f} % faster in the loaded one"),
           Claim(DOC, f"with the exact step ({eq['batched_wall_s']:.1f} s)")]
    out.append(Claim(README, f"takes **{eq['batched_wall_s']:.1f} s** with the exact step"))
    out.append(Claim(README, f"(training {eq['batched_train_s']:.1f} s, {eq['svm_solves']} SVM solves with "
                             f"token-optimality verdicts {eq['svm_and_verdict_s']:.1f} s, matrix SVMs "
                             f"{eq['matrix_extra_svm_s']:.1f} s, figures and files {eq['other_s']:.1f} s); the "
                             f"published step took {pq['batched_wall_s']:.1f} s"))
    out.append(Claim(README, f"Batching is {eq['train_speedup']:.1f}× faster than the same exact step run one seed at a "
                             f"time ({eq['baseline_seeds']} seed timed, extrapolated), and {pq['train_speedup']:.1f}× "
                             "faster than the published step"))
    out.append(Claim(README, f"the same runs took {el['batched_wall_s']:.1f} s and {pl['batched_wall_s']:.1f} s"))
    return out


def perturbation_claims(rec: Records) -> list[Claim]:
    rows = _pert_rows(rec)
    n = sum(r["seeds_compared"] for r in rows)
    changed = sum(r["seeds_alpha_changed"] for r in rows)
    big = lambda step, target, delta: max(r["change_max"] for r in rows  # noqa: E731
                                          if r["step"] == step and r["target"] == target and r["delta"] == delta)
    shift = max(abs(r["mean_perturbed"] - r["mean"]) for r in rows if r["delta"] <= 1e-7)
    shift_all = max(abs(r["mean_perturbed"] - r["mean"]) for r in rows)
    pub_tiny = max(big("published", t, 1e-12) for t in ("W0", "data"))
    out = [Claim(DOC, f"No seed selects other tokens under any of these perturbations, with either step ({changed} of "
                      f"{n:,} (seed, perturbation) pairs)"),
           Claim(DOC, f"(at most {big('exact', 'W0', 1e-7):.2g} for δ = 1e-7 on W(0), "
                      f"{big('exact', 'data', 1e-7):.2g} on the data)"),
           Claim(DOC, f"a seed's D moves by up to {pub_tiny:.2g} already at δ = 1e-12"),
           Claim(DOC, f"The means move by at most {shift:.2g} for δ ≤ 1e-7 and {shift_all:.2g} for δ = 1e-4"),
           Claim(DOC, f"a seed's final D by at most {big('exact', 'data', 1e-7):.2g} (exact step) and "
                      f"{big('published', 'data', 1e-7):.2g} (published step)")]
    if changed:
        raise ValueError("the pages say no seed changes its tokens under the perturbations; the record disagrees")
    return out


def claims(rec: Records) -> list[Claim]:
    out: list[Claim] = []
    for fn in (matrix_claims, sweep_claims, eps_claims, joint_claims, kq_claims, timing_claims, perturbation_claims):
        out += fn(rec)
    return out


__all__ = ["claims"]
