#!/bin/bash
# The IMDB / SST-2 campaign on one machine with several GPUs: one worker per visible GPU, each
# pinned to its GPU with CUDA_VISIBLE_DEVICES and training its own shard of the plan into one
# results folder (docs/campaign_cluster.md).
#
#   bash examples/campaign_local_gpus.sh                                  # every GPU nvidia-smi lists
#   CUDA_VISIBLE_DEVICES=0,2 bash examples/campaign_local_gpus.sh         # those GPUs only
#   PLAN=my_plan.toml BUDGET=3600 bash examples/campaign_local_gpus.sh
#
# Each worker logs to LOGS/worker-K.log. Ctrl-C stops them all (each keeps its checkpoints and
# the same command resumes). The exit status is the first failing worker's, else 0.

set -euo pipefail

PLAN=${PLAN:-results/imdb/plan.toml}
RESULTS=${RESULTS:-results/imdb}
WORK=${WORK:-runs/campaign-work}
BUDGET=${BUDGET:-3600}
LOGS=${LOGS:-logs}
DEVICE=${DEVICE:-cuda}
ATTNOPT=${ATTNOPT:-attnopt}

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=, read -r -a GPUS <<< "${CUDA_VISIBLE_DEVICES}"
else
    mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
if [[ ${#GPUS[@]} -eq 0 ]]; then
    echo "error: no GPU visible (set CUDA_VISIBLE_DEVICES or check nvidia-smi)" >&2
    exit 2
fi

N=${#GPUS[@]}
mkdir -p "${LOGS}"
PIDS=()
trap 'kill -INT "${PIDS[@]}" 2>/dev/null; wait' INT TERM
for K in "${!GPUS[@]}"; do
    # shellcheck disable=SC2086  # EXTRA_ARGS: several options on purpose
    CUDA_VISIBLE_DEVICES=${GPUS[$K]} ${ATTNOPT} imdb campaign "${PLAN}" --shard "${K}/${N}" \
        --results "${RESULTS}" --work "${WORK}" --budget "${BUDGET}" --device "${DEVICE}" --no-progress \
        ${EXTRA_ARGS:-} > "${LOGS}/worker-${K}.log" 2>&1 &
    PIDS+=($!)
    echo "worker ${K}/${N}: GPU ${GPUS[$K]}, pid ${PIDS[-1]}, log ${LOGS}/worker-${K}.log"
done
STATUS=0
for PID in "${PIDS[@]}"; do
    wait "${PID}" || { rc=$?; [[ ${STATUS} -eq 0 ]] && STATUS=${rc}; }
done
exit "${STATUS}"
