#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for trying the templates.
# Debian's slurm-wlm (22.05) + munge, as root, no systemd. All its state lives in one scratch folder.
#
#   sudo apt-get install slurm-wlm munge            # once
#   eval "$(slurm/dev_cluster.sh up)"               # starts munged (if none answers), slurmctld, slurmd; exports SLURM_CONF
#   sbatch --wait slurm/cpu.sbatch --data.name=synthetic --train.epochs=2
#   slurm/dev_cluster.sh down                       # cancels its jobs, stops what `up` started
#
# Knobs (environment): SLURM_DEV_DIR (scratch folder, default /tmp/cifar-dist-slurm),
# SLURM_DEV_PORT (slurmctld port, default 6817; slurmd uses the next one), SLURM_DEV_CPUS (default: the
# online CPUs; not `nproc`, which reports OMP_NUM_THREADS when it is set and made a 1-CPU node).
# `up` prints only the `export SLURM_CONF=...` line on stdout; progress goes to stderr.
set -euo pipefail
# The daemons and runuser live in /usr/sbin, which a non-login or `env -i` shell may not have on its PATH.
PATH="$PATH:/usr/sbin:/sbin"
cmd=${1:-}
dir=${SLURM_DEV_DIR:-/tmp/cifar-dist-slurm}
conf=$dir/slurm.conf
say() { echo "dev_cluster: $*" >&2; }
die() { echo "error: $*" >&2; exit 2; }

daemon_alive() {  # NAME: is the daemon whose pid file is in $dir running?
  local pid
  pid=$(cat "$dir/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

up() {
  [ "$(id -u)" = 0 ] || die "the dev cluster runs slurmd as root (SlurmdUser=root); run as root"
  for b in munged munge slurmctld slurmd sbatch scontrol; do
    command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || die "$b not found; apt-get install slurm-wlm munge"
  done
  mkdir -p "$dir/state" "$dir/spool"
  if daemon_alive slurmctld && daemon_alive slurmd; then
    say "already up in $dir"
    echo "export SLURM_CONF=$conf"
    return
  fi

  # munge: one per machine (its socket is /run/munge); reuse one that answers, else start ours.
  if ! munge_ok; then
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    touch "$dir/munged.started"  # `down` stops only a munged that `up` started
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || die "munged did not start (see /var/log/munge/munged.log)"
  fi

  local host cpus mem port gpus
  host=$(hostname -s)
  cpus=${SLURM_DEV_CPUS:-$(getconf _NPROCESSORS_ONLN)}
  mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
  port=${SLURM_DEV_PORT:-6817}
  gpus=${SLURM_DEV_GPUS:-8}
  # Counted GPUs: slurmd drops a GPU without File= and rejects a File= that is not a device, so each
  # "GPU" is a /dev/null clone (char 1,3) in the scratch folder; nothing opens them.
  local i
  for ((i = 0; i < gpus; i++)); do [ -c "$dir/fake-gpu$i" ] || mknod -m 666 "$dir/fake-gpu$i" c 1 3; done
  echo "Name=gpu File=$dir/fake-gpu[0-$((gpus - 1))]" > "$dir/gres.conf"  # read from slurm.conf's folder
  : > "$dir/plugstack.conf"  # empty: ignore /etc/slurm's plugin stack
  cat > "$conf" <<EOF
# Written by slurm/dev_cluster.sh: one node, root, no accounting (sacct does not work: use sbatch --wait / scontrol show job).
ClusterName=cifardev
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120); 10 keeps tests short.
AuthInfo=cred_expire=${SLURM_DEV_CRED_EXPIRE:-10}
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# The main scheduler looks at pending jobs every sched_interval s (default 60): a requeued job becomes
# eligible after cred_expire and would otherwise wait for that pass.
SchedulerParameters=sched_interval=2
# Finished jobs stay visible to scontrol for 5 minutes (the tests read Restarts= and ExitCode= there).
MinJobAge=300
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
PlugStackConfig=$dir/plugstack.conf
# GPUs are counted, not real (nothing enforced): so the GPU templates' GPU lines are accepted here
# (runs with --cpus-per-task=2); a job granted them launches one process per GPU, which stops with the no-GPU line.
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:$gpus State=UNKNOWN
# Preemption as clusters do it: a job in 'high' (PriorityTier=2) that needs the node requeues the jobs of
# 'low' (PreemptMode=REQUEUE: SIGTERM, then back to the queue with the same id). 'debug' is never preempted.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=low Nodes=$host MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=high Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  export SLURM_CONF=$conf
  # Without -D both daemonize and write their pid files into $dir.
  slurmctld -f "$conf" </dev/null >>"$dir/slurmctld.log" 2>&1
  slurmd -f "$conf" </dev/null >>"$dir/slurmd.log" 2>&1
  local state=""
  for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -n 1) || true
    case $state in
      idle|mixed|allocated) break ;;
      # a drain or down state saved by an earlier run (e.g. another slurm.conf) outlives restarts
      drain*|down*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  case $state in
    idle|mixed|allocated) say "up: node $host $state, $cpus CPUs, SLURM_CONF=$conf" ;;
    *) down >/dev/null 2>&1 || true
       die "node $host is '${state:-unknown}' after 30 s; see $dir/slurmctld.log and $dir/slurmd.log" ;;
  esac
  echo "export SLURM_CONF=$conf"
}

down() {
  [ -f "$conf" ] || { say "nothing to stop in $dir"; return; }
  export SLURM_CONF=$conf
  if daemon_alive slurmctld; then
    # Jobs first: `scontrol shutdown` stops the daemons but leaves running job steps behind.
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs || true
      for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
    fi
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  local name pid
  for name in slurmctld slurmd; do
    pid=$(cat "$dir/$name.pid" 2>/dev/null) || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then say "$name ($pid) still running; sending SIGTERM"; kill "$pid" || true; fi
  done
  if [ -f "$dir/munged.started" ]; then
    pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    rm -f "$dir/munged.started"
  fi
  say "down ($dir kept: logs and state)"
}

case $cmd in
  up) up ;;
  down) down ;;
  status) export SLURM_CONF=$conf; daemon_alive slurmctld && daemon_alive slurmd && sinfo && squeue ;;
  *) echo "usage: slurm/dev_cluster.sh up|down|status   (scratch folder: \$SLURM_DEV_DIR, default /tmp/cifar-dist-slurm)" >&2; exit 2 ;;
esac
