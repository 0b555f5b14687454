"""Results tables of the pages that no committed record stands behind, each with the reason.
A new results table must either be generated (a ``<!-- table:… -->`` block) or be added here:
``tests/test_docs_numbers.py`` fails on one that is neither."""

from __future__ import annotations

_OPTIM = ("`benchmarks/optim.py` prints its timings; the runs are transcribed in docs/optim_benchmark.md "
          "(raw GPU output in docs/optim_h100/), no JSON record under results/")
_CONVEX = ("the run folders (runs/convex-*) and the output of `benchmarks/convex.py` were not committed; "
           "the numbers are transcribed from them")
_IMDB_SPEED = "transcribed from the raw output in docs/imdb_h100/imdb_bench*.txt (no structured record)"

UNRECORDED: dict[str, str] = {
    # README
    "| p | `MirrorDescent(...)` default (C kernel, NaN/inf check) | without the check | previous default, "
    "single-tensor eager (run 12) | published-style per-tensor step (run 4) |": _OPTIM,
    "| p | torch `SGD(fused=True)` | ours, `fused=True` (then: host-synchronising NaN check) | ours, "
    "`nonfinite=\"ignore\"`: time, × fused SGD, share of copy bandwidth | the Triton kernel alone |": _OPTIM,
    "| n, T, d (constraints) | p = 1.25 | p = 1.75 | p = 2 | p = 3 |":
        "`benchmarks/svm.py` prints its timings; transcribed in docs/svm_benchmark.md, no record under results/",
    "| claim of the paper | what we measure | holds? |": _CONVEX,
    # docs/imdb_results.md
    "| block | cells | trials |": "a summary of the plan results/imdb/plan.toml (trial counts, not measurements)",
    "| | the authors' code | attnopt `--protocol paper` | consequence |": "a comparison of protocols, no measurements",
    "| | the paper | the CPU plan |": "a comparison of protocols (results/imdb-cpu/plan.toml), no measurements",
    "| | the paper's IMDB protocol | the SST-2 CPU plan |": "a comparison of protocols (results/sst2-cpu/plan.toml), no measurements",
    "| step | precision | padding | reviews/s | ms/step | speed-up | MFU |": _IMDB_SPEED,
    "| epoch | time | training part |": _IMDB_SPEED,
    # docs/convex_results.md
    "| N | n | d | n·d | FISTA s | FISTA it. | FISTA rel. gap | CVXPY s (solver s) | rel. obj. diff | "
    "speed-up (vs solver time) | heads |": _CONVEX,
    "| model | lr | steps in 20 s | final objective | s to 1% of optimum | s to 0.1% |": _CONVEX,
    "| student | training objective | train rel. error | test rel. error | wall s | notes |": _CONVEX,
    "| β / λ_max | train rel. err | test rel. err | heads | positions used (of 24) |": _CONVEX,
    "| model | steps | train acc | test acc | steps to 99% train | steps to 99% test | wall s |": _CONVEX,
    "| claim (paper / spec) | measured here | holds? |": _CONVEX,
}
