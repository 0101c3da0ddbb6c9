#!/usr/bin/env bash
# The device check for a lent GPU (one H100/H200: torch 2.11, no wandb, no network), in under 10 minutes.
# Run from anywhere; it works in the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on the GPU
#   bash benchmarks/gpu_check.sh OUT_DIR --smoke    # the same sequence, tiny, on the CPU (a test)
#
# Every configuration runs in a process of its own (benchmarks/gpu_check.py): Accelerate keeps one
# AcceleratorState per process, so a bf16 run after an fp32 one in the same process would fail.
#  1. images/s of the training step for tutorial_cnn, resnet_fast (width 16, the `resnet_fast` preset) and resnet_fast
#     width 64 (ResNet-9), fp32 and bf16, eager and torch.compile (CUDA events after a warm-up), with
#     GFLOP per training image, achieved TFLOP/s and peak memory;
#  2. the `fast` preset (airbench's recipe at width 32) trained on the CIFAR-10 JPEG archive
#     ($CIFAR10_JPEG_ARCHIVE, ../shared/data/ or shared/data/): test accuracy, training and evaluation seconds,
#     peak memory, training PFLOPs; then `airbench` (width 64, airbench94's network) if the budget allows.
# Eager rows and the fast run come first, the compile rows (tens of seconds of compiling each) last; each
# part has its own time limit and the whole script a budget, so a slow part costs its row, not the lease.
# OUT_DIR gets gpu_check.md (the table), gpu_check.json, part-*.json and gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [--smoke]}
SMOKE=0
[ "${2:-}" = --smoke ] && SMOKE=1
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_check.log"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)  # data and caches: outside OUT_DIR (it is copied back)
START=$SECONDS
if [ "$SMOKE" = 1 ]; then
  BUDGET=${GPU_CHECK_BUDGET:-900} PART_LIMIT=240 FAST_LIMIT=240 FLAG=(--smoke)
else
  # 570 s of parts + start-up stays under the device machine's 600 s per command.
  BUDGET=${GPU_CHECK_BUDGET:-570} PART_LIMIT=75 FAST_LIMIT=240 FLAG=()
fi

archive=""
for candidate in "${CIFAR10_JPEG_ARCHIVE:-}" ../shared/data/cifar10-jpeg.tar.xz shared/data/cifar10-jpeg.tar.xz; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then archive=$(realpath "$candidate"); break; fi
done

{
  echo "# gpu_check $(date -u +%FT%TZ) on $(hostname) $([ "$SMOKE" = 1 ] && echo '(smoke: tiny, CPU)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "archive: ${archive:-not found}"
} 2>&1 | tee "$LOG"
python - "$OUT_DIR/environment.json" "$SMOKE" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys, torch, accelerate
cuda = torch.cuda.is_available()
env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
       "cuda": torch.version.cuda, "accelerate": accelerate.__version__,
       "mode": "smoke: tiny runs on the CPU, figures mean nothing" if sys.argv[2] == "1" else "full"}
open(sys.argv[1], "w").write(json.dumps(env))
print(env)
PY

n=0
part() {  # part LIMIT NAME ARGS...: one configuration, one process, one row (an error row if it fails)
  local limit=$1 name=$2; shift 2
  n=$((n + 1))
  local json="$OUT_DIR/part-$(printf %02d $n).json" left=$((BUDGET - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    python -c 'import json,sys; print(json.dumps({"part": sys.argv[1], "error": "skipped: the time budget is spent"}))' \
      "${name%% *}" > "$json"
    echo "$name: skipped, budget spent" | tee -a "$LOG"
    return
  fi
  echo "== $name (limit ${limit}s)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=10 "$limit" python benchmarks/gpu_check.py "$@" "${FLAG[@]}" --json "$json" \
    >> "$LOG" 2>&1
  local rc=$?
  if [ "$rc" != 0 ] || [ ! -s "$json" ]; then
    local why="exit $rc"; [ "$rc" = 124 ] && why="timed out after ${limit} s"
    python -c 'import json,sys; a=sys.argv; print(json.dumps({"part": a[1], "model": a[2], "error": a[3]}))' \
      "${name%% *}" "$name" "$why: $(tail -n 1 "$LOG" | cut -c1-160)" > "$json"
  fi
  tail -n 1 "$json" | cut -c1-300 | tee -a "$LOG"
}

MODELS=("tutorial_cnn 16" "resnet_fast 16" "resnet_fast 64")
for precision in no bf16; do
  for m in "${MODELS[@]}"; do
    set -- $m
    part "$PART_LIMIT" "throughput $1 w$2 $precision eager" throughput --model "$1" --width "$2" --precision "$precision" \
      --data-root "$WORK/data"
  done
done
if [ -n "$archive" ]; then
  part "$FAST_LIMIT" "fast" fast --archive "$archive" --cache-dir "$WORK/cache"
  part "$FAST_LIMIT" "airbench" fast --preset airbench --archive "$archive" --cache-dir "$WORK/cache"
else
  n=$((n + 1))
  echo '{"part": "fast", "error": "no CIFAR-10 JPEG archive: set CIFAR10_JPEG_ARCHIVE"}' > "$OUT_DIR/part-$(printf %02d $n).json"
fi
for precision in no bf16; do
  for m in "${MODELS[@]}"; do
    set -- $m
    part "$PART_LIMIT" "throughput $1 w$2 $precision compile" throughput --model "$1" --width "$2" \
      --precision "$precision" --compile --data-root "$WORK/data"
  done
done
python benchmarks/gpu_check.py report "$OUT_DIR" 2>&1 | tee -a "$LOG"
rm -rf "$WORK"
echo "gpu_check: $((SECONDS - START)) s; table in $OUT_DIR/gpu_check.md" >> "$LOG"
# Every row has its number, else non-zero (the smoke test's check).
python - "$OUT_DIR/gpu_check.json" <<'PY'
import json, sys
parts = json.load(open(sys.argv[1]))["parts"]
sys.exit(1 if any("error" in p for p in parts) else 0)
PY
