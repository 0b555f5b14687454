#!/usr/bin/env bash
# The optimizer's GPU check, in one command (issue #4): the CUDA correctness tests and the
# step-time benchmark at 104M parameters, float32 and bf16, with each result in its own file.
#
#   scripts/optim_gpu_check.sh [OUT]
#
# OUT defaults to runs/optim_gpu. It gets:
#   device.txt          nvidia-smi, torch and Triton versions
#   tests.log           pytest over tests/test_optim_cuda.py and tests/test_optim_paths.py
#   bench_float32.md    benchmarks/optim.py --device cuda --blocks 52 (fused contenders), markdown
#   bench_bfloat16.md   the same with --dtype bfloat16
# Each benchmark file holds the bandwidth lines (share of the copy bandwidth, time against
# SGD(fused=True), host time per step) and the table. Not yet run on a GPU: a few minutes expected.
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
  $PYTHON benchmarks/optim.py --device cuda --blocks 52 --dtype "$dtype" --markdown \
    --only fused fused/ignore fused-kernel sgd-fused > "$OUT/bench_$dtype.md" 2>&1 || status=1
  grep "copy's" "$OUT/bench_$dtype.md" || true
done
exit $status
