"""CPU training step of the IMDB encoder against the GEMM rate of its own shapes (issue 24 §1).

Run:  python benchmarks/imdb_cpu.py              (the CPU preset, the paper's size-3 shape, SST-2)
      python benchmarks/imdb_cpu.py --only sst2  (the SST-2 rows alone; --only imdb: the others)
      python benchmarks/imdb_cpu.py --quick      (fewer steps, the CPU preset only; what the tests run)

For each shape it prints the model's matmul FLOPs per training step (forward + backward:
projections, MLP and the two attention products, as ``EncoderClassifier.flops_per_example``),
the achieved GFLOP/s of a full step (forward, loss, backward, ℓ1.1 mirror-descent step) on real
IMDB reviews, the GFLOP/s of the same matrix products timed alone with ``torch.mm`` /
``torch.bmm`` in the same run (the step's forward and backward GEMMs), their ratio, and the
step-time ratio of the old engine to the new one:

* **old engine**: commit fedbbb2's step, which this code still computes with
  ``dropout_impl="torch"`` (torch's CPU dropout, attention dropout inside SDPA);
* **new engine**: ``dropout_impl="counter"`` (:mod:`attnopt.models.dropout`), the CPU plan's setting.

The SST-2 rows (the SST-2 CPU plan, results/sst2-cpu/plan.toml: a 5-member ensemble of the
CPU preset's model, sentences of at most 64 tokens, counter dropout, Adam) compare two batch
layouts instead: **old** ``pad="dynamic"`` (every member's 100 sentences padded to the longest,
about 46 tokens for a mean of 13) against **new** ``pad="hybrid"`` (matrix products on the real
tokens only, attention padded).  Their FLOPs are the hybrid step's matrix products (projections
and MLP on the real tokens, attention on the padded grid), and the GEMM rate is that of the same
products timed alone.

Both rows are timed interleaved (old, new, old, new, …), medians reported.  The machine is
printed; numbers from a shared or loaded machine say so only through their spread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from attnopt.data.reviews import load_reviews
from attnopt.experiments.imdb import DeviceSplit, TrainConfig, make_optimizer, train_step
from attnopt.experiments.imdb.batching import member_batch
from attnopt.experiments.imdb.engine import Settings
from attnopt.experiments.imdb.execution import Dist
from attnopt.models.encoder import EncoderClassifier, EncoderEnsemble

SHAPES = {  # name: (n_embd, n_hidden, max_len, batch)
    "cpu preset (size 3, width 96, 128 tokens)": (96, 384, 128, 100),
    "paper size 3 (width 384, 512 tokens; batch 20)": (384, 1536, 512, 20),
}


def gemm_seconds(C: int, Hd: int, T: int, B: int, heads: int, blocks: int, reps: int,
                 tokens: int | None = None) -> float:
    """Median time of the step's matrix products alone (forward and both backward products);
    ``tokens``: the rows of the projections and MLP (default B·T, every padded position)."""
    M, d = (B * T if tokens is None else tokens), C // heads
    mats = []
    for k, n in ((C, 3 * C), (C, C), (C, Hd), (Hd, C)):
        mats += [((M, k), (k, n)), ((M, n), (n, k)), ((n, M), (M, k))]  # y = xW, dx = dy Wᵀ, dW = dyᵀ x
    bmms = [((B * heads, T, d), (B * heads, d, T)), ((B * heads, T, T), (B * heads, T, d))] * 3
    tensors = [(torch.randn(a), torch.randn(b)) for a, b in mats]
    btensors = [(torch.randn(a), torch.randn(b)) for a, b in bmms]

    def once() -> float:
        t0 = time.perf_counter()
        for _ in range(blocks):
            for a, b in tensors:
                torch.mm(a, b)
            for a, b in btensors:
                torch.bmm(a, b)
        return time.perf_counter() - t0

    once()
    return statistics.median(once() for _ in range(reps))


def step_times(C: int, Hd: int, T: int, B: int, data, steps: int) -> dict[str, list[float]]:
    split = DeviceSplit(data.train, torch.device("cpu"))
    perm = torch.randperm(split.n, generator=torch.Generator().manual_seed(0))
    batches = [member_batch(split, [perm[i * B:(i + 1) * B]], "dynamic", 8) for i in range(steps + 1)]
    runs = {}
    for impl in ("torch", "counter"):
        cfg = TrainConfig(n_embd=C, n_hidden=Hd, max_len=T, size=3, optimizer="md", p=1.1, lr=8e-4,
                          dropout_impl=impl, batch_size=B, device="cpu")
        torch.manual_seed(0)
        model = EncoderClassifier(cfg.model_config())
        runs[impl] = (EncoderEnsemble([model]), make_optimizer(cfg, model.parameters()))
    s = Settings(torch.device("cpu"), "fp32", "dynamic", "bce", "sum", B, 8, 500, 20, False, Dist())
    times: dict[str, list[float]] = {"torch": [], "counter": []}
    for i, (batch, y) in enumerate(batches):
        for impl, (fwd, opt) in runs.items():
            t0 = time.perf_counter()
            train_step(fwd, [opt], batch, y, s)
            if i:  # the first step of each warms up
                times[impl].append(time.perf_counter() - t0)
    return times


def sst2_rows(steps: int, K: int = 5, B: int = 100) -> None:
    """The SST-2 plan's ensemble step: ``pad="dynamic"`` (old) against ``pad="hybrid"`` (new)."""
    C, Hd, T = 96, 384, 64
    data = load_reviews("sst2", max_len=T, subset=max(2000, B * K * (steps + 1)), eval_subset=100)
    split = DeviceSplit(data.train, torch.device("cpu"))
    perm = torch.randperm(split.n, generator=torch.Generator().manual_seed(0))
    idx = [[perm[(i * K + k) * B:(i * K + k + 1) * B] for k in range(K)] for i in range(steps + 1)]
    layouts = {pad: [member_batch(split, ix, pad, 8) for ix in idx] for pad in ("dynamic", "hybrid")}
    cfg = TrainConfig(dataset="sst2", n_embd=C, n_hidden=Hd, max_len=T, size=3, optimizer="adam", lr=1e-3,
                      dropout_impl="counter", batch_size=B, device="cpu")
    runs = {}
    for pad in layouts:
        models = []
        for k in range(K):
            torch.manual_seed(k)
            models.append(EncoderClassifier(cfg.model_config()))
        runs[pad] = (EncoderEnsemble(models), [make_optimizer(cfg, m.parameters()) for m in models])
    settings = {pad: Settings(torch.device("cpu"), "fp32", pad, "bce", "sum", B, 8, 500, 20, False, Dist())
                for pad in layouts}
    times: dict[str, list[float]] = {pad: [] for pad in layouts}
    for i in range(steps + 1):
        for pad, (fwd, opts) in runs.items():
            batch, y = layouts[pad][i]
            t0 = time.perf_counter()
            train_step(fwd, opts, batch, y, settings[pad])
            if i:
                times[pad].append(time.perf_counter() - t0)
    hybrid = [b for b, _ in layouts["hybrid"][1:]]
    real = statistics.mean(b.n_real for b in hybrid)          # real tokens of the K members
    width = round(statistics.mean(b.attn_width for b in hybrid))
    padded = statistics.mean(int(b.ids.shape[-1]) for b, _ in layouts["dynamic"][1:])
    n_blocks = cfg.model_config().n_blocks      # matmul FLOPs, forward + backward (x3), as flops_per_example
    flops = statistics.mean(3 * n_blocks * (2 * (4 * C * C + 2 * C * Hd) * b.n_real + 4 * b.attn_width ** 2 * C * K * B)
                            for b in hybrid)
    gemm = gemm_seconds(C, Hd, width, K * B, 3, 3, max(3, steps // 2), tokens=round(real))
    old, new = statistics.median(times["dynamic"]), statistics.median(times["hybrid"])
    print(f"\nSST-2 plan ({K}-member ensemble, size 3, width 96, <= 64 tokens, Adam): {real / K / B:.1f} real "
          f"tokens per sentence, dynamic padding to {padded:.0f}, hybrid attention width {width}; "
          f"{flops / 1e9:.2f} GFLOP per hybrid step")
    print(f"  GEMMs of the step alone : {gemm * 1e3:8.1f} ms  {flops / gemm / 1e9:6.1f} GFLOP/s")
    for label, t in (("old (pad dynamic) step", old), ("new (pad hybrid) step", new)):
        print(f"  {label:23s}: {t * 1e3:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  = {gemm / t:.2f} of the GEMM rate")
    print(f"  old / new step time     : {old / new:.2f}x  (medians of {len(times['hybrid'])} interleaved steps; "
          f"spread new {min(times['hybrid']) * 1e3:.0f}-{max(times['hybrid']) * 1e3:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per engine and only the CPU preset")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", choices=("imdb", "sst2"), help="only the IMDB shapes, or only the SST-2 rows")
    args = ap.parse_args()
    steps = 3 if args.quick else args.steps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    shapes = list(SHAPES.items())[:1] if args.quick else list(SHAPES.items())
    if args.only == "sst2":
        shapes = []
    else:
        print("old engine = commit fedbbb2's step (dropout_impl='torch'); new = dropout_impl='counter'")
    for name, (C, Hd, T, B) in shapes:
        data = load_reviews("imdb", max_len=T, subset=max(2000, B * (steps + 1)), eval_subset=100)
        times = step_times(C, Hd, T, B, data, steps)
        width = int(member_batch(DeviceSplit(data.train, torch.device("cpu")),
                                 [torch.arange(B)], "dynamic", 8)[0].ids.shape[-1])
        flops = EncoderClassifier(TrainConfig(n_embd=C, n_hidden=Hd, size=3).model_config()).flops_per_example(width) * B
        gemm = gemm_seconds(C, Hd, width, B, 3, 3, max(3, steps // 2))
        old, new = statistics.median(times["torch"]), statistics.median(times["counter"])
        print(f"\n{name}: padded width {width}, {flops / 1e9:.2f} GFLOP per step")
        print(f"  GEMMs of the step alone : {gemm * 1e3:8.1f} ms  {flops / gemm / 1e9:6.1f} GFLOP/s")
        for label, t in (("old engine step", old), ("new engine step", new)):
            print(f"  {label:23s}: {t * 1e3:8.1f} ms  {flops / t / 1e9:6.1f} GFLOP/s  "
                  f"= {gemm / t:.2f} of the GEMM rate")
        print(f"  old / new step time     : {old / new:.2f}x  (medians of {len(times['torch'])} interleaved steps; "
              f"spread new {min(times['counter']) * 1e3:.0f}-{max(times['counter']) * 1e3:.0f} ms)")
    if not args.quick and args.only != "imdb":
        sst2_rows(args.steps)


if __name__ == "__main__":
    main()
