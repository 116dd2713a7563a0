# Common body of launchers/*.slurm (sourced by them; not submitted on its own).
#
# Expects: LAUNCHER (script under launchers/), STAGE, CONFIG, STORE, RUN_DIR, EXTRA_ARGS (key=value
# overrides, space separated). Optional: PYTHON (default python), MAX_RESTARTS (default 10),
# MASTER_PORT (default derived from the job id).
#
# What it does:
#   * rendezvous: MASTER_ADDR = first host of the allocation, MASTER_PORT from the job id; each
#     srun task (one per GPU) finds its rank from SLURM_PROCID / SLURM_LOCALID (bsynth_hpc.engine.distributed);
#   * preemption: the batch shell traps USR1 (sent by --signal=B:USR1@T before the time limit) and
#     TERM, and forwards USR1 to the tasks; they finish the step, write a checkpoint and exit 75;
#   * requeue: exit 75 (or status "preempted") -> `scontrol requeue`; a lost rank or hang (exit 4/5)
#     -> requeue up to MAX_RESTARTS times; every start passes --resume auto, so the run continues
#     from its newest complete checkpoint; any other failure is reported and not retried.
set -uo pipefail

REPO=${BSYNTH_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$REPO" || exit 1
if [ ! -f "$CONFIG" ]; then
    echo "[slurm] config '$CONFIG' not found (relative to $REPO): pass CONFIG=path/to/config.yaml," \
         "e.g. sbatch --export=ALL,STAGE=$STAGE,CONFIG=configs/<name>.yaml" >&2
    exit 2
fi
: "${SLURM_JOB_ID:?submit this script with sbatch}"
PYTHON=${PYTHON:-python}
MAX_RESTARTS=${MAX_RESTARTS:-10}
RESTARTS=${SLURM_RESTART_COUNT:-0}
EXTRA_ARGS=${EXTRA_ARGS:-}

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?}" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
mkdir -p "$RUN_DIR"
echo "[slurm] job $SLURM_JOB_ID restart $RESTARTS: $STAGE on ${SLURM_JOB_NUM_NODES:-1} node(s), ${SLURM_NTASKS:-?} tasks;" \
     "rendezvous $MASTER_ADDR:$MASTER_PORT; run dir $RUN_DIR"

SRUN_PID=""
forward_signal() {
    echo "[slurm] $1 received: asking every task to finish its step, checkpoint and exit"
    if [ -n "$SRUN_PID" ]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap 'forward_signal SIGUSR1' USR1
trap 'forward_signal SIGTERM' TERM

# shellcheck disable=SC2086  # EXTRA_ARGS is a list of key=value words
srun --kill-on-bad-exit=1 "$PYTHON" "launchers/$LAUNCHER" "$STAGE" --config "$CONFIG" --store "$STORE" \
     --run-dir "$RUN_DIR" --resume auto $EXTRA_ARGS &
SRUN_PID=$!
rc=0
while true; do
    wait "$SRUN_PID"
    rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break   # still running: wait was interrupted by a trapped signal
done

state=$(sed -n 's/.*"state": *"\([a-z_]*\)".*/\1/p' "$RUN_DIR/status.json" 2>/dev/null | head -n 1)
echo "[slurm] tasks ended with exit $rc, run state '${state:-unknown}'"

requeue() {
    echo "[slurm] requeue: $1"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}

if [ "$rc" -eq 0 ]; then
    echo "[slurm] finished"
    exit 0
fi
if [ "$rc" -eq 75 ] || [ "$state" = "preempted" ]; then
    requeue "preempted after writing a checkpoint"
fi
if [ "$rc" -eq 4 ] || [ "$rc" -eq 5 ] || [ "$state" = "peer_lost" ] || [ "$state" = "hang" ]; then
    if [ "$RESTARTS" -lt "$MAX_RESTARTS" ]; then
        requeue "a rank died or stalled (restart $((RESTARTS + 1)) of at most $MAX_RESTARTS)"
    fi
    echo "[slurm] giving up: $RESTARTS restarts already (MAX_RESTARTS=$MAX_RESTARTS)"
    exit "$rc"
fi
echo "[slurm] failed (exit $rc): not requeued; see this log and $RUN_DIR/status.json"
exit "$rc"
