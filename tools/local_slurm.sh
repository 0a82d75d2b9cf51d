#!/usr/bin/env bash
# A real two-node Slurm cluster on this one host, for tests and demos: munge, MariaDB + slurmdbd (accounting)
# and slurmctld on the host, and two slurmd daemons (nodes n1, n2), each in its own network namespace
# (nca-n1, nca-n2) and UTS namespace (host name n1, n2) with its own address on a private bridge, so jobs on
# n1 and n2 reach each other over a network as on a real cluster, never over a shared loopback.
# Partition-priority preemption (PreemptMode=REQUEUE).
#
#   tools/local_slurm.sh up       install the packages if missing (apt), create the network, write the
#                                 configuration from this host (short host name, CPUs, memory), start the
#                                 daemons, wait until both nodes are idle
#   tools/local_slurm.sh down     stop exactly the daemons `up` started (by the PID files it recorded), remove
#                                 the network, restore the files it replaced, remove the /etc/hosts lines it added
#   tools/local_slurm.sh status   exit 0 and print sinfo when the cluster is up, exit 3 when it is not
#
# Network ($NCA_SLURM_NET, default 10.213.7; a /24 nothing else on the host uses):
#
#   host (root namespace)   bridge ncabr0  NET.1    slurmctld, slurmdbd, MariaDB (127.0.0.1), munged
#     |-- veth nca-n1  <->  netns nca-n1, eth0 NET.11, host name n1: slurmd -N n1 and its job steps
#     `-- veth nca-n2  <->  netns nca-n2, eth0 NET.12, host name n2: slurmd -N n2 and its job steps
#
# /etc/hosts gets "NET.11 n1" and "NET.12 n2" (job steps resolve the master node by name). `up` and `down` are
# idempotent: `up` reuses what a previous `up` left, `down` removes the namespaces, veths and bridge even
# after a failed `up`.
#
# Needs root, no systemd and no cgroups (proctrack/linuxproc, task/none). Partitions: `debug` (default, low
# priority) and `high` (PriorityTier 10: its jobs preempt and requeue debug jobs). AuthInfo=cred_expire=10
# makes a requeued job restart in ~20 s instead of ~120 s. State lives in $NCA_SLURM_STATE (default
# /var/lib/nca-scale-slurm), fresh on every `up`.
set -euo pipefail

STATE=${NCA_SLURM_STATE:-/var/lib/nca-scale-slurm}
ETC=/etc/slurm
NET=${NCA_SLURM_NET:-10.213.7}
BRIDGE=ncabr0
HOSTS_TAG="# nca-scale local_slurm"
NODES=(n1 n2)

log() { echo "local_slurm: $*" >&2; }
need_root() { [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=()
    for b in slurmctld slurmd sbatch munged slurmdbd mariadbd ip unshare; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Slurm, munge, slurmdbd, MariaDB, iproute2 (missing: ${missing[*]})"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server iproute2 util-linux >/dev/null
}

node_addr() { echo "$NET.1$(( $1 + 1 ))"; }  # node index 0, 1 -> NET.11, NET.12

net_up() {  # the bridge and one namespace per node; each step is skipped when already done
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local i ns
    for i in "${!NODES[@]}"; do
        ns="nca-${NODES[$i]}"
        [ -e "/run/netns/$ns" ] || ip netns add "$ns"
        ip link show "$ns" >/dev/null 2>&1 || ip link add "$ns" type veth peer name eth0 netns "$ns"
        ip link set "$ns" master "$BRIDGE" up
        ip -n "$ns" addr replace "$(node_addr "$i")/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route replace default via "$NET.1"
    done
}

net_down() {  # deleting a namespace deletes the veth pair in it
    local n
    for n in "${NODES[@]}"; do
        if [ -e "/run/netns/nca-$n" ]; then ip netns delete "nca-$n"; fi
        ip link delete "nca-$n" 2>/dev/null || true  # normally gone with its namespace (asynchronously)
    done
    ip link delete "$BRIDGE" 2>/dev/null || true
}

hosts_remove() {
    grep -v "$HOSTS_TAG\$" /etc/hosts > "$STATE/hosts.tmp" || true
    cat "$STATE/hosts.tmp" > /etc/hosts
    rm -f "$STATE/hosts.tmp"
}

write_configs() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 2 * 0.8)}' /proc/meminfo)  # each simulated node: 40% of RAM
    mkdir -p "$ETC" "$STATE/backup"
    for f in slurm.conf slurmdbd.conf; do
        if [ -f "$ETC/$f" ] && [ ! -f "$STATE/backup/$f" ]; then cp -p "$ETC/$f" "$STATE/backup/$f"; fi
    done
    cat > "$ETC/slurm.conf" <<EOF
# Written by nca_scale tools/local_slurm.sh on $(date -u +%FT%TZ) for host $host; \`down\` restores the previous file.
ClusterName=local
SlurmctldHost=$host($NET.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=defer_batch
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
KillWait=120
MinJobAge=300
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName=n1 NodeHostname=n1 NodeAddr=$(node_addr 0) CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
NodeName=n2 NodeHostname=n2 NodeAddr=$(node_addr 1) CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=n[1-2] Default=NO MaxTime=INFINITE State=UP PriorityTier=10
EOF
    cat > "$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmpw
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    hosts_remove  # a line from an earlier `up` (or an older version of this script) would shadow ours
    local i
    for i in "${!NODES[@]}"; do echo "$(node_addr "$i") ${NODES[$i]}  $HOSTS_TAG" >> /etc/hosts; done
}

wait_for() {  # wait_for SECONDS CMD...: poll until CMD succeeds
    local n=$(( $1 * 4 )); shift
    for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
    return 1
}

nodes_idle() { [ "$(sinfo -h -N -t idle -p debug -o %N 2>/dev/null | sort -u | wc -l)" = 2 ]; }

up() {
    need_root
    if alive "$STATE/slurmctld.pid"; then log "already up"; sinfo; return 0; fi
    install_packages
    rm -rf "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log" "$STATE"/*.pid "$STATE/started"
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd" "$STATE/log" /run/munge /run/mysqld
    : > "$STATE/started"   # PID files of the daemons this `up` started, one per line
    net_up
    write_configs
    chown munge:munge /run/munge; chown mysql:mysql /run/mysqld
    if alive /run/munge/munged.pid; then log "munged already running; using it"
    else runuser -u munge -- /usr/sbin/munged; echo /run/munge/munged.pid >> "$STATE/started"; fi
    if mariadb -e "select 1" >/dev/null 2>&1; then log "MariaDB already running; using it"
    else
        (runuser -u mysql -- /usr/sbin/mariadbd --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
            --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 >"$STATE/log/mariadb.log" 2>&1 &)
        wait_for 30 mariadb -e "select 1" || { log "MariaDB did not start (see $STATE/log/mariadb.log)"; exit 1; }
        echo /run/mysqld/mysqld.pid >> "$STATE/started"
    fi
    # A fresh StateSaveLocation numbers jobs from 1 again, so accounting from an earlier `up` on this machine
    # would answer sacct for our new job ids with old jobs' states: start the accounting database empty too.
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    slurmdbd; echo "$STATE/slurmdbd.pid" >> "$STATE/started"
    wait_for 30 sacctmgr -n list cluster || { log "slurmdbd did not answer (see $STATE/log/slurmdbd.log)"; exit 1; }
    sacctmgr -i add cluster local >/dev/null 2>&1 || true
    slurmctld; echo "$STATE/slurmctld.pid" >> "$STATE/started"
    local n
    for n in "${NODES[@]}"; do  # slurmd daemonizes inside the node's namespaces; its job steps inherit them
        # nsenter, not `ip netns exec`: that remounts /sys without /sys/fs/cgroup, which slurmd needs
        mkdir -p "$STATE/slurmd/$n"
        nsenter --net="/run/netns/nca-$n" unshare --uts sh -c "hostname $n && exec slurmd -N $n" \
            || { log "slurmd $n did not start (see $STATE/log/slurmd-$n.log)"; exit 1; }
        echo "$STATE/slurmd-$n.pid" >> "$STATE/started"
    done
    if ! wait_for 60 nodes_idle; then
        log "nodes did not become idle (see $STATE/log/)"; sinfo || true; exit 1
    fi
    sinfo
}

stop_pid() {  # stop_pid PIDFILE: TERM, wait up to 30 s, then KILL
    local f=$1 p
    [ -f "$f" ] || return 0
    p=$(cat "$f")
    if kill "$p" 2>/dev/null; then
        for _ in $(seq 1 120); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$p" 2>/dev/null && { log "pid $p ($f) ignored TERM; killing"; kill -9 "$p" 2>/dev/null || true; }
    fi
    rm -f "$f"
}

down() {
    need_root
    mkdir -p "$STATE"
    if [ -f "$STATE/started" ]; then
        # jobs still running would be orphaned: cancel them first (only on this cluster, which `up` created)
        if alive "$STATE/slurmctld.pid"; then scancel --full -u root >/dev/null 2>&1 || true; fi
        tac "$STATE/started" | while read -r f; do stop_pid "$f"; done
        rm -f "$STATE/started"
        for f in slurm.conf slurmdbd.conf; do
            if [ -f "$STATE/backup/$f" ]; then mv "$STATE/backup/$f" "$ETC/$f"; else rm -f "$ETC/$f"; fi
        done
    else
        log "no daemons to stop (no $STATE/started)"
    fi
    net_down  # also after a failed `up`
    hosts_remove
    log "down"
}

status() {
    if alive "$STATE/slurmctld.pid" && sinfo >/dev/null 2>&1; then
        sinfo; return 0
    fi
    echo "local Slurm cluster is not up (tools/local_slurm.sh up)"; return 3
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
