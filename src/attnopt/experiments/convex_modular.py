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

:func:`run_modular` writes ``config.json``, ``summary.json``, ``history_<model>.csv``,
``accuracy.png`` and ``report.md`` to the run folder.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch
from torch import nn

from attnopt.config import ConfigError, config_from_dict
from attnopt.convex.fista import solve_fista
from attnopt.convex.programs import apply_gates, make_problem, sample_gates
from attnopt.data.modular import split_equations
from attnopt.report.runs import RunDir, make_run_dir

Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class ModularConfig:
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
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.p < 3:
            raise ConfigError(f"p must be a prime >= 3, got {self.p}")
        if not 0 < self.train_fraction < 1:
            raise ConfigError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        self.layers = tuple(int(x) for x in self.layers)
        if any(x < 1 for x in self.layers):
            raise ConfigError(f"layers must be positive integers, got {self.layers}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        for name in ("steps", "batch_size", "eval_every", "convex_max_iter", "convex_eval_every",
                     "gate_patterns", "feature_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.convex_features not in ("onehot", "random"):
            raise ConfigError(f"convex_features must be 'onehot' or 'random', got {self.convex_features!r}")
        if self.gate_scheme not in ("gaussian", "rademacher"):
            raise ConfigError(f"gate_scheme must be 'gaussian' or 'rademacher', got {self.gate_scheme!r}")
        if not (self.beta_rel >= 0 and math.isfinite(self.beta_rel)):
            raise ConfigError(f"beta_rel must be a finite number >= 0, got {self.beta_rel}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @classmethod
    def from_dict(cls, values=None, **overrides) -> "ModularConfig":
        return config_from_dict(cls, values, **overrides)


@dataclasses.dataclass
class ModularResult:
    run_dir: RunDir
    summary: dict
    histories: dict[str, list[dict]]


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
    for r in hist:
        if r[key] >= level:
            return int(r["step"])
    return None


def train_transformer(cfg: ModularConfig, data, num_layers: int, progress: Progress | None = None) -> list[dict]:
    torch.manual_seed(cfg.seed)
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
            if progress:
                progress(f"transformer-{num_layers}L", step, cfg.steps)
    return hist


def convex_features(cfg: ModularConfig, tokens: torch.Tensor, vocab: int, dtype: torch.dtype) -> torch.Tensor:
    if cfg.convex_features == "onehot":
        return torch.nn.functional.one_hot(tokens, vocab).to(dtype)
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    E = torch.randn(vocab, cfg.feature_dim, generator=g, dtype=torch.float64) / math.sqrt(cfg.feature_dim)
    return E.to(dtype)[tokens]


def train_convex(cfg: ModularConfig, data, progress: Progress | None = None) -> tuple[list[dict], dict]:
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
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
            from attnopt.convex.programs import loss_value

            hist.append({"step": it, "time": te - t0 - t_eval[0],
                         "train_loss": float(loss_value(Ptr, ytr, "cross_entropy")) / prob.N,
                         "objective": prob.objective(Z),
                         "train_acc": _accuracy(Ptr, ytr), "test_acc": _accuracy(Pte, yte)})
        t_eval[0] += time.perf_counter() - te
        if progress:
            progress("convex", it, cfg.convex_max_iter)

    record(0, prob.zeros(), {})
    res = solve_fista(prob, tol=cfg.convex_tol, max_iter=cfg.convex_max_iter, callback=record,
                      callback_every=cfg.convex_eval_every, check_every=cfg.convex_eval_every, log_every=0)
    if not hist or hist[-1]["step"] != res.iterations:
        record(res.iterations, res.Z, {})
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


def run_modular(config: ModularConfig | dict | None = None, out=None, progress: Progress | None = None) -> ModularResult:
    """Run the modular-division comparison and write a run folder (see the module docstring)."""
    cfg = config if isinstance(config, ModularConfig) else ModularConfig.from_dict(config or {})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = make_run_dir(out, "convex-modular")
    run.write_config(cfg)
    data = split_equations(cfg.p, cfg.train_fraction, cfg.seed)
    histories: dict[str, list[dict]] = {}
    summary: dict = {"p": cfg.p, "num_equations": data.num_equations, "num_train": len(data.train_idx),
                     "num_test": len(data.test_idx), "models": {}}
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
    for name, h in histories.items():
        run.write_csv(f"history_{name}.csv", rows=h)
    _plot(run, histories, cfg)
    run.write_json("summary.json", summary)
    run.write_report(_report(cfg, summary))
    return ModularResult(run_dir=run, summary=summary, histories=histories)


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


def _plot(run: RunDir, histories: dict[str, list[dict]], cfg: ModularConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, h) in enumerate(histories.items()):
        steps = [max(r["step"], 1) for r in h]
        ax.plot(steps, [r["train_acc"] for r in h], color=f"C{i}", ls="--", label=f"{name} train")
        ax.plot(steps, [r["test_acc"] for r in h], color=f"C{i}", ls="-", label=f"{name} test")
    ax.set_xscale("log")
    ax.set_xlabel("optimisation steps (AdamW minibatch steps / FISTA iterations)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"a ÷ b mod {cfg.p}, train fraction {cfg.train_fraction}")
    ax.axhline(0.99, color="gray", lw=0.5)
    ax.legend(fontsize=7)
    run.save_figure("accuracy.png", fig)


def _report(cfg: ModularConfig, s: dict) -> str:
    lines = [
        f"# Modular division a ÷ b mod {cfg.p}",
        "",
        f"{s['num_equations']} equations, {s['num_train']} train / {s['num_test']} test "
        f"(train fraction {cfg.train_fraction}, seed {cfg.seed}).",
        "",
        "| model | steps | final train acc | final test acc | best test acc | steps to 99% train | steps to 99% test | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["models"].items():
        lines.append(
            f"| {name} | {m['steps']} | {m['final_train_acc']:.4f} | {m['final_test_acc']:.4f} | "
            f"{m['best_test_acc']:.4f} | {m['steps_to_99_train']} | {m['steps_to_99_test']} | {m['wall_time_s']:.1f} |"
        )
    if "convex" in s["models"]:
        c = s["models"]["convex"]
        lines += ["", f"Convex model: features `{cfg.convex_features}`, {c['num_patterns']} gate patterns, "
                  f"β = {c['beta']:.4g} ({cfg.beta_rel} · λ_max), FISTA {c['fista_iterations']} iterations, "
                  f"relative gap {c['fista_rel_gap']:.2e}, {c['num_heads']} / {c['num_rows']} non-zero rows (heads)."]
    lines += ["", "None = not reached within the step budget.", "", "![accuracy](accuracy.png)"]
    return "\n".join(lines)
