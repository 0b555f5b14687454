"""The CPU kernel's masked step against its plain step on one large float32 tensor.

Usage::

    python benchmarks/cpu_kernel_masked.py                  # 1M elements, 1 thread
    python benchmarks/cpu_kernel_masked.py --numel 4194304 --threads 2

A tensor whose round trip w -> theta -> w is not exact for its p (p = 1.1, 1.75 in float32) is
stepped "masked": the kernel writes w only where theta moved and reads the old w back
elsewhere.  That read is the one extra memory stream of the masked step, so the masked step
should cost about what the plain one does.  (It did not while masked calls used streaming
stores: w was in DRAM by the next step; see STREAM_MIN in ``_cpu_kernel.c``.)

The kernel is called directly with its prepared pointers, plain and masked interleaved within
each round; the table gives the minimum over rounds in ns per element and the masked / plain
ratio, both from this run.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import time

import numpy as np
import torch

from attnopt.optim import _cpu
from attnopt.optim._math import classify_exponent, inverse_exponent

CASES = (1.1, 1.75, 2.0, 3.0)


def time_case(lib, p: float, numel: int, threads: int, rounds: int, steps: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(numel, generator=gen) * 0.05
    theta = torch.randn(numel, generator=gen) * 0.01
    g = torch.randn(numel, generator=gen)
    e = inverse_exponent(p)
    kind, n = classify_exponent(e)
    W, TH, G = _cpu._ptrs([w]), _cpu._ptrs([theta]), _cpu._ptrs([g])
    sizes, flag = (ctypes.c_int64 * 1)(numel), np.zeros(1, dtype=np.intc)

    def step(masked: int) -> None:
        rc = lib.attnopt_md_step(1, W, TH, G, None, sizes, None, 0, 0, 0, -1e-9, 1.0, 0.0, _cpu._KINDS[kind], n, e,
                                 _cpu._FMAX[torch.float32], 1, threads, masked, flag.ctypes.data)
        assert rc == 0

    for masked in (0, 1):
        step(masked)
    best = {"kind": kind, "plain": float("inf"), "masked": float("inf")}
    for _ in range(rounds):
        for name, masked in (("plain", 0), ("masked", 1)):
            t = time.perf_counter()
            for _ in range(steps):
                step(masked)
            best[name] = min(best[name], (time.perf_counter() - t) / steps / numel * 1e9)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--numel", type=int, default=1 << 20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    lib = _cpu.load()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{args.numel:,} float32 elements, {args.threads} kernel thread(s), min of {args.rounds} rounds")
    print(f"{'p':>5s} {'kind':>9s} {'plain ns/el':>12s} {'masked ns/el':>13s} {'masked/plain':>13s}")
    for p in CASES:
        best = time_case(lib, p, args.numel, args.threads, args.rounds, args.steps)
        print(f"{p:5g} {best['kind']:>9s} {best['plain']:12.3f} {best['masked']:13.3f} "
              f"{best['masked'] / best['plain']:12.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
