"""Training throughput of the IMDB classifier: our training step vs a paper-protocol baseline.

Run:  python benchmarks/imdb.py                 (GPU: size-3 model, full protocol)
      python benchmarks/imdb.py --tiny          (a tiny configuration; what CPU-only machines run)
      python benchmarks/imdb.py --epoch         (also time full epochs with ``attnopt imdb train``)

Both steps train the same model on the same IMDB reviews with ℓp mirror descent (batch 100,
summed BCE) and differ only in how:

* **baseline** (the paper's protocol): fp32, attention through an explicit softmax,
  every review padded to ``max_len`` (512), and a per-tensor Python-loop mirror-descent
  optimiser that recomputes the dual variable ``sign(w)|w|^(p-1)`` from the weights at
  every step;
* **ours**: the training step of :mod:`attnopt.experiments.imdb` — bf16 autocast on GPU,
  ``scaled_dot_product_attention`` (fused kernels), padding to the batch's longest review
  (``dynamic``) or none at all (``none``: packed reviews, attention over jagged tensors),
  :class:`attnopt.optim.MirrorDescent` (stored dual, foreach / compiled / fused kernels), and
  optionally ``torch.compile``.

Reported per step kind: reviews/s, ms/step, and on GPU the model FLOP utilisation (matmul
FLOPs of the reviews' real tokens, forward + backward, over the device's dense bf16 peak — the
same work for every row, so the column compares speed).  The script never reports numbers it did not measure:
on a machine without a GPU it says so.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from attnopt.data.reviews import load_reviews
from attnopt.experiments.imdb import DeviceSplit, TrainConfig, make_optimizer, train_step
from attnopt.experiments.imdb.batching import member_batch
from attnopt.experiments.imdb.engine import Settings
from attnopt.experiments.imdb.execution import Dist
from attnopt.models.encoder import EncoderClassifier, EncoderEnsemble

#: Dense bf16 tensor-core peak (FLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12))


class LoopMirrorDescent(torch.optim.Optimizer):
    """Plain ℓp mirror descent as a per-tensor Python loop, dual recomputed from w each step."""

    def __init__(self, params, lr: float, p: float) -> None:
        super().__init__(params, {"lr": lr, "p": p})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            a = group["p"] - 1.0
            for w in group["params"]:
                if w.grad is None:
                    continue
                theta = torch.sign(w) * w.abs().pow(a) - group["lr"] * w.grad
                w.copy_(torch.sign(theta) * theta.abs().pow(1.0 / a))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_flops(name: str) -> float | None:
    for frag, peak in PEAK_BF16:
        if frag in name:
            return peak
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(kind: str, cfg: TrainConfig, split: DeviceSplit, device: torch.device, steps: int, warmup: int,
            compile_model: bool, md_impl: str, pad: str = "dynamic") -> dict:
    torch.manual_seed(0)
    if kind == "baseline":
        model = EncoderClassifier(cfg.model_config().replace(attn_impl="explicit")).to(device)
        opt = LoopMirrorDescent(model.parameters(), lr=cfg.resolved_lr(), p=cfg.p)
        precision, pad, fwd = "fp32", "max", EncoderEnsemble([model])
    else:
        model = EncoderClassifier(cfg.model_config()).to(device)
        opt = make_optimizer(cfg.replace(md_impl=md_impl), model.parameters(), device)
        precision = "bf16" if device.type == "cuda" else "fp32"
        fwd = EncoderEnsemble([model])
        fwd = torch.compile(fwd) if compile_model else fwd
    settings = Settings(device, precision, pad, "bce", "sum", cfg.batch_size, cfg.pad_multiple, 500, 20, False, Dist())
    model.train()
    g = torch.Generator().manual_seed(1)
    B = cfg.batch_size
    batches = [torch.randint(0, split.n, (B,), generator=g) for _ in range(warmup + steps)]
    flops = 0.0
    for i, idx in enumerate(batches):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        batch, y = member_batch(split, [idx], pad, cfg.pad_multiple)
        train_step(fwd, [opt], batch, y, settings)
        if i >= warmup:
            flops += sum(model.flops_per_example(int(n)) for n in split.lengths[idx])
    _sync(device)
    dt = time.perf_counter() - t0
    return {"kind": kind, "reviews_per_s": steps * B / dt, "ms_per_step": 1000 * dt / steps, "flops_per_s": flops / dt,
            "precision": precision, "pad": pad}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tiny", action="store_true", help="1 block, n_embd 64, max_len 64, 20-review batches")
    ap.add_argument("--size", type=int, default=3)
    ap.add_argument("--p", type=float, default=1.1)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per kind")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (compilation happens here)")
    ap.add_argument("--subset", type=int, default=None, help="training reviews to sample batches from")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--md-impl", default="auto", help="MirrorDescent implementation for 'ours'")
    ap.add_argument("--epoch", action="store_true", help="also time two full training epochs (train+val+test)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args(argv)

    from attnopt.experiments.imdb import resolve_device

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.tiny or not gpu:
        args.tiny = True
    tiny = dict(size=1, n_embd=64, n_hidden=128, max_len=64, batch_size=20, lr=1e-3) if args.tiny else {}
    cfg = TrainConfig(**({"size": args.size, "max_len": args.max_len, "p": args.p, "device": str(device)} | tiny))
    steps = args.steps or (5 if args.tiny else 30)
    warmup = args.warmup if args.warmup is not None else (2 if args.tiny else 5)
    subset = args.subset or (200 if args.tiny else 4000)
    compile_model = gpu if args.compile is None else args.compile
    if compile_model and warmup < 3:
        warmup = 3

    data = load_reviews("imdb", cfg.max_len, subset=subset, eval_subset=100, data_root=args.data, cache=args.cache)
    split = DeviceSplit(data.train, device)
    name = device_name(device)
    peak = peak_flops(name) if gpu else None
    rows = [measure("baseline", cfg, split, device, steps, warmup, False, args.md_impl),
            measure("ours", cfg, split, device, steps, warmup, compile_model, args.md_impl, "dynamic"),
            measure("ours", cfg, split, device, steps, warmup, compile_model, args.md_impl, "none")]
    base = rows[0]["reviews_per_s"]

    print(f"\nIMDB training-step throughput on {name} (torch {torch.__version__})")
    print(f"model: {cfg.model_config().n_blocks} block(s), {cfg.model_config().n_heads} head(s), n_embd "
          f"{cfg.n_embd}, max_len {cfg.max_len}, batch {cfg.batch_size}, MD p={cfg.p:g}; "
          f"{steps} timed steps after {warmup} warm-up steps; batches drawn from {len(split.lengths)} reviews"
          + ("; ours uses torch.compile" if compile_model else ""))
    print()
    print("| step | precision | padding | reviews/s | ms/step | speed-up | MFU (real tokens) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['flops_per_s'] / peak:.1f} %" if peak else "–"
        print(f"| {r['kind']} | {r['precision']} | {r['pad']} | {r['reviews_per_s']:.1f} | {r['ms_per_step']:.1f} | "
              f"{r['reviews_per_s'] / base:.2f}× | {mfu} |")
    if not gpu:
        print("\nNo GPU here: this is the tiny CPU configuration that exercises the script. The paper-protocol "
              "numbers (size-3 model, max_len 512, bf16, torch.compile) and the H100 targets (>= 5x the "
              "baseline, one size-3 epoch < 10 s) were NOT measured in this run.")
    elif peak is None:
        print(f"\n(MFU not shown: no bf16 peak on record for {name!r}.)")

    if args.epoch:
        from attnopt.experiments.imdb import run_train

        ecfg = cfg.replace(max_epochs=2, compile=compile_model, target_train_acc=1.0,
                           subset=subset if args.tiny else None, eval_subset=100 if args.tiny else None)
        res = run_train(ecfg, data_root=args.data, cache=args.cache)
        s, hist = res.summary, res.history
        sizes = f"subset {subset}" if args.tiny else "20,000 / 5,000 / 25,000 reviews"
        print(f"\nFull epochs (train + validation + test, {sizes}):")
        for h in hist:
            print(f"  epoch {h['epoch']}: {float(h['epoch_time_s']):.2f} s "
                  f"(train {float(h['train_time_s']):.2f} s, {float(h['train_reviews_per_s']):.0f} reviews/s)")
        print(f"  (epoch 1 includes compilation; {s['device']}, {s['precision']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
