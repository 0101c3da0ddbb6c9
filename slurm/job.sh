# The body every sbatch template shares (sourced by slurm/*.sbatch, not run on its own):
# start one launcher per node with srun, pass the warning signal on, requeue after a clean stop.
#
# How a preemption-safe run goes (the templates ask for `--signal=B:USR1@<seconds>`):
#   1. Before the time limit SLURM sends USR1 to this batch shell only. The shell's trap fires
#      because the shell is waiting (`srun ... & wait`), never while a foreground command runs.
#   2. The trap passes USR1 on to every process of the job's steps on every node
#      (`scancel --signal=USR1 $SLURM_JOB_ID`; without --batch/--full it skips this shell).
#      slurm/launch.sh makes the launchers (accelerate launch, torchrun) ignore USR1, so only the
#      training processes act on it: at the next step boundary all ranks agree to stop, save the
#      full state to run.dir/last and exit 0 (cifar_dist/distributed/preemption.py).
#   3. When the step has ended cleanly and the run is not finished (no run.dir/test_metrics.json),
#      this shell runs `scontrol requeue $SLURM_JOB_ID`: the job goes back to the queue with the
#      same id, so the same run.dir, and its next start passes --train.resume=auto.
#   SIGTERM (scancel, time limit, node drain) also reaches every process: the training saves and
#   exits non-zero; nothing is requeued (SLURM requeues by itself when it preempts with REQUEUE).
#
# run.dir defaults to runs/<job name>-<job id> in the submit folder; a --run.dir=DIR argument replaces it. The first start
# passes --train.resume=false, so a run.dir that already holds a run stops the job with a clear
# error instead of being continued by accident; restarts (SLURM_RESTART_COUNT > 0) pass auto.

cifar_job() {
  local repo=${CIFAR_DIST_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  if [ ! -f "$repo/train.py" ] || [ ! -f "$repo/slurm/launch.sh" ]; then
    echo "error: $repo is not a cifar-dist checkout (no train.py); submit from the checkout or set CIFAR_DIST_DIR" >&2
    exit 2
  fi
  local run_dir="$PWD/runs/${SLURM_JOB_NAME:-cifar}-${SLURM_JOB_ID:?not inside a SLURM job}" prev=""
  local a
  for a in "$@"; do  # the user's --run.dir wins (the shell needs it to tell a finished run from a stopped one)
    case $a in --run.dir=*) run_dir=${a#--run.dir=} ;; esac
    [ "$prev" = --run.dir ] && run_dir=$a
    prev=$a
  done
  local resume=false
  [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && resume=auto

  _cifar_warned=0 _cifar_terminated=0 _cifar_trapped=0 _cifar_resender=""
  trap '_cifar_signal USR1' USR1
  trap '_cifar_signal TERM' TERM
  echo "[job $SLURM_JOB_ID] start $(date -Is) restart ${SLURM_RESTART_COUNT:-0} on $SLURM_JOB_NODELIST; run.dir $run_dir, resume=$resume"
  # cpus-per-task is passed on explicitly: since 22.05 srun no longer inherits it from sbatch.
  srun --ntasks-per-node=1 --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK} \
    bash "$repo/slurm/launch.sh" "$repo/train.py" --run.dir="$run_dir" --train.resume=$resume --run.progress=false \
    ${TRAIN_DEVICE:+--train.device=$TRAIN_DEVICE} "$@" &
  local step=$! rc
  while :; do  # `wait` returns early (status > 128) each time a trap runs; wait again until srun ends
    _cifar_trapped=0
    wait "$step"
    rc=$?
    if [ "$_cifar_trapped" = 1 ] && [ "$rc" -gt 128 ]; then continue; fi
    break
  done
  [ -n "$_cifar_resender" ] && kill "$_cifar_resender" 2>/dev/null
  echo "[job $SLURM_JOB_ID] training step ended with status $rc $(date -Is)"

  if [ "$_cifar_warned" = 1 ] && [ "$_cifar_terminated" = 0 ] && [ "$rc" = 0 ] && [ ! -e "$run_dir/test_metrics.json" ]; then
    echo "[job $SLURM_JOB_ID] state saved in $run_dir/last; requeueing (it resumes there)"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
      echo "[job $SLURM_JOB_ID] requeue refused (--no-requeue or JobRequeue=0?); continue with:" \
           "sbatch <template> --run.dir=$run_dir --resume ..." >&2
      exit 1
    fi
    exit 0
  fi
  if [ "$_cifar_terminated" = 1 ] && [ "$rc" = 0 ] && [ ! -e "$run_dir/test_metrics.json" ]; then
    rc=143  # stopped by SIGTERM before the end: a failure, even though the state is saved
  fi
  exit "$rc"
}

_cifar_signal() {
  _cifar_trapped=1
  case $1 in
    USR1)
      _cifar_warned=1
      echo "[job $SLURM_JOB_ID] USR1 (time limit near): asking the training to save and stop $(date -Is)"
      scancel --signal=USR1 "$SLURM_JOB_ID" || echo "[job $SLURM_JOB_ID] could not pass USR1 on" >&2
      # Again every 30 s until the step ends: a training process still starting up (before its
      # handler exists, USR1 is ignored) would otherwise miss it; a second USR1 changes nothing.
      if [ -z "$_cifar_resender" ]; then
        (while sleep 30; do scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null; done) &
        _cifar_resender=$!
      fi
      ;;
    TERM)
      _cifar_terminated=1
      echo "[job $SLURM_JOB_ID] SIGTERM: the training saves its state and exits $(date -Is)"
      scancel --signal=TERM "$SLURM_JOB_ID" 2>/dev/null || true  # in case only this shell got it
      ;;
  esac
}
