#!/usr/bin/env bash
# Train a stage on one consumer GPU (6-24 GB): the memory planner picks micro-batch, precision,
# activation checkpointing and optimizer offload to fit the card, and the run resumes itself.
#
#   launchers/single_gpu.sh STAGE --config YAML --store STORE.zarr --run-dir RUN [--gpu-mem-gb 8|auto] [key=value ...]
#
# Without --gpu-mem-gb the card's own size is used (auto). GPU=1 selects another card. Ctrl-C (or a
# SIGTERM) finishes the current step and writes a checkpoint; running the same command again continues.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
export CUDA_VISIBLE_DEVICES=${GPU:-${CUDA_VISIBLE_DEVICES:-0}}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [ $# -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    exit 0
fi

args=("$@")
has_mem=0
has_resume=0
for a in "$@"; do
    case $a in
        --gpu-mem-gb|--gpu-mem-gb=*) has_mem=1 ;;
        --resume|--resume=*) has_resume=1 ;;
    esac
done
[ "$has_mem" -eq 1 ] || args+=(--gpu-mem-gb auto)
[ "$has_resume" -eq 1 ] || args+=(--resume auto)

"$PYTHON" -m bsynth_hpc.engine.run "${args[@]}"
rc=$?
case $rc in
    0) echo "[single_gpu] finished" ;;
    75) echo "[single_gpu] stopped after writing a checkpoint: run the same command again to continue" ;;
    2) echo "[single_gpu] configuration error (see above)" ;;
    *) echo "[single_gpu] failed with exit $rc: see the messages above and RUN/status.json" ;;
esac
exit $rc
