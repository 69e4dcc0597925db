#!/usr/bin/env bash
# A two-node Slurm on this one machine, each node in its own network namespace, as root.
#
# For tests of the multi-node path of `metadns submit` (tests/cluster/test_two_slurmd.py).
# Debian's slurm-wlm is a multiple-slurmd build (`scontrol show config` shows MULTIPLE_SLURMD
# = Yes), so two `slurmd -N` can run on one host; but on one network stack both nodes would
# have the same address, and the Ray nodes of a job (one per Slurm node, every node with the
# same block of ports) would collide. So each daemon gets a network namespace of its own:
#
#   <prefix>-ctl  bridge br0 10.77.0.1/24, slurmctld; Slurm's commands run here (`exec`)
#   <prefix>-n1   eth0 10.77.0.11/24 (veth to br0), hostname n1, `slurmd -N n1`
#   <prefix>-n2   eth0 10.77.0.12/24 (veth to br0), hostname n2, `slurmd -N n2`
#
# The bridge and the veth pairs exist only inside these namespaces: nothing is added to the
# host's network namespace and nothing listens on the host's addresses. The namespaces share
# the file system (shared storage for the job: outputs, the venv, the Ray token) and munged's
# socket. Each node has its own UTS namespace (hostname n1/n2), spool, pid and log files.
# This Slurm has its own ClusterName, ports, config dir and state dir, and job ids from
# TWO_NODE_FIRST_JOB_ID on, so it runs beside the single-node Slurm of start_slurm.sh untouched.
#
# Usage (root; Debian's slurm-wlm and munge, iproute2, util-linux):
#   start_two_node_slurm.sh start            start (keeps a running one whose slurm.conf is the same);
#                                            ends when sinfo shows both nodes idle
#   start_two_node_slurm.sh stop             stop the daemons and every process left in the
#                                            namespaces, delete the namespaces (idempotent)
#   start_two_node_slurm.sh status           exit 0 when both nodes answer, else 1
#   start_two_node_slurm.sh exec CMD [ARG..] run CMD in the ctl namespace with SLURM_CONF set,
#                                            e.g. `exec sinfo`, `exec srun -N2 hostname`
#   start_two_node_slurm.sh wrappers DIR     write sbatch, srun, squeue, ... wrappers to DIR: put
#                                            DIR first on PATH to use this Slurm (they enter the
#                                            ctl namespace, except when already in one of ours)
# Environment:
#   TWO_NODE_PREFIX     namespace name prefix (default metadns2n)
#   TWO_NODE_CONF_DIR   slurm.conf (default /etc/slurm-metadns-2node)
#   TWO_NODE_STATE_DIR  state, spool and logs (default /var/spool/metadns-slurm-2node)
#   TWO_NODE_SUBNET     first three octets of the /24 (default 10.77.0)
#   TWO_NODE_CPUS       CPUs per node (default nproc / 2, at least 1)
#   TWO_NODE_WAIT_S     seconds to wait for the nodes (default 90)
#   TWO_NODE_FIRST_JOB_ID  first job id (default 700000; jobs' Ray temp folders are
#                       /tmp/ray-metadns-<job id>, so keep ids apart from other Slurms')
set -euo pipefail

prefix=${TWO_NODE_PREFIX:-metadns2n}
conf_dir=${TWO_NODE_CONF_DIR:-/etc/slurm-metadns-2node}
state_dir=${TWO_NODE_STATE_DIR:-/var/spool/metadns-slurm-2node}
subnet=${TWO_NODE_SUBNET:-10.77.0}
wait_s=${TWO_NODE_WAIT_S:-90}
cpus=${TWO_NODE_CPUS:-$(( $(nproc) / 2 > 1 ? $(nproc) / 2 : 1 ))}
total_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mb=$(( total_mb / 4 < 2048 ? total_mb / 4 : 2048 ))
ctl_ns=$prefix-ctl
nodes=(n1 n2)
ctl_ip=$subnet.1
ctld_port=6917
slurmd_port=6918
first_job_id=${TWO_NODE_FIRST_JOB_ID:-700000}
conf=$conf_dir/slurm.conf
ctld_pid=$state_dir/slurmctld.pid

log() { echo "start_two_node_slurm: $*"; }
die() { echo "start_two_node_slurm: error: $*" >&2; exit 1; }

node_ns() { echo "$prefix-$1"; }
node_ip() { echo "$subnet.$(( 10 + ${1#n} ))"; }
slurmd_pid() { echo "$state_dir/slurmd-$1.pid"; }
in_ctl() { nsenter --net="/run/netns/$ctl_ns" env SLURM_CONF="$conf" "$@"; }

# Is the process recorded in a pid file alive?
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Stop the daemon recorded in a pid file (SIGTERM, then SIGKILL after 10 s).
stop_daemon() {
    local pidfile=$1 pid
    alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

need_root_and_tools() {
    [[ $(id -u) -eq 0 ]] || die "run as root (it creates network namespaces and starts daemons)"
    local tool
    for tool in munge unmunge slurmctld slurmd sinfo scontrol ip nsenter unshare; do
        command -v "$tool" >/dev/null || die "$tool not found: install slurm-wlm, munge, iproute2, util-linux"
    done
}

write_conf() {  # the slurm.conf this script wants, on stdout
    local node
    cat <<EOF
# Written by cluster/ci/start_two_node_slurm.sh: two-node Slurm in network namespaces, for tests.
ClusterName=metadns-2node
SlurmctldHost=$(hostname -s)($ctl_ip)
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
JobCompType=jobcomp/none
PlugStackConfig=$conf_dir/plugstack.conf
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=10
FirstJobId=$first_job_id
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$state_dir/slurmctld
SlurmdSpoolDir=$state_dir/slurmd-%n
SlurmctldPidFile=$ctld_pid
SlurmdPidFile=$state_dir/slurmd-%n.pid
SlurmctldLogFile=$state_dir/log/slurmctld.log
SlurmdLogFile=$state_dir/log/slurmd-%n.log
EOF
    for node in "${nodes[@]}"; do
        echo "NodeName=$node NodeAddr=$(node_ip "$node") CPUs=$cpus RealMemory=$real_mb State=UNKNOWN"
    done
    echo "PartitionName=two Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP"
}

# ---------------------------------------------------------------- stop
stop_all() {
    local node ns pids
    for node in "${nodes[@]}"; do stop_daemon "$(slurmd_pid "$node")"; done
    stop_daemon "$ctld_pid"
    # Whatever is left in our namespaces (job steps, Ray, clients entered with `exec`).
    for ns in "$ctl_ns" "${nodes[@]/#/$prefix-}"; do
        [[ -e /run/netns/$ns ]] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then
            kill $pids 2>/dev/null || true
            sleep 1
            pids=$(ip netns pids "$ns" 2>/dev/null || true)
            [[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
        fi
        ip netns delete "$ns" 2>/dev/null || true
    done
    log "stopped; namespaces removed"
}

# ---------------------------------------------------------------- status
nodes_idle() {  # 0 when every node is idle (or busy) in sinfo
    local states
    states=$(in_ctl sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    local node
    for node in "${nodes[@]}"; do
        grep -Eq "^$node (idle|mixed|allocated|completing)" <<<"$states" || return 1
    done
}

# ---------------------------------------------------------------- start
make_namespaces() {
    local node ns
    ip netns add "$ctl_ns"
    ip -n "$ctl_ns" link set lo up
    ip -n "$ctl_ns" link add br0 type bridge
    ip -n "$ctl_ns" addr add "$ctl_ip/24" dev br0
    ip -n "$ctl_ns" link set br0 up
    for node in "${nodes[@]}"; do
        ns=$(node_ns "$node")
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Both ends are created inside our namespaces: veth-<node> in ctl, eth0 in the node's.
        ip -n "$ctl_ns" link add "veth-$node" type veth peer name eth0 netns "$ns"
        ip -n "$ctl_ns" link set "veth-$node" master br0 up
        ip -n "$ns" addr add "$(node_ip "$node")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
}

start_all() {
    need_root_and_tools
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 \
        || die "munged does not answer: start it first (cluster/ci/start_slurm.sh starts it)"
    install -d -m 0755 "$conf_dir" "$state_dir" "$state_dir/slurmctld" "$state_dir/log"
    local new_conf node ns
    new_conf=$(mktemp)
    write_conf >"$new_conf"
    if cmp -s "$new_conf" "$conf" && alive "$ctld_pid" && alive "$(slurmd_pid n1)" && alive "$(slurmd_pid n2)" \
            && nodes_idle; then
        rm -f "$new_conf"
        log "already running (both nodes idle)"
        return 0
    fi
    stop_all >/dev/null
    install -m 0644 "$new_conf" "$conf"
    rm -f "$new_conf"
    : >"$conf_dir/plugstack.conf"
    make_namespaces
    log "namespaces $ctl_ns ($ctl_ip), $(for n in "${nodes[@]}"; do printf '%s (%s) ' "$(node_ns "$n")" "$(node_ip "$n")"; done)"
    # -c: start from a clean state (no job survives a stopped controller here).
    in_ctl slurmctld -c -f "$conf"
    for _ in $(seq "$wait_s"); do
        in_ctl scontrol ping 2>/dev/null | grep -q "is UP" && break
        sleep 1
    done
    in_ctl scontrol ping | grep -q "is UP" || die "slurmctld does not answer (see $state_dir/log/slurmctld.log)"
    for node in "${nodes[@]}"; do
        ns=$(node_ns "$node")
        install -d -m 0755 "$state_dir/slurmd-$node"
        nsenter --net="/run/netns/$ns" unshare --uts \
            sh -c 'hostname "$1" && exec slurmd -N "$1" -f "$2"' slurmd-start "$node" "$conf"
    done
    for _ in $(seq "$wait_s"); do
        nodes_idle && break
        for node in "${nodes[@]}"; do
            if in_ctl sinfo -h -n "$node" -o %T 2>/dev/null | grep -Eq '^(down|drain|fail)'; then
                in_ctl scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
            fi
        done
        sleep 1
    done
    nodes_idle || die "nodes not idle after ${wait_s}s: $(in_ctl sinfo -N 2>&1) (see $state_dir/log/)"
    log "cluster metadns-2node up: $(in_ctl sinfo -h -N -o '%N %T' | paste -sd' ' | sed 's/ \(n[0-9]\)/, \1/g') ($cpus CPUs each)"
}

write_wrappers() {
    local dir=$1 tool real
    install -d -m 0755 "$dir"
    for tool in sbatch srun salloc squeue scontrol scancel sinfo sacct; do
        real=$(command -v "$tool") || continue
        cat >"$dir/$tool" <<EOF
#!/bin/bash
# $tool of the two-node Slurm (cluster/ci/start_two_node_slurm.sh): run in the ctl namespace,
# or directly when already inside one of its namespaces (a job's steps on n1 or n2).
export SLURM_CONF=$conf
case \$(ip netns identify \$\$ 2>/dev/null) in
    $prefix-*) exec $real "\$@" ;;
    *) exec nsenter --net=/run/netns/$ctl_ns $real "\$@" ;;
esac
EOF
        chmod 0755 "$dir/$tool"
    done
}

case ${1:-} in
    start) start_all ;;
    stop) need_root_and_tools; stop_all ;;
    status) nodes_idle ;;
    exec) shift; [[ $# -gt 0 ]] || die "exec needs a command"; exec nsenter --net="/run/netns/$ctl_ns" env SLURM_CONF="$conf" "$@" ;;
    wrappers) [[ -n ${2:-} ]] || die "wrappers needs a folder"; write_wrappers "$2" ;;
    *) echo "usage: $0 start|stop|status|exec CMD [ARG...]|wrappers DIR" >&2; exit 2 ;;
esac
