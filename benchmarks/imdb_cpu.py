"""CPU training step of the IMDB encoder against the GEMM rate of its own shapes (issue 24 §1).

Run:  python benchmarks/imdb_cpu.py              (the CPU preset and the paper's size-3 shape)
      python benchmarks/imdb_cpu.py --quick      (fewer steps; what the tests run)

For each shape it prints the model's matmul FLOPs per training step (forward + backward:
projections, MLP and the two attention products, as ``EncoderClassifier.flops_per_example``),
the achieved GFLOP/s of a full step (forward, loss, backward, ℓ1.1 mirror-descent step) on real
IMDB reviews, the GFLOP/s of the same matrix products timed alone with ``torch.mm`` /
``torch.bmm`` in the same run (the step's forward and backward GEMMs), their ratio, and the
step-time ratio of the old engine to the new one:

* **old engine**: commit fedbbb2's step, which this code still computes with
  ``dropout_impl="torch"`` (torch's CPU dropout, attention dropout inside SDPA);
* **new engine**: ``dropout_impl="counter"`` (:mod:`attnopt.models.dropout`), the CPU plan's setting.

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


def gemm_seconds(C: int, Hd: int, T: int, B: int, heads: int, blocks: int, reps: int) -> float:
    """Median time of the step's matrix products alone (forward and both backward products)."""
    M, d = B * T, C // heads
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps per engine and only the CPU preset")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    steps = 3 if args.quick else args.steps
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("old engine = commit fedbbb2's step (dropout_impl='torch'); new = dropout_impl='counter'")
    shapes = list(SHAPES.items())[:1] if args.quick else list(SHAPES.items())
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


if __name__ == "__main__":
    main()
