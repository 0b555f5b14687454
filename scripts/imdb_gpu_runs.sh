#!/usr/bin/env bash
# E3 + E6 on one GPU, as run for docs/imdb_results.md: six size-3 IMDB trainings side by side
# (MD p = 1.1, 2, 3 with the spec's learning rates; Adam, AdamW, SGD-momentum), then the
# E3/E6 table, the E4 sparsity analysis and the E5 attention maps.
#
#   scripts/imdb_gpu_runs.sh [OUT] [SECONDS]
#
# OUT defaults to runs/imdb_gpu. With SECONDS, every run is asked to stop cleanly (the STOP
# file) after that many seconds; without it, runs go to the protocol's stop (99.5 % train
# accuracy or 1,000 epochs). Re-running the script resumes unfinished runs from their
# checkpoints. Extra options for every run can be passed in ATTNOPT_TRAIN_ARGS
# (e.g. ATTNOPT_TRAIN_ARGS="--seed 1"); ATTNOPT_DEVICE (default cuda) picks the device.
set -euo pipefail
OUT=${1:-runs/imdb_gpu}
LIMIT=${2:-}
ATTNOPT=${ATTNOPT:-"python -m attnopt"}
DEVICE=${ATTNOPT_DEVICE:-cuda}
mkdir -p "$OUT/logs"

$ATTNOPT imdb prepare --dataset imdb

declare -A RUNS=(
  [e3/p1.1]="--p 1.1" [e3/p2]="--p 2" [e3/p3]="--p 3"
  [e6/adam]="--optimizer adam" [e6/adamw]="--optimizer adamw" [e6/sgd]="--optimizer sgd"
)
pids=()
for name in "${!RUNS[@]}"; do
  # shellcheck disable=SC2086  # the option strings are meant to split
  $ATTNOPT imdb train --size 3 --seed 0 --device "$DEVICE" --compile --no-progress \
    --out "$OUT/$name" ${RUNS[$name]} ${ATTNOPT_TRAIN_ARGS:-} > "$OUT/logs/${name//\//_}.log" 2>&1 &
  pids+=($!)
done
echo "started ${#pids[@]} runs; logs in $OUT/logs"

if [[ -n "$LIMIT" ]]; then
  ( sleep "$LIMIT"; for name in "${!RUNS[@]}"; do touch "$OUT/$name/STOP"; done ) &
  stopper=$!
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ -n "${stopper:-}" ]] && kill "$stopper" 2>/dev/null || true
if [[ $status -ne 0 ]]; then
  echo "a run failed; see $OUT/logs" >&2
  exit 1
fi

$ATTNOPT imdb table "$OUT/e3" "$OUT/e6" --out "$OUT/table.md" --csv "$OUT/table.csv" --figure "$OUT/curves.png"
$ATTNOPT imdb sparsity "$OUT/e3/p1.1" "$OUT/e3/p2" "$OUT/e3/p3" "$OUT/e6/adam" --out "$OUT/sparsity" --device "$DEVICE"
$ATTNOPT imdb attention-map "$OUT/e3/p1.1" "$OUT/e3/p2" "$OUT/e3/p3" "$OUT/e6/adam" --out "$OUT/attention" --device "$DEVICE"
