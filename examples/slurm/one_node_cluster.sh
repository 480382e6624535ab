#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munged + slurmctld + slurmd), for trying a study on a
# laptop and for the real-SLURM tests (tests/test_slurm_cluster.py).  Needs root (slurmd starts
# the jobs as their users) and Debian's `slurm-wlm` and `munge` (apt-get install slurm-wlm munge).
#
#   sudo examples/slurm/one_node_cluster.sh start     # prints: export SLURM_CONF=...
#   export SLURM_CONF=/tmp/bus-nnunet-slurm/slurm.conf  # then sbatch/squeue/bus-nnunet study use it
#   sudo examples/slurm/one_node_cluster.sh stop      # stops the daemons and removes the folder
#   examples/slurm/one_node_cluster.sh status         # the daemons' pids and `sinfo`
#   examples/slurm/one_node_cluster.sh job-processes  # pids of the running jobs' processes
#
# Everything (slurm.conf, the munge key and socket, state, logs, the job-completion log) lives in
# one folder: $BUS_NNUNET_SLURM_DIR, default ${TMPDIR:-/tmp}/bus-nnunet-slurm.  The daemons use their
# own munge socket and free ports, so a system SLURM or munge on the machine is left alone; `stop`
# only signals the processes whose pid files are in that folder and whose command line names its
# slurm.conf or munge socket.  `start` is idempotent: it starts whichever daemon is not running
# (after a crash, or after `kill` of slurmd) and waits until the node is idle.
#
# The node has this machine's CPUs (nproc) and memory; one partition `cpu`.  Timers are short
# (node failure noticed within ~20 s, jobs killed 2 s after SIGTERM) so tests are fast.  Finished
# jobs' states are appended to $BUS_NNUNET_SLURM_DIR/jobcomp.log (JobCompType=jobcomp/filetxt) and
# squeue shows them for MinJobAge (300 s).
set -euo pipefail

DIR=${BUS_NNUNET_SLURM_DIR:-${TMPDIR:-/tmp}/bus-nnunet-slurm}
MARK="$DIR/.bus-nnunet-one-node-cluster"
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"
export SLURM_CONF="$CONF"
PATH="$PATH:/usr/sbin:/sbin"

say() { echo "one_node_cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# the pid in a pid file if that process is alive and is ours (its command line names our files)
our_pid() {
  local file=$1 pid
  [ -s "$file" ] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -e "$CONF" -e "$SOCKET" || return 1
  echo "$pid"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_config() {
  local node cpus mem_mb
  node=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$DIR"/{state,spool,log,munge}
  chmod 755 "$DIR" "$DIR/log"
  chmod 700 "$DIR/munge" "$DIR/state" "$DIR/spool"
  chmod 711 "$DIR/munge"  # clients (any user's sbatch) reach the socket inside
  cat >"$CONF" <<EOF
# written by $(basename "$0") for a one-node test cluster ($DIR)
ClusterName=busnnunet
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket=$SOCKET,cred_expire=15
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# no cgroups: works in containers and on any laptop
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# finished jobs' states (CANCELLED, TIMEOUT, NODE_FAIL, ...) without an accounting database
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2,batch_sched_delay=0
# jobs that wait for a job that can no longer end well are cancelled, not left pending forever
DependencyParameters=kill_invalid_depend
MpiDefault=none
# the node comes back by itself when its slurmd does (after a crash or a test's kill)
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=10
SlurmdTimeout=6
MessageTimeout=10
InactiveLimit=0
KillWait=2
OverTimeLimit=0
Waittime=0
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  chmod 644 "$CONF"
}

start() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null ||
    die "slurmctld, slurmd and munged are needed: apt-get install slurm-wlm munge"
  [ "$(id -u)" -eq 0 ] || die "run as root (sudo): slurmd starts each job as the user who submitted it"
  if [ -e "$DIR" ] && [ ! -e "$MARK" ]; then
    die "$DIR exists and was not made by this script; set BUS_NNUNET_SLURM_DIR to another folder"
  fi
  if [ ! -e "$MARK" ]; then
    mkdir -p "$DIR"
    touch "$MARK"
    write_config
    say "wrote $CONF (node $(hostname -s), $(nproc) CPUs)"
  fi
  [ -s "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null ||
    { dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none; }
  chmod 400 "$DIR/munge/munge.key"
  if ! our_pid "$DIR/munge/munged.pid" >/dev/null; then
    rm -f "$SOCKET" "$SOCKET.lock"
    # --force: the folder may lie under a world-writable /tmp, which munged otherwise refuses
    munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
      --seed-file="$DIR/munge/munged.seed" --log-file="$DIR/log/munged.log" 2>>"$DIR/log/munged.log" ||
      die "munged did not start; see $DIR/log/munged.log"
  fi
  if ! our_pid "$DIR/slurmctld.pid" >/dev/null; then
    slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
  fi
  if ! our_pid "$DIR/slurmd.pid" >/dev/null; then
    slurmd -f "$CONF" -N "$(hostname -s)" || die "slurmd did not start; see $DIR/log/slurmd.log"
  fi
  local state="" i
  for i in $(seq 1 120); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle|mix|alloc) break ;; esac  # a node back from a failure: ReturnToService=2
    sleep 0.5
  done
  case "$state" in
    idle|mix|alloc) ;;
    *) die "the node is '$state' after 60 s; see $DIR/log/slurmd.log and $DIR/log/slurmctld.log" ;;
  esac
  say "node $(hostname -s) is $state; partition cpu"
  echo "export SLURM_CONF=$CONF"
}

# the job steps of this cluster (slurmstepd lives on after slurmd) and every process under them
job_processes() {
  local pid steps=()
  for pid in $(pgrep -f "^slurmstepd" || true); do
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" && steps+=("$pid")
  done
  [ ${#steps[@]} -gt 0 ] || return 0
  ps -e -o pid=,ppid= | awk -v roots="${steps[*]}" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END { do { added = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; added = 1 } } while (added)
          for (p in keep) print p }'
}

stop() {
  [ -e "$MARK" ] || { say "no cluster of this script in $DIR"; return 0; }
  local file pid pids=() jobs
  if our_pid "$DIR/slurmctld.pid" >/dev/null; then  # end the jobs first, so their processes go too
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 20); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  for file in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if pid=$(our_pid "$file"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do [ -e "/proc/$pid" ] || break; sleep 0.25; done
    [ -e "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in $(job_processes); do kill -KILL "$pid" 2>/dev/null || true; done
  rm -rf "$DIR"
  say "stopped; removed $DIR"
}

status() {
  [ -e "$MARK" ] || { say "no cluster of this script in $DIR"; return 1; }
  local name file pid rc=0
  for name in munged slurmctld slurmd; do
    file="$DIR/$name.pid"; [ "$name" = munged ] && file="$DIR/munge/munged.pid"
    if pid=$(our_pid "$file"); then echo "$name: pid $pid"; else echo "$name: not running"; rc=1; fi
  done
  sinfo || rc=1
  echo "export SLURM_CONF=$CONF"
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  job-processes) job_processes ;;
  *) echo "usage: $0 start|stop|status|job-processes   (folder: \$BUS_NNUNET_SLURM_DIR, now $DIR)" >&2; exit 2 ;;
esac
