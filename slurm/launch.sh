#!/usr/bin/env bash
# One launcher per node: turn SLURM's (or your own) variables into `accelerate launch` arguments.
# Every value is read HERE, inside the task on each node, never in the batch shell, so each
# node gets its own machine rank (accelerate#1239, #3206).
#
#   srun --ntasks-per-node=1 bash slurm/launch.sh train.py --preset fast       # from an sbatch template
#   NUM_MACHINES=2 MACHINE_RANK=1 MAIN_PROCESS_IP=10.0.0.1 bash slurm/launch.sh train.py   # by hand
#
# Knobs (environment):
#   PROCESSES_PER_NODE  processes on this node (default: SLURM_GPUS_ON_NODE, else the GPUs torch sees, none:
#                       an error; 1 with USE_CPU=1)
#   USE_CPU=1           CPU-only DDP over gloo (used by slurm/cpu.sbatch and the tests)
#   NUM_MACHINES        default $SLURM_NNODES, else 1
#   MACHINE_RANK        default $SLURM_NODEID, else $SLURM_PROCID, else 0
#   MAIN_PROCESS_IP     default: first host of $SLURM_JOB_NODELIST (scontrol show hostnames)
#   MAIN_PROCESS_PORT   default: 20000 + SLURM_JOB_ID % 20000 (jobs sharing a head node get different ports)
#   NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME: the network interface to use (e.g. ib0, eth0), exported as is
#   RDZV_BACKEND        static (default: fixed machine ranks, every node dials the head) or c10d
#                       (slurm/multinode.sbatch's choice; several machines only)
#   RDZV_TIMEOUT        seconds a node waits to reach the head / for all nodes at start (default 600,
#                       torch's); an unreachable head fails within about twice this (one retry)
set -euo pipefail
# First thing: USR1 asks the TRAINING processes to save at the next step and stop (cifar_dist/distributed/preemption.py).
# The launchers must survive it: USR1 would kill `accelerate launch` and torchrun's agent (default
# action), orphaning the workers. An ignored signal stays ignored across exec and in the launchers'
# children until the training installs its own handler.
trap '' USR1
script=${1:?usage: launch.sh SCRIPT.py [ARGS...]}; shift

num_machines=${NUM_MACHINES:-${SLURM_NNODES:-1}}
machine_rank=${MACHINE_RANK:-${SLURM_NODEID:-${SLURM_PROCID:-0}}}
if [ -n "${MAIN_PROCESS_IP:-}" ]; then
  head=$MAIN_PROCESS_IP
elif [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
else
  head=127.0.0.1
fi
port=${MAIN_PROCESS_PORT:-$((20000 + ${SLURM_JOB_ID:-9500} % 20000))}
if [ -n "${PROCESSES_PER_NODE:-}" ]; then
  per_node=$PROCESSES_PER_NODE
elif [ "${USE_CPU:-0}" = 1 ]; then
  per_node=1
elif [ -n "${SLURM_GPUS_ON_NODE:-}" ] && [ "${SLURM_GPUS_ON_NODE}" -gt 0 ] 2>/dev/null; then
  # One process per GPU SLURM granted; if torch cannot see them, the training stops at once in one line
  # saying what it sees (cifar_dist/distributed/devices.py), instead of this script guessing one CPU process.
  per_node=$SLURM_GPUS_ON_NODE
else
  per_node=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
  if [ "$per_node" -lt 1 ]; then
    echo "error: launch.sh: no GPU granted by SLURM (SLURM_GPUS_ON_NODE unset) and torch sees none on" \
         "$(hostname -s); ask for GPUs (--gpus-per-node), or train on the CPU on purpose with USE_CPU=1" >&2
    exit 2
  fi
fi
world=$((per_node * num_machines))
# c10d (node ranks assigned at rendezvous, tolerant of start order) is for several machines; one
# machine always uses static (torchrun's c10d there would need an endpoint accelerate does not pass).
rdzv=${RDZV_BACKEND:-static}
[ "$num_machines" -gt 1 ] || rdzv=static

args=(--num_machines "$num_machines" --machine_rank "$machine_rank" --num_processes "$world"
      --main_process_ip "$head" --main_process_port "$port" --mixed_precision "${MIXED_PRECISION:-no}"
      --dynamo_backend no)
if [ "$world" -gt 1 ]; then
  args+=(--multi_gpu --rdzv_backend "$rdzv")
  if [ "$num_machines" -gt 1 ]; then
    args+=(--rdzv_conf "timeout=${RDZV_TIMEOUT:-600}")
    # static: every node dials MASTER_ADDR:PORT with its own --machine_rank (accelerate's --same_network).
    # c10d: accelerate passes HEAD:PORT as the rendezvous endpoint only WITHOUT --same_network; with
    # it torchrun's endpoint stays empty and each node meets only itself on localhost.
    [ "$rdzv" = static ] && args+=(--same_network)
  fi
fi
if [ "${USE_CPU:-0}" = 1 ]; then
  export ACCELERATE_USE_CPU=1
  # accelerate refuses --cpu next to --multi_gpu ("only one of"); with several processes the
  # exported ACCELERATE_USE_CPU=1 is what makes the MULTI_GPU workers one gloo job on the CPU.
  [ "$world" -gt 1 ] || args+=(--cpu)
fi
# One process under SLURM: `accelerate launch` runs it as a plain child and dies on SIGTERM at once
# (measured: "task 0: Terminated" while the training was still saving); slurmstepd then ends the
# step and kills what is left. SLURM sends SIGTERM to every process of the step anyway, so the
# launcher can ignore it and wait for the training to save and exit. (Several processes: torchrun's
# agent handles SIGTERM itself, passing it on and waiting for its workers.)
if [ "$world" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then trap '' TERM; fi
echo "launch.sh: host $(hostname -s) machine_rank=$machine_rank/$num_machines processes=$world head=$head:$port" >&2
exec accelerate launch "${args[@]}" "$script" "$@"
