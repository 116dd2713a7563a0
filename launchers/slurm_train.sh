# The training job of launchers/*.slurm (sourced by launchers/slurm_recipe.sh; not submitted on its own):
# srun launchers/train.py STAGE on every task.
#
# Expects: STAGE, CONFIG, STORE, RUN_DIR, EXTRA_ARGS (key=value overrides, space separated). Optional: PYTHON (default python), MAX_RESTARTS (default 10),
# MASTER_PORT (default derived from the job id).
#
# What it does:
#   * rendezvous: MASTER_ADDR = first host of the allocation, MASTER_PORT from the job id; each
#     srun task (one per GPU) finds its rank from SLURM_PROCID / SLURM_LOCALID (bsynth_hpc.engine.distributed);
#   * preemption: the batch shell traps USR1 (sent by --signal=B:USR1@T before the time limit) and
#     TERM, and forwards USR1 to the tasks; they finish the step, write a checkpoint and exit 75;
#   * requeue: exit 75 (or status "preempted") -> `scontrol requeue`; a lost rank or hang (exit 4/5)
#     -> requeue up to MAX_RESTARTS times; every start passes --resume auto, so the run continues
#     from its newest complete checkpoint; any other failure is reported and not retried;
#   * a job that is already ending is not requeued, except at its time limit: `scancel JOB` (the job
#     is COMPLETING when the tasks have checkpointed) stops the run for good (resubmit to continue),
#     and a job that SLURM requeued itself (PreemptMode=REQUEUE) is not requeued twice;
#   * RUN_DIR/status.json counts only when this start wrote it (a stale "preempted" from the last
#     start must not requeue a job whose tasks failed to launch).
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

LAUNCHED_AT=$(date +%s)
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of key=value words
srun --kill-on-bad-exit=1 "$PYTHON" launchers/train.py "$STAGE" --config "$CONFIG" --store "$STORE" \
     --run-dir "$RUN_DIR" --resume auto $EXTRA_ARGS &
SRUN_PID=$!
rc=0
while true; do
    wait "$SRUN_PID"
    rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break   # still running: wait was interrupted by a trapped signal
done

# the run's outcome, if this start wrote it: status.json "time" is rank 0's clock (the first node, as this
# shell; 5 s of slack for skew), and the previous start ended at least SLURM's requeue delay ago
state=$(sed -n 's/.*"state": *"\([a-z_]*\)".*/\1/p' "$RUN_DIR/status.json" 2>/dev/null | head -n 1)
written=$(sed -n 's/.*"time": *\([0-9][0-9]*\).*/\1/p' "$RUN_DIR/status.json" 2>/dev/null | head -n 1)
if [ -n "$state" ] && [ $(( ${written:-0} + 5 )) -lt "$LAUNCHED_AT" ]; then
    echo "[slurm] $RUN_DIR/status.json ('$state') is from an earlier start: ignored"
    state=""
fi
echo "[slurm] tasks ended with exit $rc, run state '${state:-unknown}'"

seconds() {   # SLURM duration [D-]HH:MM:SS | MM:SS -> seconds; UNLIMITED and the rest -> empty
    local t=$1 d=0 h=0 m=0 sec=0
    case "$t" in *-*) d=${t%%-*}; t=${t#*-} ;; esac
    IFS=: read -r -a f <<< "$t"
    case ${#f[@]} in
        3) h=${f[0]}; m=${f[1]}; sec=${f[2]} ;;
        2) m=${f[0]}; sec=${f[1]} ;;
        *) return 0 ;;
    esac
    [[ "$d$h$m$sec" =~ ^[0-9]+$ ]] || return 0
    echo $(( ((10#$d * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$sec ))
}

requeue() {
    local job_state run_time limit reason
    # state, run time, limit and reason as SLURM sees them now (empty where squeue does not answer)
    read -r job_state run_time limit reason < <(timeout 60 squeue -h -j "$SLURM_JOB_ID" -o '%T %M %l %r' 2>/dev/null)
    case "${job_state:-}" in
        RUNNING|"") ;;   # a warning signal (--signal=B:USR1@T, scancel --signal=...) or a lost rank
        COMPLETING|CANCELLED|TIMEOUT)
            run_time=$(seconds "${run_time:-}")
            limit=$(seconds "${limit:-}")
            if [ "${reason:-}" != TimeLimit ] \
                && { [ -z "$limit" ] || [ -z "$run_time" ] || [ "$run_time" -lt "$limit" ]; }; then
                echo "[slurm] not requeued ($1): the job is ending before its time limit (scancel)." \
                     "The checkpoint stays in $RUN_DIR; resubmit the same command to continue"
                exit 0
            fi ;;   # the time limit's SIGTERM (no warning signal, or it came late): continue in a new run
        *)
            echo "[slurm] not requeued ($1): the job is $job_state (SLURM requeues or ends it itself)"
            exit 0 ;;
    esac
    echo "[slurm] requeue: $1"
    scontrol requeue "$SLURM_JOB_ID" || { echo "[slurm] scontrol requeue $SLURM_JOB_ID failed" >&2; exit 75; }
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
