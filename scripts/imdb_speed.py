"""IMDB training speed on one GPU, in one call of at most 8 minutes (issue 17): every result goes
into one folder (results.json and imdb_speed.md).

    python scripts/imdb_speed.py OUT               # a GPU: the full protocol (size 3 and 6, 20k/5k/25k reviews)
    python scripts/imdb_speed.py OUT --tiny        # any machine: a tiny setting that runs every part end to end

Two parts, each timed in this run only:

1. **Attention kernels side by side** — one training batch of 100 real reviews (random, as in
   training), q/k/v of the size-3 model, forward + backward, bf16 on a GPU: SDPA padded to 512
   and to the batch's longest review, SDPA over jagged nested tensors (the kernel ``--pad none``
   uses; with and without dropout 0.2), FlexAttention with a document block mask built from the
   review boundaries (no dropout: it cannot drop attention probabilities), and
   ``torch.nn.attention.varlen.varlen_attn`` (no dropout either).  Also the cost of building the
   packed batch's indices and of a block mask.
2. **Epochs** — ``run_train`` / ``run_ensemble`` for two epochs each (the first includes
   compilation): size 3 alone with ``--pad max``, ``dynamic`` and ``none``; an 8-member size-3
   ensemble; size 6 alone and a 4-member size-6 ensemble.  Per setting: epoch time (train 20k +
   evaluate 30k), training reviews/s, time per member-epoch, and model FLOP utilisation (matmul
   FLOPs of the real tokens, forward + backward for training and forward for evaluation, over
   the device's dense bf16 peak).

Settings that do not fit the time budget are listed as not measured; an error in one setting
is recorded and the others go on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from attnopt.data.reviews import load_reviews
from attnopt.experiments.imdb import EnsembleConfig, TrainConfig, run_ensemble, run_train
from attnopt.experiments.imdb.batching import DeviceSplit, packed_batch, padded_batch
from attnopt.models.encoder import jagged_attention

#: Dense bf16 tensor-core peak (FLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16 = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12))
TARGETS = {"s3-none": 1.0, "s3-ens8": 0.35, "s6-none": 2.0}  # seconds per (member-)epoch on an H100


def peak(name: str) -> float | None:
    return next((p for frag, p in PEAK_BF16 if frag in name), None)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# --------------------------------------------------------------------------- part 1: kernels


def kernels(split: DeviceSplit, dev: torch.device, H: int, d: int, reps: int) -> list[dict]:
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    idx = [torch.randperm(split.n, generator=g)[:100]]
    rows: list[dict] = []

    def add(name: str, dropout: bool, fn) -> None:
        try:
            rows.append({"kernel": name, "dropout": dropout, "ms": 1e3 * timed(fn, dev, reps)})
        except Exception as exc:  # a kernel that does not run here is a result too
            rows.append({"kernel": name, "dropout": dropout, "ms": None, "error": f"{type(exc).__name__}: {exc}"[:300]})

    rows.append({"kernel": "build packed batch indices", "dropout": None,
                 "ms": 1e3 * timed(lambda: packed_batch(split, idx, 8), dev, reps)})
    packed, _ = packed_batch(split, idx, 1)
    R = packed.n_real

    def qkv(shape):
        return [torch.randn(*shape, dtype=dtype, device=dev, requires_grad=True) for _ in range(3)]

    for pad in ("max", "dynamic"):
        batch, _ = padded_batch(split, idx, pad, 8)
        B, T = batch.ids.shape[1:]
        keep = (batch.ids[0] != 0)[:, None, None, :]
        q, k, v = qkv((B, H, T, d))
        for p in (0.0, 0.2):
            def step(q=q, k=k, v=v, p=p, keep=keep):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p).sum().backward()
            add(f"SDPA padded ({pad}, width {T})", p > 0, step)
    q, k, v = qkv((R, H, d))
    for p in (0.0, 0.2):
        add("SDPA jagged (NJT)", p > 0, lambda p=p: jagged_attention(q, k, v, packed.cu, 512, p).sum().backward())
    try:
        from torch.nn.attention.varlen import varlen_attn

        cu32 = packed.cu.to(torch.int32)
        add("varlen_attn", False, lambda: varlen_attn(q, k, v, cu32, cu32, 512, 512).sum().backward())
    except ImportError as exc:
        rows.append({"kernel": "varlen_attn", "dropout": False, "ms": None, "error": str(exc)})
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = torch.repeat_interleave(torch.arange(100, device=dev), packed.lengths.flatten(), output_size=R)

        def mask_mod(b, h, qi, ki):
            return doc[qi] == doc[ki]

        make = torch.compile(create_block_mask) if dev.type == "cuda" else create_block_mask
        add("FlexAttention: create_block_mask per batch", None, lambda: make(mask_mod, None, None, R, R, device=dev))
        bm = make(mask_mod, None, None, R, R, device=dev)
        fq, fk, fv = qkv((1, H, R, d))
        flex = torch.compile(flex_attention) if dev.type == "cuda" else flex_attention
        add("FlexAttention (document block mask)", False, lambda: flex(fq, fk, fv, block_mask=bm).sum().backward())
    except ImportError as exc:
        rows.append({"kernel": "FlexAttention", "dropout": False, "ms": None, "error": str(exc)})
    return rows


# --------------------------------------------------------------------------- part 2: epochs


def flops(lengths: np.ndarray, C: int, Hd: int, blocks: int, backward: bool) -> float:
    """Matmul FLOPs of reviews of these lengths (as EncoderClassifier.flops_per_example)."""
    T = lengths.astype(np.float64)
    per_block = 2 * T * (4 * C * C + 2 * C * Hd) + 4 * T * T * C
    return float(blocks * per_block.sum() * (3 if backward else 1))


def epoch_setting(name: str, size: int, pad: str, members: int, base: dict, data, tiny: bool) -> dict:
    cfgs = [TrainConfig(**base, size=size, pad=pad, seed=s) for s in range(members)]
    t0 = time.perf_counter()
    if members == 1:
        hist = run_train(cfgs[0], data=data).history
    else:
        hist = run_ensemble(EnsembleConfig(members=cfgs), data=data).members[0].history
    wall = time.perf_counter() - t0
    last = hist[-1]
    C, Hd = cfgs[0].n_embd, cfgs[0].n_hidden
    work = members * (flops(data.train.lengths, C, Hd, size, True)
                      + flops(np.concatenate([data.val.lengths, data.test.lengths]), C, Hd, size, False))
    return {"setting": name, "size": size, "pad": pad, "members": members, "epochs": len(hist),
            "first_epoch_s": hist[0]["epoch_time_s"], "epoch_s": last["epoch_time_s"],
            "train_s": last["train_time_s"], "member_epoch_s": last["epoch_time_s"] / members,
            "train_reviews_per_s": members * len(data.train) / last["train_time_s"],
            "flop_per_s": work / last["epoch_time_s"], "wall_s": wall, "tiny": tiny}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="small data and model (a CPU check of the script)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new settings after this")
    ap.add_argument("--no-compile", dest="compile", action="store_false", default=True)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--data", default=None)
    ap.add_argument("--cache", default=None)
    args = ap.parse_args(argv)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.machine()})"
    tiny = args.tiny or dev.type != "cuda"
    if tiny:
        data = load_reviews("imdb", 128, subset=200, eval_subset=100, data_root=args.data, cache=args.cache)
        base = dict(max_len=128, n_embd=48, n_hidden=96, max_epochs=2, target_train_acc=1.0, lr=1e-3, batch_size=20,
                    device=str(dev), compile=False)
        sizes, reps = {"s3": 1, "s6": 2}, min(args.reps, 3)
    else:
        data = load_reviews("imdb", 512, data_root=args.data, cache=args.cache)
        base = dict(max_epochs=2, target_train_acc=1.0, device="cuda", compile=args.compile)
        sizes, reps = {"s3": 3, "s6": 6}, args.reps
    result = {"device": name, "torch": torch.__version__, "python": sys.version.split()[0], "tiny": tiny,
              "compile": base["compile"], "peak_bf16": peak(name), "data_s": time.perf_counter() - start}
    split = DeviceSplit(data.train, dev)
    s3 = TrainConfig(**base, size=sizes["s3"]).model_config()
    result["kernels"] = kernels(split, dev, s3.n_heads, s3.n_embd // s3.n_heads, reps)
    settings = [("s3-max", "s3", "max", 1), ("s3-dynamic", "s3", "dynamic", 1), ("s3-none", "s3", "none", 1),
                ("s3-ens8", "s3", "none", 8), ("s6-none", "s6", "none", 1), ("s6-ens4", "s6", "none", 4)]
    result["epochs"] = []
    for label, size, pad, k in settings:
        if time.perf_counter() - start > args.budget_s:
            result["epochs"].append({"setting": label, "skipped": "time budget"})
            continue
        try:
            result["epochs"].append(epoch_setting(label, sizes[size], pad, k, base, data, tiny))
        except Exception as exc:
            result["epochs"].append({"setting": label, "error": f"{type(exc).__name__}: {exc}"[:500],
                                     "trace": traceback.format_exc()[-2000:]})
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
    result["total_s"] = time.perf_counter() - start
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "imdb_speed.md").write_text(report(result))
    print(report(result))
    return 0


def report(r: dict) -> str:
    pk = r["peak_bf16"]
    lines = [f"# IMDB training speed on {r['device']} (torch {r['torch']}, compile {r['compile']}"
             + (", TINY setting: not the protocol" if r["tiny"] else "") + ")", "",
             "## Attention kernels (one batch of 100 reviews, forward + backward)", "",
             "| kernel | dropout | ms |", "|---|---|---|"]
    for k in r["kernels"]:
        ms = f"{k['ms']:.3f}" if k.get("ms") is not None else f"did not run: {k.get('error', '')[:120]}"
        lines.append(f"| {k['kernel']} | {k['dropout']} | {ms} |")
    lines += ["", "## Epochs (train 20,000 + evaluate 30,000 reviews; second epoch)", "",
              "| setting | members | epoch s | per member-epoch s | target | train reviews/s | MFU |",
              "|---|---|---|---|---|---|---|"]
    for e in r["epochs"]:
        if "epoch_s" not in e:
            lines.append(f"| {e['setting']} | – | not measured: {e.get('skipped') or e.get('error', '')[:150]} "
                         "| | | | |")
            continue
        mfu = f"{100 * e['flop_per_s'] / pk:.1f} %" if pk else "–"
        tgt = TARGETS.get(e["setting"])
        lines.append(f"| {e['setting']} (pad {e['pad']}) | {e['members']} | {e['epoch_s']:.2f} | "
                     f"{e['member_epoch_s']:.3f} | {'≤ %.2f' % tgt if tgt and not r['tiny'] else '–'} | "
                     f"{e['train_reviews_per_s']:.0f} | {mfu} |")
    lines.append(f"\nTotal {r.get('total_s', float('nan')):.0f} s (data {r['data_s']:.0f} s).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
