"""Modular division ``a ÷ b mod p``: standard 1-/2-layer transformers (AdamW) vs the convex model.

Data: all ``p(p−1)`` equations ``[a, /, b, =] → c`` (:mod:`attnopt.data.modular`), a seeded
train/test split by ``train_fraction``.

* Transformers: causal pre-LN transformer (learned token and position embeddings, ``d_model``,
  ``num_heads``, MLP 4·d_model, no dropout), logits read at the ``=`` position, cross-entropy,
  AdamW (β = (0.9, 0.98), weight decay ``weight_decay``, 10-step linear warm-up), minibatches
  of ``batch_size`` — the setting of the grokking paper (Power et al. 2022) scaled to CPU.
* Convex model: the gated convex attention program (vector output over the ``p`` classes,
  cross-entropy) over **fixed** token features — ``onehot`` (each token a one-hot vector of
  size ``p+2``) or ``random`` (a fixed Gaussian embedding of size ``feature_dim``) — with
  ``gate_patterns`` sampled gated-ReLU patterns (pattern 0 = all ones).  Solved by FISTA; one
  FISTA iteration (one full-batch proximal-gradient step) counts as one step.  β is set
  relative to ``λ_max`` (the smallest β with the zero solution): ``β = beta_rel · λ_max``.

  This is a different model from the transformer: a convex model over fixed features can only
  use the token embedding it is given, and without gates it is additive in ``(a, b)``
  (``logits = U[a] + V[b] + const``), which cannot represent division; the sampled gates add
  a fixed partition of the ``(a, b)`` grid.  The experiment measures how it actually fares.

:func:`run_modular` returns the histories and a summary; with ``out`` it also writes
``config.json``, ``history_<model>.csv``, ``accuracy.png``, ``report.md`` and, last,
``summary.json`` to the run folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn

from attnopt.config import (ConfigMixin, check_bool, check_choice, check_float, check_int, check_sequence,
                            config_error)
from attnopt.convex.fista import solve_fista
from attnopt.convex.programs import apply_gates, loss_value, make_problem, sample_gates
from attnopt.data.modular import is_prime, split_equations
from attnopt.experiments.convex._common import (RunResult, Ticker, begin, check_device, check_dtype,
                                                require_device, torch_dtype, write_histories)
from attnopt.report.tables import fmt, markdown_table
from attnopt.runtime import ProgressFn, experiment_scope

FEATURES = ("onehot", "random")
GATE_SCHEMES = ("gaussian", "rademacher")


@dataclass(frozen=True)
class ModularConfig(ConfigMixin):
    """The modular-division comparison (defaults: p = 97, train fraction 0.5, 1- and 2-layer
    transformers for 3,000 AdamW steps, the convex model for 1,000 FISTA iterations).

    ``layers``: the transformer depths to train (empty: none); ``convex``: also the convex
    model.  ``threads`` caps torch's threads during the run (None: leave them)."""

    p: int = 97
    train_fraction: float = 0.5
    seed: int = 0
    # transformers
    layers: tuple[int, ...] = (1, 2)
    d_model: int = 128
    num_heads: int = 4
    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1.0
    batch_size: int = 512
    eval_every: int = 50
    # convex model
    convex: bool = True
    convex_features: str = "onehot"
    feature_dim: int = 64
    gate_patterns: int = 16
    gate_scheme: str = "gaussian"
    beta_rel: float = 1e-3
    convex_max_iter: int = 1000
    convex_tol: float = 1e-6
    convex_eval_every: int = 10
    dtype: str = "float32"
    device: str = "cpu"
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("p", check_int(self, "p", self.p, 3))
        if not is_prime(self.p):
            raise config_error(self, f"p must be a prime (division needs inverses mod p), got {self.p}")
        s("train_fraction", check_float(self, "train_fraction", self.train_fraction, gt=0, lt=1))
        s("seed", check_int(self, "seed", self.seed, 0))
        s("layers", check_sequence(self, "layers", self.layers, lambda o, n, v: check_int(o, n, v, 1),
                                   allow_empty=True))
        for name in ("d_model", "num_heads", "steps", "batch_size", "eval_every", "feature_dim", "gate_patterns",
                     "convex_max_iter", "convex_eval_every"):
            s(name, check_int(self, name, getattr(self, name), 1))
        if self.d_model % self.num_heads:
            raise config_error(self, f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        s("lr", check_float(self, "lr", self.lr, gt=0))
        s("weight_decay", check_float(self, "weight_decay", self.weight_decay, ge=0))
        s("convex", check_bool(self, "convex", self.convex))
        check_choice(self, "convex_features", self.convex_features, FEATURES)
        check_choice(self, "gate_scheme", self.gate_scheme, GATE_SCHEMES)
        s("beta_rel", check_float(self, "beta_rel", self.beta_rel, ge=0))
        s("convex_tol", check_float(self, "convex_tol", self.convex_tol, gt=0))
        check_dtype(self, "dtype", self.dtype)
        s("device", check_device(self, "device", self.device))
        if self.threads is not None:
            s("threads", check_int(self, "threads", self.threads, 1))
        if not self.layers and not self.convex:
            raise config_error(self, "nothing to run: layers is empty and convex is false")


class ModularResult(RunResult):
    """:func:`run_modular`'s result; ``histories`` per model: step, time, train loss, train
    and test accuracy (and the objective for the convex model)."""


class ModTransformer(nn.Module):
    """Causal pre-LN transformer over ``[a, /, b, =]``; logits at the last position."""

    def __init__(self, vocab: int, n_ctx: int, d_model: int, num_heads: int, num_layers: int, out: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(n_ctx, d_model)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, num_heads, 4 * d_model, dropout=0.0, activation="relu",
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, out, bias=False)
        self.register_buffer("causal", torch.triu(torch.full((n_ctx, n_ctx), float("-inf")), 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))[None]
        for blk in self.blocks:
            h = blk(h, src_mask=self.causal[:n, :n])
        return self.head(self.ln(h[:, -1]))


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean())


def _steps_to(hist: list[dict], key: str, level: float) -> int | None:
    """The first logged step at which ``key`` reaches ``level`` (None: never)."""
    for r in hist:
        if r[key] >= level:
            return int(r["step"])
    return None


def train_transformer(cfg: ModularConfig, data, num_layers: int, progress: ProgressFn | None = None) -> list[dict]:
    """Train one :class:`ModTransformer` (cross-entropy at the ``=`` position, AdamW, warm-up);
    the history holds train loss, train and test accuracy every ``eval_every`` steps."""
    torch.manual_seed(cfg.seed)
    tick = Ticker(progress, f"transformer {num_layers}L", cfg.steps)
    dev = torch.device(cfg.device)
    model = ModTransformer(data.vocab_size, 4, cfg.d_model, cfg.num_heads, num_layers, data.p).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    Xtr, ytr = data.tokens[data.train_idx].to(dev), data.labels[data.train_idx].to(dev)
    Xte, yte = data.tokens[data.test_idx].to(dev), data.labels[data.test_idx].to(dev)
    g = torch.Generator().manual_seed(cfg.seed)
    lossf = nn.CrossEntropyLoss()
    hist: list[dict] = []
    t0 = time.perf_counter()
    t_eval = 0.0

    def evaluate(step: int) -> None:
        nonlocal t_eval
        te = time.perf_counter()
        model.eval()
        with torch.no_grad():
            ltr = model(Xtr)
            lte = model(Xte)
            rec = {"step": step, "time": te - t0 - t_eval, "train_loss": float(lossf(ltr, ytr)),
                   "train_acc": _accuracy(ltr, ytr), "test_acc": _accuracy(lte, yte)}
        model.train()
        hist.append(rec)
        t_eval += time.perf_counter() - te

    evaluate(0)
    N = Xtr.shape[0]
    bs = min(cfg.batch_size, N)
    for step in range(1, cfg.steps + 1):
        idx = torch.randperm(N, generator=g)[:bs].to(dev)
        loss = lossf(model(Xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate(step)
            tick(step)
    return hist


def convex_features(cfg: ModularConfig, tokens: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """The fixed token features of the convex model: one-hot ``(E, 4, p+2)``, or a seeded
    Gaussian embedding ``E_tok ~ N(0, 1/feature_dim)`` of size ``feature_dim``."""
    if cfg.convex_features == "onehot":
        return torch.nn.functional.one_hot(tokens, vocab).to(dtype)
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    E = torch.randn(vocab, cfg.feature_dim, generator=g, dtype=torch.float64) / math.sqrt(cfg.feature_dim)
    return E.to(dtype)[tokens]


def train_convex(cfg: ModularConfig, data, progress: ProgressFn | None = None) -> tuple[list[dict], dict]:
    """The gated convex program (cross-entropy over the p classes, ``β = beta_rel · λ_max``)
    solved by FISTA; the history holds the objective and accuracies every
    ``convex_eval_every`` iterations, the info the solution's size and certificate."""
    dtype = torch_dtype(cfg.dtype)
    tick = Ticker(progress, "convex", cfg.convex_max_iter)
    dev = torch.device(cfg.device)
    Xall = convex_features(cfg, data.tokens, data.vocab_size, dtype).to(dev)
    Xtr, Xte = Xall[data.train_idx], Xall[data.test_idx]
    ytr, yte = data.labels[data.train_idx].to(dev), data.labels[data.test_idx].to(dev)
    D, ginfo = sample_gates(Xtr, cfg.gate_patterns, scheme=cfg.gate_scheme, seed=cfg.seed)
    Dte = apply_gates(Xte, ginfo["u1"], ginfo["u2"])
    prob = make_problem(Xtr, ytr, "cross_entropy", beta=0.0, gates=D, num_classes=data.p, dtype=dtype)
    lam = prob.lambda_max()
    prob.beta = cfg.beta_rel * lam
    test = make_problem(Xte, yte, "cross_entropy", beta=prob.beta, gates=Dte, num_classes=data.p, dtype=dtype)
    hist: list[dict] = []
    t_eval = [0.0]
    t0 = time.perf_counter()

    def record(it: int, Z: torch.Tensor, rec: dict) -> None:
        te = time.perf_counter()
        with torch.no_grad():
            Ptr = prob.predict(Z)
            Pte = test.predict(Z)
            hist.append({"step": it, "time": te - t0 - t_eval[0],
                         "train_loss": float(loss_value(Ptr, ytr, "cross_entropy")) / prob.N,
                         "objective": prob.objective(Z),
                         "train_acc": _accuracy(Ptr, ytr), "test_acc": _accuracy(Pte, yte)})
        t_eval[0] += time.perf_counter() - te
        tick(it)

    record(0, prob.zeros(), {})
    res = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, callback=record,
                      callback_every=cfg.convex_eval_every, check_every=cfg.convex_eval_every, log_every=0)
    if not hist or hist[-1]["step"] != res.iterations:
        record(res.iterations, res.Z, {})
    tick.close(res.iterations)
    norms = prob.group_norms(res.Z)
    info = {
        "beta": prob.beta,
        "lambda_max": lam,
        "num_patterns": prob.m,
        "num_features": prob.d,
        "fista_iterations": res.iterations,
        "fista_converged": res.converged,
        "fista_rel_gap": res.rel_gap,
        "fista_time_s": res.time,
        "objective": res.objective,
        "num_heads": int((norms > 0).sum()),
        "num_rows": int(norms.numel()),
        "tokens_used": [int(k) for k in torch.nonzero((norms > 0).any(0).any(0)).flatten()],
    }
    return hist, info


def check_environment(cfg: ModularConfig) -> None:
    """What the run needs beyond its config (the device), checked before anything is written."""
    require_device(cfg, "device", cfg.device)


def run_modular(config: ModularConfig | Mapping | None = None, *, out=None,
                progress: ProgressFn | None = None) -> ModularResult:
    """Run the modular-division comparison (see the module docstring); ``out``: a run folder
    (path or :class:`~attnopt.report.runs.RunDir`), None writes nothing."""
    from attnopt.experiments.convex import figures

    cfg, rd = begin(ModularConfig, config, out, "convex-modular", check_environment)
    histories: dict[str, list[dict]] = {}
    with experiment_scope(cfg.threads):
        data = split_equations(cfg.p, cfg.train_fraction, cfg.seed)
        summary: dict = {"experiment": "convex-modular", "p": cfg.p, "num_equations": data.num_equations,
                         "num_train": len(data.train_idx), "num_test": len(data.test_idx), "models": {}}
        for L in cfg.layers:
            name = f"transformer_{L}layer"
            t = time.perf_counter()
            h = train_transformer(cfg, data, L, progress)
            histories[name] = h
            summary["models"][name] = _model_summary(h, time.perf_counter() - t)
        if cfg.convex:
            t = time.perf_counter()
            h, info = train_convex(cfg, data, progress)
            histories["convex"] = h
            summary["models"]["convex"] = {**_model_summary(h, time.perf_counter() - t), **info}
    res = ModularResult(cfg, summary, histories)
    if rd is not None:
        write_histories(rd, histories)
        figures.accuracy_figure(rd, histories, cfg.p, cfg.train_fraction)
        rd.write_report(_report(cfg, summary))
        rd.write_summary(summary)
        res.out = rd.path
    return res


def _model_summary(h: list[dict], wall: float) -> dict:
    return {
        "final_train_acc": h[-1]["train_acc"],
        "final_test_acc": h[-1]["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in h),
        "steps": h[-1]["step"],
        "steps_to_99_train": _steps_to(h, "train_acc", 0.99),
        "steps_to_99_test": _steps_to(h, "test_acc", 0.99),
        "wall_time_s": wall,
    }


def _reached(step: int | None) -> str:
    return "not reached" if step is None else str(step)


def model_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    """The per-model table of a modular summary: header and rows (None steps: not reached)."""
    header = ["model", "steps", "final train acc", "final test acc", "best test acc", "steps to 99% train",
              "steps to 99% test", "wall s"]
    rows = [[name, str(m["steps"]), fmt(m["final_train_acc"], digits=4), fmt(m["final_test_acc"], digits=4),
             fmt(m["best_test_acc"], digits=4), _reached(m["steps_to_99_train"]),
             _reached(m["steps_to_99_test"]), fmt(m["wall_time_s"], digits=1)]
            for name, m in s["models"].items()]
    return header, rows


def convex_line(cfg: ModularConfig, s: dict) -> str:
    """One sentence on the convex model's solution ("" when it was not run)."""
    c = s["models"].get("convex")
    if c is None:
        return ""
    return (f"Convex model: features `{cfg.convex_features}`, {c['num_patterns']} gate patterns, "
            f"β = {c['beta']:.4g} ({cfg.beta_rel:g} · λ_max), FISTA {c['fista_iterations']} iterations, "
            f"relative gap {c['fista_rel_gap']:.2e}, {c['num_heads']} / {c['num_rows']} non-zero rows (heads).")


def _report(cfg: ModularConfig, s: dict) -> str:
    lines = [
        f"# Modular division a ÷ b mod {cfg.p}",
        "",
        f"{s['num_equations']} equations, {s['num_train']} train / {s['num_test']} test "
        f"(train fraction {cfg.train_fraction}, seed {cfg.seed}).",
        "",
        markdown_table(*model_rows(s)),
    ]
    if "convex" in s["models"]:
        lines += ["", convex_line(cfg, s)]
    lines += ["", "![accuracy](accuracy.png)"]
    return "\n".join(lines)
