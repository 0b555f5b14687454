"""Host (Python) time of one optimizer step over many small tensors, against torch's SGD.

A fused GPU step is one kernel launch, so at scale what is left to cut is the host work
around it: finding the gradients, checking that no parameter changed since the last step,
building the launch.  This script measures that work on the CPU, without a GPU: it runs
``MirrorDescent(fused=True)``'s Triton path with the kernels replaced by no-ops (Triton's
interpreter mode routes CPU tensors to it), over the same 836 tensors as
``benchmarks/optim.py --blocks 52`` but with at most 8 elements each, so that the elementwise
work is negligible.  The baseline is torch's SGD (``foreach=True``, whose per-step host work
is the same kind of list handling plus a few foreach launches), timed in the same run.

Needs Triton installed (``pip install -e ".[test]"`` on Linux x86-64).

    python benchmarks/optim_host.py [--blocks 52] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before attnopt/triton are imported: CPU tensors take the Triton path

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optim import transformer_shapes  # noqa: E402


class _NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _params(shapes, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for w in ws:
        w.grad = torch.randn(w.shape, generator=gen) * 1e-3
    return ws


def _time(step, rounds: int, steps: int = 20) -> tuple[float, float]:
    """(median, minimum) over rounds of the mean step time; the minimum is the less
    contention-sensitive figure on a shared machine."""
    step()
    step()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out.append((time.perf_counter() - t0) / steps)
    return statistics.median(out), min(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=52)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)
    try:
        from attnopt.optim import _triton
    except ImportError:
        print("needs Triton (pip install triton)", file=sys.stderr)
        return 2
    from attnopt.optim import MirrorDescent

    _triton._md_kernel = _NoLaunch()
    _triton._nonfinite_kernel = _NoLaunch()
    _triton._finalize_kernel = _NoLaunch()
    shapes = [tuple(min(d, 8) for d in s) for s in transformer_shapes(blocks=args.blocks)]
    from attnopt.optim import _state

    def without_fast_path(step):
        """The step with the per-group fast path off (every step rebuilds the lists)."""
        def run():
            valid = _state.Snapshot.valid
            _state.Snapshot.valid = lambda *a: False
            try:
                step()
            finally:
                _state.Snapshot.valid = valid
        return run

    rows = {
        "sgd-foreach": lambda ws: torch.optim.SGD(ws, lr=1e-4, foreach=True).step,
        "fused/ignore (host)": lambda ws: MirrorDescent(ws, lr=1e-4, p=1.5, fused=True, nonfinite="ignore").step,
        "fused, default check (host)": lambda ws: MirrorDescent(ws, lr=1e-4, p=1.5, fused=True).step,
        "fused, default, no fast path": lambda ws: without_fast_path(MirrorDescent(ws, lr=1e-4, p=1.5, fused=True).step),
    }
    times = {name: _time(make(_params(shapes)), args.rounds) for name, make in rows.items()}
    base, base_min = times["sgd-foreach"]
    print(f"# {len(shapes)} tensors, torch {torch.__version__}; host time per step (kernels replaced by no-ops)")
    for name, (t, t_min) in times.items():
        print(f"{name:30s} median {t * 1e6:6.0f} us {t / base:5.2f}x sgd-foreach   "
              f"min {t_min * 1e6:6.0f} us {t_min / base_min:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
