"""Step time of ℓp mirror descent against torch SGD on a ~13M-parameter, transformer-shaped list.

Usage::

    python benchmarks/optim.py                    # CPU (and CUDA too when present)
    python benchmarks/optim.py --device cuda      # CUDA only: adds bandwidth and fused SGD
    python benchmarks/optim.py --p 1.1 3 --rounds 7 --markdown

Every contender is timed in the same run, in interleaved rounds (round r times each contender
in turn), and the table reports the median over rounds of the mean step time within a round,
and its ratio to ``torch.optim.SGD(foreach=True)``; the minimum over rounds is shown too, as a
less contention-sensitive figure on a shared machine.  Contenders:

* ``sgd-foreach`` — ``torch.optim.SGD(foreach=True)`` (the baseline);
* ``naive`` — the published per-tensor ℓp step, two powers per element, Python loop:
  ``θ' = sign(w)|w|^{p-1} − ηg; w = sign(θ')|θ'|^{1/(p-1)}``;
* ``default`` — ``MirrorDescent(params, lr=…, p=…)`` with no implementation flag (the path it
  picks: the C kernel on CPU, the Triton kernel on CUDA, when they can run);
* ``single``, ``foreach``, ``compiled``, ``fused`` — :class:`MirrorDescent` paths, with the
  default non-finite check (``nonfinite="raise"``); ``fused`` is the C kernel on CPU and the
  Triton kernel on CUDA;
* ``compiled/ignore``, ``fused/ignore`` — without the non-finite check, to show its cost;
* ``fused-kernel`` (CUDA) — the fused kernel called directly with the optimizer's prepared
  plan, without the per-step Python bookkeeping over every parameter (what the kernel reaches).

After the table, the same contenders (``sgd-foreach`` and ``default`` unless ``--only`` names
others) time a **small model** (``--small-shapes``: 41 tensors of 16 × 16, as a small MLP or tiny
transformer fine-tuned on CPU) where the fixed per-step cost dominates, in µs per step, with
their ratio to ``SGD(foreach=True)``; ``--no-small`` leaves it out.

On CUDA the script also reports the achieved bandwidth of the fused step (the bytes it must
move: read g, read θ, write θ, write w, at their dtypes; the non-finite check's extra read of
g is not counted, so it shows as lost bandwidth) against a device-to-device copy of the same
number of float32 elements, and its time against ``SGD(fused=True)``.  ``--dtype bfloat16``
times bf16 parameters and gradients (θ stays float32).

On CUDA a round is 20 back-to-back steps, as for the copy reference: the time then counts the
steady state, where the host prepares a step while the device runs the one before, and not
mostly the first step's host work, during which the device idles.  Each bandwidth line also
gives the host time per step (the calls alone, without waiting for the device): a step whose
host time exceeds its device time is bound by the host.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from attnopt.optim import MirrorDescent


def transformer_shapes(vocab: int = 30522, d: int = 384, ff: int = 1536, blocks: int = 1, max_len: int = 512):
    """Shapes of a small BERT-like encoder: embeddings, then per block attention + MLP + norms."""
    shapes = [(vocab, d), (max_len, d), (d,), (d,)]
    for _ in range(blocks):
        shapes += [(d, d), (d,)] * 4  # q, k, v, out projections with biases
        shapes += [(ff, d), (ff,), (d, ff), (d,)]  # MLP
        shapes += [(d,), (d,), (d,), (d,)]  # two LayerNorms
    return shapes


def small_shapes(n: int = 41, side: int = 16):
    """A small model: ``n`` tensors of ``side × side`` (where per-step Python work shows)."""
    return [(side, side)] * n


def naive_step(ws, gs, lr: float, p: float) -> None:
    """The per-tensor published-style step: two powers per element, Python loop."""
    for w, g in zip(ws, gs):
        theta = torch.sign(w) * w.abs().pow(p - 1.0) - lr * g
        w.copy_(torch.sign(theta) * theta.abs().pow(1.0 / (p - 1.0)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_params(shapes, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.05).to(device, dtype)) for s in shapes]
    gs = [(torch.randn(s, generator=gen) * 1e-3).to(device, dtype) for s in shapes]
    return ws, gs


def contenders(shapes, device, dtype, p: float, lr: float):
    """name -> zero-argument step function; each contender owns its parameter copies."""
    out = {}

    def with_grads(make):
        ws, gs = _make_params(shapes, device, dtype)
        for w, g in zip(ws, gs):
            w.grad = g
        return make(ws, gs)

    def sgd(**kw):
        return lambda ws, gs: torch.optim.SGD(ws, lr=lr, **kw).step

    out["sgd-foreach"] = with_grads(sgd(foreach=True))
    if device.type == "cuda":
        out["sgd-fused"] = with_grads(sgd(fused=True))
    out["naive"] = with_grads(lambda ws, gs: (lambda: naive_step([w.data for w in ws], gs, lr, p)))

    def ours(**kw):
        return lambda ws, gs: MirrorDescent(ws, lr=lr, p=p, **kw).step

    out["default"] = with_grads(ours())
    out["default/ignore"] = with_grads(ours(nonfinite="ignore"))
    out["single"] = with_grads(ours(foreach=False))
    out["foreach"] = with_grads(ours(foreach=True))
    out["compiled"] = with_grads(ours(compiled=True))
    out["compiled/ignore"] = with_grads(ours(compiled=True, nonfinite="ignore"))
    if device.type == "cuda":
        try:
            import triton  # noqa: F401

            out["fused"] = with_grads(ours(fused=True))
            out["fused/ignore"] = with_grads(ours(fused=True, nonfinite="ignore"))
            out["fused-kernel"] = with_grads(lambda ws, gs: kernel_only(ws, lr, p))
        except ImportError:
            print("  (triton not installed: no fused contender)", file=sys.stderr)
    else:  # the C kernel, built on first use
        out["fused"] = with_grads(ours(fused=True))
        out["fused/ignore"] = with_grads(ours(fused=True, nonfinite="ignore"))
    return out


def kernel_only(ws, lr: float, p: float):
    """The fused kernel alone: the optimizer's per-step bookkeeping (resync checks over every
    parameter) is done once, so this row shows what the kernel itself reaches."""
    from attnopt.optim._triton import fused_mirror_descent

    opt = MirrorDescent(ws, lr=lr, p=p, fused=True, nonfinite="ignore")
    opt.step()  # builds θ and the plan
    b = opt._init_group(0, opt.param_groups[0], 0)
    cache = opt._plans[0]
    return lambda: fused_mirror_descent(b.params, b.grads, b.duals, b.bufs, lr=lr, p=p, normalize=False, eps=0.0,
                                        momentum=0.0, weight_decay=0.0, maximize=False, fused_plan=cache)


def time_round(fn, steps: int, device) -> tuple[float, float]:
    """(host time, elapsed time) per step over ``steps`` back-to-back steps.  On CUDA the host
    time is what the calls themselves take (the kernels run asynchronously), the elapsed time
    runs until the device has finished; on CPU the two are the same."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    t1 = time.perf_counter()
    _sync(device)
    t2 = time.perf_counter()
    return (t1 - t0) / steps, (t2 - t0) / steps


def bench(shapes, device, dtype, p, lr, rounds, steps, only=None):
    fns = contenders(shapes, device, dtype, p, lr)
    if only:
        fns = {k: v for k, v in fns.items() if k in only or k == "sgd-foreach"}
    for name, fn in fns.items():  # warm-up (compiles the compiled paths)
        t0 = time.perf_counter()
        fn()
        fn()
        _sync(device)
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    times = {k: [] for k in fns}
    host = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            h, t = time_round(fn, steps, device)
            times[name].append(t)
            host[name].append(h)
    return {k: (statistics.median(v), min(v), statistics.median(host[k])) for k, v in times.items()}


COPY_STEPS = 20  # back-to-back steps per timed round on CUDA (and for the copy reference)


def copy_bandwidth(numel: int, device) -> float:
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = min(time_round(lambda: dst.copy_(src), COPY_STEPS, device)[1] for _ in range(3))
    return 2 * numel * 4 / t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cpu, plus cuda when present)")
    ap.add_argument("--p", type=float, nargs="+", default=[1.1, 1.5, 1.75, 3.0])
    ap.add_argument("--blocks", type=int, default=1, help="transformer blocks after the embeddings")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=None,
                    help=f"steps per round (default 5 on CPU; {COPY_STEPS} on CUDA, as for the copy reference)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--only", nargs="*", help="restrict to these contenders (sgd-foreach always runs)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="parameter and gradient dtype (the dual θ is float32 for the narrower ones)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--no-small", action="store_true", help="leave out the small-model case")
    ap.add_argument("--small-steps", type=int, default=200, help="steps per round of the small-model case")
    args = ap.parse_args(argv)

    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [torch.device(args.device)]
        if devices[0].type == "cuda" and not torch.cuda.is_available():
            print("CUDA requested but not available", file=sys.stderr)
            return 2

    shapes = transformer_shapes(blocks=args.blocks)
    numel = sum(torch.Size(s).numel() for s in shapes)
    dtype = getattr(torch, args.dtype)
    print(f"# {numel / 1e6:.2f}M parameters in {len(shapes)} tensors, {args.dtype}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + "".join(f", {torch.cuda.get_device_name(d)}" for d in devices if d.type == "cuda"))
    rows = []
    for device in devices:
        for p in args.p:
            print(f"[{device.type}] p={p:g}", file=sys.stderr, flush=True)
            steps = args.steps or (COPY_STEPS if device.type == "cuda" else 5)
            med = bench(shapes, device, dtype, p, args.lr, args.rounds, steps, args.only)
            base, base_min, _ = med["sgd-foreach"]
            for name, (t, t_min, _) in med.items():
                rows.append((device.type, p, name, t * 1e3, t / base, t_min * 1e3, t_min / base_min))
            if device.type == "cuda" and "sgd-fused" in med:
                b = torch.finfo(dtype).bits // 8
                moved = numel * (b + 4 + 4 + b)  # read g, read θ (fp32), write θ, write w
                sgd_moved = numel * 3 * b  # read g, read w, write w
                bw = copy_bandwidth(numel, device)
                for name in [k for k in ("default", "fused", "fused/ignore", "fused-kernel") if k in med]:
                    t, _, host = med[name]
                    print(f"cuda p={p:g} {name}: {moved / t / 1e9:.0f} GB/s = {moved / t / bw:.0%} of the "
                          f"copy's {bw / 1e9:.0f} GB/s; time {t / med['sgd-fused'][0]:.2f}x sgd-fused "
                          f"(sgd-fused: {sgd_moved / med['sgd-fused'][0] / 1e9:.0f} GB/s); host "
                          f"{host * 1e3:.3f} ms/step of {t * 1e3:.3f} ({steps} steps per round)")
    if args.markdown:
        print("| device | p | path | median ms/step | × SGD-foreach | min ms/step | min × SGD-foreach min |")
        print("|---|---|---|---:|---:|---:|---:|")
        for dev, p, name, ms, ratio, ms_min, ratio_min in rows:
            print(f"| {dev} | {p:g} | {name} | {ms:.2f} | {ratio:.2f} | {ms_min:.2f} | {ratio_min:.2f} |")
    else:
        for dev, p, name, ms, ratio, ms_min, ratio_min in rows:
            print(f"{dev:5s} p={p:<5g} {name:16s} {ms:9.2f} ms  {ratio:6.2f}x   (min {ms_min:8.2f} ms {ratio_min:6.2f}x)")
    if not args.no_small:
        small(devices, dtype, args)
    return 0


def small(devices, dtype, args) -> None:
    """The small-model case: µs per step and the ratio to SGD(foreach=True), same rounds."""
    shapes = small_shapes()
    only = args.only or ["default"]
    print(f"# small model: {len(shapes)} tensors of {shapes[0][0]} x {shapes[0][1]}, {args.small_steps} steps per "
          f"round, {args.rounds} rounds")
    for device in devices:
        for p in args.p:
            med = bench(shapes, device, dtype, p, args.lr, args.rounds, args.small_steps, only)
            base, base_min, _ = med["sgd-foreach"]
            for name, (t, t_min, _) in med.items():
                print(f"small {device.type:5s} p={p:<5g} {name:16s} {t * 1e6:9.1f} us  {t / base:6.2f}x   "
                      f"(min {t_min * 1e6:8.1f} us {t_min / base_min:6.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
