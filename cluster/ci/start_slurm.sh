#!/usr/bin/env bash
# Start a single-node Slurm (munged, slurmctld, slurmd) on this machine, as root.
#
# For CI and development only: one node named after this host's short hostname, all its
# CPUs (nproc), a modest RealMemory, no cgroups (proctrack/linuxproc, task/none), no
# accounting database (finished jobs stay visible to `scontrol show job` for MinJobAge s).
# Idempotent: daemons already running with the same slurm.conf are kept; a changed
# slurm.conf restarts them. Ends when `sinfo` shows the node idle (or fails after a timeout).
#
# Needs Debian's slurm-wlm and munge (`.ci/run` installs them). Environment:
#   SLURM_CONF_DIR   where slurm.conf goes (default /etc/slurm, Debian's path)
#   SLURM_STATE_DIR  state, spool and log folders (default /var/spool/metadns-slurm)
#   SLURM_WAIT_S     seconds to wait for the node to become idle (default 90)
set -euo pipefail

conf_dir=${SLURM_CONF_DIR:-/etc/slurm}
state_dir=${SLURM_STATE_DIR:-/var/spool/metadns-slurm}
wait_s=${SLURM_WAIT_S:-90}
host=$(hostname -s)
cpus=$(nproc)
total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mb=$(( total_mb / 2 < 4096 ? total_mb / 2 : 4096 ))

log() { echo "start_slurm: $*"; }
die() { echo "start_slurm: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it writes $conf_dir and starts system daemons)"
for tool in munged munge unmunge slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || die "$tool not found: install Debian's slurm-wlm and munge"
done

# Is the process recorded in a pid file alive?
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon recorded in a pid file (SIGTERM, then SIGKILL after 10 s).
stop_daemon() {
    local pidfile=$1 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
else
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile=/etc/munge/munge.key --force
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 40); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.25
    done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# ---------------------------------------------------------------- slurm.conf
install -d -m 0755 "$conf_dir" "$state_dir" "$state_dir/slurmctld" "$state_dir/slurmd" "$state_dir/log"
ctld_pid=$state_dir/slurmctld.pid
slurmd_pid=$state_dir/slurmd.pid
new_conf=$(mktemp)
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Written by cluster/ci/start_slurm.sh: single-node Slurm for CI and development.
ClusterName=metadns-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$state_dir/log/jobcomp.log
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=10
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$state_dir/slurmctld
SlurmdSpoolDir=$state_dir/slurmd
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=$state_dir/log/slurmctld.log
SlurmdLogFile=$state_dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
restart=0
if ! cmp -s "$new_conf" "$conf_dir/slurm.conf"; then
    log "writing $conf_dir/slurm.conf ($host: $cpus CPUs, RealMemory=$real_mb MB)"
    install -m 0644 "$new_conf" "$conf_dir/slurm.conf"
    restart=1
fi

# ---------------------------------------------------------------- daemons
if [[ $restart -eq 1 ]]; then
    stop_daemon "$slurmd_pid"
    stop_daemon "$ctld_pid"
fi
if alive "$ctld_pid"; then
    log "slurmctld already running"
else
    # -c: no job survives a stopped controller on this one-node Slurm, so start from a clean
    # state instead of recovering dead jobs that would hold the node.
    log "starting slurmctld"
    slurmctld -c -f "$conf_dir/slurm.conf"
fi
for _ in $(seq "$wait_s"); do
    scontrol ping 2>/dev/null | grep -q "is UP" && break
    sleep 1
done
scontrol ping | grep -q "is UP" || die "slurmctld does not answer (see $state_dir/log/slurmctld.log)"
if alive "$slurmd_pid"; then
    log "slurmd already running"
else
    log "starting slurmd"
    slurmd -f "$conf_dir/slurm.conf"
fi

# ---------------------------------------------------------------- wait for an idle node
for _ in $(seq "$wait_s"); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1)
    case $state in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|fail*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n1)
case $state in
    idle|mixed|allocated|completing) log "node $host is $state" ;;
    *) die "node $host is '${state:-unknown}' after ${wait_s}s (see $state_dir/log/slurmd.log; sinfo -R)" ;;
esac
