#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for the tests (tests/test_slurm.py) and by hand:
#   tests/slurm/cluster.sh start DIR [CPUS]   # munged, slurmctld, slurmd; config and state in DIR
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch, squeue, sinfo talk to it
#   tests/slurm/cluster.sh stop DIR           # stops the three daemons started in DIR
# Needs root and Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). `start` prints
# why and exits 2 when a piece is missing, exits 1 (after stopping what it started) when the
# cluster does not come up; the logs are in DIR/log/.
set -uo pipefail

usage() { echo "usage: $0 start|stop DIR [CPUS]" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
cpus=${3:-2}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop() {
  local pidfile pid
  if [[ -s $dir/run/slurmctld.pid ]]; then  # cancel what is left, so no job outlives the cluster
    export SLURM_CONF=$dir/slurm.conf
    scancel --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
  fi
  for pidfile in "$dir"/run/slurmd.pid "$dir"/run/slurmctld.pid "$dir"/run/munged.pid; do
    [[ -s $pidfile ]] || continue
    pid=$(<"$pidfile")
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

start() {
  [[ $(id -u) == 0 ]] || { echo "SLURM cannot start: needs root (slurmd runs jobs as their users)"; exit 2; }
  local tool
  for tool in munged slurmctld slurmd sbatch scontrol; do
    command -v "$tool" >/dev/null || {
      echo "SLURM cannot start: $tool not found (apt-get install slurm-wlm munge)"; exit 2; }
  done
  mkdir -p "$dir"/{run,log,state,spool}
  chmod 0755 "$dir" "$dir"/run
  # a key of this cluster's own, readable by root only (munged refuses anything looser)
  head -c 1024 /dev/urandom > "$dir/munge.key" && chmod 0400 "$dir/munge.key"
  local host ctld_port slurmd_port
  host=$(hostname -s)
  ctld_port=$(free_port)
  slurmd_port=$(free_port)
  cat > "$dir/slurm.conf" <<CONF
ClusterName=nebench-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/run/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$dir/slurm.conf
  munged --socket="$dir/run/munge.socket" --key-file="$dir/munge.key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/run/munged.seed" --force \
    || { echo "munged did not start (log: $dir/log/munged.log)"; stop; exit 1; }
  slurmctld -f "$SLURM_CONF" || { echo "slurmctld did not start (log: $dir/log/slurmctld.log)"; stop; exit 1; }
  slurmd -f "$SLURM_CONF" || { echo "slurmd did not start (log: $dir/log/slurmd.log)"; stop; exit 1; }
  for _ in $(seq 60); do  # the node registers within a few seconds
    if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
      echo "SLURM is up: $cpus CPUs on $host, SLURM_CONF=$SLURM_CONF"
      exit 0
    fi
    sleep 0.5
  done
  echo "the SLURM node did not become idle in 30 s: $(sinfo -N 2>&1 | tail -1) (logs in $dir/log)"
  stop
  exit 1
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
