#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for tests/test_faults_slurm.py (and by hand).
#
#   tests/slurm_cluster.sh install        # apt-get install slurm-wlm munge if missing (root; never fatal in CI)
#   tests/slurm_cluster.sh start DIR      # munged + slurmctld + slurmd under DIR; prints SLURM_CONF=DIR/slurm.conf
#   tests/slurm_cluster.sh stop DIR       # stops the three daemons started under DIR
#
# Everything lives under DIR (config, munge key and socket, state, spool, logs, pid files); the daemons
# run as root, started directly (no systemd), on free ports, so a system SLURM or munge is left alone.
# FIRST_JOB_ID sets the first job id (default random in 1000..8999).
# The node is this host (`hostname -s`) with CPUS virtual CPUs (default 8: several small jobs share the
# real cores) and GPUS fake GPUs (gres "gpu" without device files, default 8) so the batch scripts'
# `--gpus-per-task=1` is accepted as written. Point the clients at it with SLURM_CONF=DIR/slurm.conf.
# `start` exits non-zero with the daemon log tails when something does not come up.
set -uo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

fail() { log_tails "$1"; cmd_stop "$1" >/dev/null 2>&1; shift; die "$@"; }

log_tails() {
    local f
    for f in "$1"/log/munged.log "$1"/log/slurmctld.log "$1"/log/slurmd.log "$1"/log/*.out; do
        [ -f "$f" ] && { echo "--- tail $f"; tail -n 25 "$f"; }
    done
    return 0
}

cmd_install() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null; then
        echo "slurm_cluster: slurm-wlm and munge already installed"; return 0
    fi
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge by hand"
    [ "$(id -u)" -eq 0 ] || die "not root: cannot apt-get install slurm-wlm munge"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101: the packages' postinst must not start the system daemons
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && created=1; fi
    apt-get install -y -q --no-install-recommends slurm-wlm munge \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; }
    local rc=$?
    [ -n "$created" ] && rm -f "$policy"
    return $rc
}

cmd_start() {
    local dir=${1:?usage: slurm_cluster.sh start DIR}
    local cpus=${CPUS:-8} gpus=${GPUS:-8} host
    for b in munged slurmctld slurmd sbatch scontrol; do
        command -v "$b" >/dev/null || die "$b not found (tests/slurm_cluster.sh install)"
    done
    [ "$(id -u)" -eq 0 ] || die "the test cluster runs its daemons as root; this is uid $(id -u)"
    host=$(hostname -s)
    getent hosts "$host" >/dev/null || die "host name '$host' does not resolve (add it to /etc/hosts)"
    mkdir -p "$dir"/{munge,state,spool,log}
    dir=$(cd "$dir" && pwd)
    chmod 755 "$dir" "$dir/munge"   # munge: the socket directory must be searchable by all

    # munge: own key, socket, pid and seed files
    if [ ! -s "$dir/munge/munge.key" ]; then
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null 2>&1
        fi
        [ -s "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
        chmod 400 "$dir/munge/munge.key"
    fi
    local sock="$dir/munge/munge.socket"
    munged --force --socket="$sock" --key-file="$dir/munge/munge.key" --pid-file="$dir/munge/munged.pid" \
        --seed-file="$dir/munge/munged.seed" --log-file="$dir/log/munged.log" \
        || fail "$dir" "munged did not start"
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || fail "$dir" "munged socket $sock did not appear"

    local ctld_port slurmd_port first_job=${FIRST_JOB_ID:-$((1000 + RANDOM % 8000))}
    ctld_port=$(free_port) && slurmd_port=$(free_port) || die "no free port"
    # fake GPUs: slurmd wants character devices; links to /dev/null stand in (nothing is enforced:
    # TaskPlugin=task/none), so `--gpus-per-task=1` allocates one and torch still sees no CUDA
    mkdir -p "$dir/dev" "$dir/spool/$host"
    local i
    for ((i = 0; i < gpus; i++)); do ln -sfn /dev/null "$dir/dev/gpu$i"; done
    echo "NodeName=$host Name=gpu File=$dir/dev/gpu[0-$((gpus - 1))]" > "$dir/gres.conf"
    cat > "$dir/slurm.conf" <<EOF
# written by tests/slurm_cluster.sh: a single-node test cluster, everything under $dir
ClusterName=bsynthtest
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays a requeued job's restart (default 120 s)
AuthInfo=socket=$sock,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/$host
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# kill_invalid_depend: a chain whose stage failed ends (CANCELLED) instead of pending forever
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0,kill_invalid_depend
# job ids (and so the launchers' rendezvous ports, 20000 + id % 20000) differ between test clusters
FirstJobId=$first_job
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
JobRequeue=1
ReturnToService=2
MinJobAge=3600
KillWait=20
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4000 Gres=gpu:$gpus State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i || fail "$dir" "slurmctld did not start"
    slurmd -f "$SLURM_CONF" || fail "$dir" "slurmd did not start"
    local state=""
    for _ in $(seq 150); do
        state=$(sinfo -h -N -n "$host" -o '%t' 2>/dev/null | head -n 1)
        case "$state" in idle|mix|alloc|inval*|drain*|down*) break ;; esac
        sleep 0.2
    done
    case "$state" in
        idle|mix|alloc) ;;
        *) fail "$dir" "node $host did not become idle (state '${state:-none}')" ;;
    esac
    echo "SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {
    local f=$1 pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null)
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

cmd_stop() {
    local dir=${1:?usage: slurm_cluster.sh stop DIR} ids="" id pid
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        export SLURM_CONF="$dir/slurm.conf"
        ids=$(timeout 30 squeue -h -o '%i' 2>/dev/null)
        if [ -n "$ids" ]; then
            # cancel everything and let slurmd finish the jobs (TERM, KillWait, KILL) before it stops
            timeout 30 scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
            for _ in $(seq 60); do
                [ -z "$(timeout 10 squeue -h -o '%i' 2>/dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munge/munged.pid"
    # a job step whose slurmd went away first: its slurmstepd, by job id (this cluster's ids only)
    for id in $ids; do
        for pid in $(pgrep -f "^slurmstepd: \[$id\." 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    return 0
}

case "${1:-}" in
    install) cmd_install ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    logs) shift; log_tails "${1:?DIR}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR | logs DIR" >&2; exit 2 ;;
esac
