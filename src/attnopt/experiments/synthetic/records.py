"""What the synthetic experiments write and print: the tables (one definition each, shown as
Markdown in report.md and as a console table by the CLI), the CSV histories, the figures and
the run folder's closing writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from attnopt.experiments.synthetic.solves import mean_std
from attnopt.report.tables import fmt, markdown_table

#: A table: (title, header, rows of cells).  ``bold`` cells are marked ``**…**`` (Markdown).
Table = tuple[str, list[str], list[list[str]]]


def finish(rd, summary: Mapping[str, Any], report: Callable[[], str], files: Callable[[Any], None]) -> Path | None:
    """The closing writes of a run folder ``rd`` (None: nothing): its files, report.md, and
    summary.json last (it marks the run complete)."""
    if rd is None:
        return None
    files(rd)
    rd.write_report(report())
    rd.write_summary(summary)
    return rd.path


def run(cls: type, experiment: str, config: Any, overrides: Mapping[str, Any], out: Any,
        compute: Callable[[Any], Any], report: Callable[[Any], str], files: Callable[[Any, Any], None]) -> Any:
    """The frame of every synthetic experiment: the config (``cls.coerce``), the run folder
    opened before the work (so a bad folder costs nothing), ``compute(cfg)`` with one torch
    thread and the random generators restored, then the closing writes (:func:`finish`)."""
    from attnopt.report.runs import as_run_dir
    from attnopt.runtime import experiment_scope

    cfg = config if isinstance(config, cls) and not overrides else cls.coerce(config, **overrides)
    rd = as_run_dir(out, cfg, experiment=experiment)
    with experiment_scope(1):
        res = compute(cfg)
    res.out = finish(rd, res.summary, lambda: report(res), lambda rd: files(rd, res))
    return res


def markdown(table: Table) -> str:
    return markdown_table(table[1], table[2])


def stat_rows(iters: np.ndarray, columns: Mapping[str, np.ndarray], **keys: Any) -> list[dict]:
    """One CSV row per logged iteration: ``keys``, then ``<name>_mean`` and ``<name>_std`` over
    the seeds (axis 1) of every (L, S) array in ``columns``."""
    stats = {name: _mean_std(arr) for name, arr in columns.items()}
    rows = []
    for j, k in enumerate(iters):
        row = {**keys, "iteration": int(k)}
        for name, (m, s) in stats.items():
            row[f"{name}_mean"], row[f"{name}_std"] = m[j], s[j]
        rows.append(row)
    return rows


def trace_rows(iters: np.ndarray, columns: Mapping[str, np.ndarray], **keys: Any) -> list[dict]:
    """One CSV row per logged iteration of a single run: ``keys``, then every (L,) column."""
    return [{**keys, "iteration": int(k), **{name: float(col[j]) for name, col in columns.items()}}
            for j, k in enumerate(iters)]


def _mean_std(a) -> tuple[np.ndarray, np.ndarray]:
    return mean_std(np.asarray(a), axis=1)


# --------------------------------------------------------------------------------------
# E1 convergence


def convergence_table(res) -> Table:
    header = ["p", "iterations", "D at k=0", "D final (mean ± std)", "median", "seeds used",
              "SVM ok / unconv. / infeas. / error", "verdict global / local / neither / n.a.", "max-softmax", "loss"]
    rows = []
    for key, s in res.summary["per_p"].items():
        c, v = s["svm"], s["verdicts"]
        rows.append([key, str(s["iterations"]), fmt(s["divergence_initial_mean"]),
                     fmt(s["divergence_final_mean"], s["divergence_final_std"]), fmt(s["divergence_final_median"]),
                     f"{s['seeds_used']}/{s['seeds']}",
                     f"{c['ok']} / {c['unconverged']} / {c['infeasible']} / {c['error']}",
                     f"{v['global']} / {v['local']} / {v['neither']} / {v['unavailable']}",
                     f"{s['max_softmax_final_mean']:.4f}", f"{s['loss_final_mean']:.4f}"])
    return "E1 convergence", header, rows


def rate_table(res) -> Table:
    header = ["p", "k range", "D ∝ (log k)^b: b (R²)", "D = c + e/log k: c, e (R²)", "D ∝ k^b: b (R²)", "best",
              "per-seed b (mean ± std)"]
    rows = []
    for key, s in res.summary["per_p"].items():
        f = s["rate_fit"]
        rows.append([key, f"{f['k_from']}–{f['k_to']} ({f['points']} pts)",
                     f"{fmt(f['polylog_slope'])} ({fmt(f['polylog_r2'])})",
                     f"{fmt(f['inv_log_intercept'])}, {fmt(f['inv_log_slope'])} ({fmt(f['inv_log_r2'])})",
                     f"{fmt(f['power_slope'])} ({fmt(f['power_r2'])})", f["best"],
                     fmt(f["seed_polylog_slope_mean"], f["seed_polylog_slope_std"])])
    return "rate of the matched divergence", header, rows


def write_convergence_files(rd, res) -> None:
    from attnopt.report import figures as F

    rows = []
    for p, run in res.runs.items():
        tr = run.traj
        cols = {"divergence": run.divergence, **{k: getattr(tr, k).numpy()
                                                 for k in ("loss", "max_softmax", "logistic_prob", "w_norm")}}
        part = stat_rows(tr.iters, cols, p=p)
        for row, nv in zip(part, np.isfinite(run.divergence).sum(axis=1)):
            row["n_seeds"] = int(nv)
        rows += part
    rd.write_csv("convergence_history.csv", rows=rows)
    rd.write_csv("convergence_seeds.csv", rows=_seed_rows(res))
    series = {a: {f"p = {p:g}": (run.iters, *_mean_std(run.divergence if a == "divergence"
                                                        else getattr(run.traj, a).numpy()))
                  for p, run in res.runs.items()} for a in ("divergence", "max_softmax", "w_norm", "loss")}
    rd.save_figure("convergence.png", F.convergence_figure(
        series["divergence"], series["max_softmax"], series["w_norm"], series["loss"],
        title=f"E1: normalised ℓp-AttGD, matched ℓp-AttSVM (mean ± std over {len(res.seeds)} seeds)"))
    curves = {label: (k, m) for label, (k, m, _) in series["divergence"].items()}
    rd.save_figure("rate.png", F.rate_figure(curves, {f"p = {p:g}": f for p, f in res.fits.items()}))
    ps = list(res.runs)
    fin = [res.summary["per_p"][f"{p:g}"] for p in ps]
    rd.save_figure("final_vs_p.png", F.sweep_figure(ps, [f["divergence_final_mean"] for f in fin],
                                                     [f["divergence_final_std"] for f in fin],
                                                     [res.runs[p].iterations for p in ps]))
    rd.save_figure("verdicts.png", F.verdict_figure({f"{p:g}": res.runs[p].verdict_counts() for p in ps}))


def _seed_rows(res) -> list[dict]:
    rows = []
    for p, run in res.runs.items():
        for s, seed in enumerate(res.seeds):
            o = run.svm[s]
            rows.append({
                "p": p, "seed": seed, "alpha": " ".join(str(int(a)) for a in run.alpha[s]),
                "svm_status": o.status, "svm_rel_gap": o.rel_gap, "svm_objective": o.objective,
                "divergence_final": run.divergence[-1, s], "verdict": run.verdicts[s],
                "loss_final": float(run.traj.loss[-1, s]), "max_softmax_final": float(run.traj.max_softmax[-1, s]),
                "w_norm_final": float(run.traj.w_norm[-1, s]),
            })
    return rows


def convergence_report(res) -> str:
    cfg = res.config
    lines = [
        "# E1 — directional convergence of normalised ℓp-AttGD to the ℓp-AttSVM",
        "",
        f"Seeds {res.seeds[0]}..{res.seeds[-1]} ({len(res.seeds)}), n={cfg.n}, T={cfg.T}, d={cfg.d}, "
        f"η={cfg.lr}, normalised={cfg.normalize}, W(0)={cfg.init}"
        + (f" (std {cfg.init_std})" if cfg.init == "normal" else "") + f", query={cfg.query}, float64, full batch, "
        f"v fixed. α = argmax of the final attention scores per seed; SVM solver `{cfg.solver}`.",
        "",
        "Metric: D_ψp(W^mm/‖W^mm‖_p, W(k)/‖W(k)‖_p) (SVM first), mean ± std over the seeds whose SVM is usable.",
        "",
        markdown(convergence_table(res)),
        "", "## Rate of the matched divergence against log k (claim 2)", "",
        "Fits of the mean curve on the logged iterations k_from ≤ k ≤ k_to: from where the mean max-softmax "
        "reaches 0.99 (tokens selected) to where ‖W(k)‖_p reaches 99% of its final value (a k_to below the "
        "last iteration means W stopped moving: with the published ε the step stops being normalised once "
        "‖∇L‖_q < ε). R² is measured on log D for all three models.",
        "", markdown(rate_table(res)),
    ]
    issues = {k: s["svm_issues"] for k, s in res.summary["per_p"].items() if s["svm_issues"]}
    if issues:
        lines += ["", "## SVM issues (seeds excluded from the means" + (
            ", unconverged ones too" if cfg.drop_unconverged else "; unconverged ones kept") + ")", ""]
        for key, d in issues.items():
            for seed, msg in list(d.items())[:20]:
                lines.append(f"- p={key}, {seed}: {msg}")
    sec = res.seconds
    lines += ["", f"Wall time: {sec['total']:.1f} s (training {sec['train']:.1f} s, matched SVMs + verdicts "
              f"{sec['svm']:.1f} s).", "",
              "Figures: `convergence.png`, `rate.png`, `final_vs_p.png`, `verdicts.png`. "
              "Data: `convergence_history.csv` (mean/std per logged iteration), `convergence_seeds.csv` (per seed)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# E1 matrix


def matrix_table(res) -> Table:
    """The final-value table: rows p trained, columns q of the SVM (mean ± std), matched in bold."""
    header = ["p trained \\ q SVM"] + [f"q = {q:g}" for q in res.qs]
    rows = []
    for p, run in res.convergence.runs.items():
        cells = []
        for q in res.qs:
            c = fmt(*res.final(p, q))
            cells.append(f"**{c}**" if math.isclose(p, q) else c)
        rows.append([f"p = {p:g} ({run.iterations} it.)"] + cells)
    return "E1 matrix: final D_ψp(W_q^mm, W_p(k)) (mean ± std)", header, rows


def matrix_markdown(res) -> str:
    """The final-value table of an E1-matrix result as Markdown."""
    return markdown(matrix_table(res))


def write_matrix_files(rd, res) -> None:
    from attnopt.report import figures as F

    write_convergence_files(rd, res.convergence)
    rows, grid = [], {}
    for (p, q), D in res.divergence.items():
        iters = res.convergence.runs[p].iters
        grid[(p, q)] = (iters, *_mean_std(D))
        rows += stat_rows(iters, {"divergence": D}, p_trained=p, q_svm=q)
    rd.write_csv("matrix_history.csv", rows=rows)
    rd.write_csv("matrix_final.csv", rows=res.table)
    rd.save_figure("matrix.png", F.matrix_figure(grid, list(res.convergence.runs), list(res.qs),
                                                 n_seeds=len(res.convergence.seeds),
                                                 note="same α and W(0)" if res.config.alpha_from == "p"
                                                 else "α of the q-run (published), same W(0)"))


def matched_line(below: Mapping[str, bool]) -> str:
    return "Matched q = p smallest in its row: " + ", ".join(
        f"p={k}: {'yes' if v else 'NO'}" for k, v in below.items())


def matrix_report(res) -> str:
    from attnopt.experiments.synthetic.config import SPEC_MATRIX_P3

    same = res.config.alpha_from == "p"
    lines = ["# E1-matrix — trained p against the ℓq-AttSVM" + (" of the same tokens" if same else ""), "",
             "D_ψp(W_q^mm/‖W_q^mm‖_p, W_p(k)/‖W_p(k)‖_p) at the final iteration, mean ± std over seeds; "
             + ("α and W(0) are the p-run's for every q" if same else
                "α of the q-SVM from the q-run (the published code's choice); W(0) shared")
             + " (matched q = p in bold).", "", matrix_markdown(res), "",
             matched_line(res.summary["matched_is_smallest"]), "",
             "Spec read-off of the authors' p = 3 panel at 20,000 iterations: "
             + ", ".join(f"q={q:g} ≈ {v}" for q, v in SPEC_MATRIX_P3.items()) + ".", "",
             f"Extra SVM solves for the matrix: {res.seconds['extra_svm_solves']} in {res.seconds['extra_svm']:.1f} s.",
             "", "Figure: `matrix.png`; data: `matrix_history.csv`, `matrix_final.csv`."]
    conv = convergence_report(res.convergence).replace("# E1 —", "## E1 —", 1)
    return "\n".join(lines) + "\n\n" + conv


__all__ = ["Table", "finish", "markdown", "stat_rows", "trace_rows", "convergence_table", "rate_table",
           "matrix_table", "matrix_markdown", "convergence_report", "matrix_report", "matched_line",
           "write_convergence_files", "write_matrix_files"]
