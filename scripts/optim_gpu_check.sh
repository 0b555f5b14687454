#!/usr/bin/env bash
# The optimizer's GPU check, in one command (issues #4, #15): the CUDA correctness tests (every
# path, the default step without a host synchronisation, a whole training step captured in a
# CUDA graph with capturable=True) and the step-time benchmark at 104M parameters, float32 and
# bf16, p in {1.1, 1.5, 1.75, 3}, with each result in its own file.
#
#   scripts/optim_gpu_check.sh [OUT]
#
# OUT defaults to runs/optim_gpu. It gets:
#   device.txt          nvidia-smi, torch and Triton versions
#   tests.log           pytest over tests/test_optim_cuda.py and tests/test_optim_paths.py
#   bench_float32.md    benchmarks/optim.py --device cuda --blocks 52, markdown: the default
#                       constructor (fused Triton kernel, device-side NaN/inf check), fused with
#                       nonfinite="ignore", the kernel alone, SGD(fused=True)
#   bench_bfloat16.md   the same with --dtype bfloat16
# Each benchmark file holds the bandwidth lines (share of the copy bandwidth, time against
# SGD(fused=True), host time per step) and the table; the issue-15 target is the `default`
# line at >= 85 % of the copy bandwidth. About 5 minutes on an H100.
# Needs CUDA, Triton, pytest and hypothesis; the package itself is found in src/ without an
# install (PYTHON defaults to python3). Exits non-zero if a test or a run fails, after running
# everything.
set -uo pipefail
OUT=${1:-runs/optim_gpu}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
status=0

{
  nvidia-smi || true
  $PYTHON -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/device.txt" 2>&1 || status=1

$PYTHON -m pytest -q tests/test_optim_cuda.py tests/test_optim_paths.py > "$OUT/tests.log" 2>&1 || status=1
tail -n 1 "$OUT/tests.log"

for dtype in float32 bfloat16; do
  $PYTHON benchmarks/optim.py --device cuda --blocks 52 --dtype "$dtype" --p 1.1 1.5 1.75 3 --rounds 5 --markdown \
    --only default fused/ignore fused-kernel sgd-fused > "$OUT/bench_$dtype.md" 2>&1 || status=1
  grep "copy's" "$OUT/bench_$dtype.md" || true
done
exit $status
