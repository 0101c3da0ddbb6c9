#!/usr/bin/env bash
# The device check for a lent GPU (one H100/H200; its python3 has torch 2.11, accelerate 1.15, no wandb, no
# network), in one call of about 7 minutes. Here, once: `bash benchmarks/prepare_device.sh` (copies the CIFAR-10
# archive into .device/, which git ignores); then on the device, with `.device` named in the call's carry:
#
#   bash benchmarks/gpu_check.sh OUT_DIR            # on the GPU
#   bash benchmarks/gpu_check.sh OUT_DIR --smoke    # the smoke pass alone, on the CPU (its test)
#
#  0. within seconds, one line and exit 2 if the archive, a package or (without --smoke) the GPU is missing;
#  1. a smoke pass: every configuration below for one step (the GPU run: 4 at a time), so a configuration that
#     cannot run costs one line now, not its time budget later;
#  2. the measurements, each configuration in a process of its own (Accelerate keeps one AcceleratorState per
#     process) under its own time limit, so one failure or timeout costs its row, not the others:
#     - images/s of cifar-dist's training step, tutorial_cnn / resnet_fast w16 / airbench w32 / airbench w64 ×
#       fp32/bf16, eager (CUDA events after a warm-up; GFLOP per image, TFLOP/s, peak memory);
#     - the `airbench` preset (airbench94's network and methods) and the `fast` preset trained through train() on
#       the archive, test accuracy after every epoch (untimed): seconds to 0.90 and 0.93, final accuracy;
#     - the toolkit's time per epoch against a bare PyTorch loop (benchmarks/overhead.py) and aten ops per step;
#     - the same throughput rows with torch.compile (Inductor; tens of seconds of compiling each, so last, while
#       the budget lasts);
#  3. the table (OUT_DIR/gpu_check.md, .json); its last two lines: airbench94's published result, and ours.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_check.sh OUT_DIR [--smoke]}
SMOKE=0
[ "${2:-}" = --smoke ] && SMOKE=1
mkdir -p "$OUT_DIR"
OUT_DIR=$(realpath "$OUT_DIR")
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET:-450}  # seconds for everything; the device's per-command limit is 600
if [ "$SMOKE" = 1 ]; then DEVICE=cpu PARALLEL=1 TINY_LIMIT=240; else DEVICE=cuda PARALLEL=4 TINY_LIMIT=120; fi

# -- 0. what must be there, checked in seconds -------------------------------------------------------------------
archive=${CIFAR10_JPEG_ARCHIVE:-.device/cifar10-jpeg.tar.xz}
if [ ! -s "$archive" ]; then
  echo "gpu_check: no CIFAR-10 archive at $archive: run 'bash benchmarks/prepare_device.sh' here and name .device in the call's carry" | tee -a "$LOG"
  exit 2
fi
archive=$(realpath "$archive")
if ! why=$($PY - "$DEVICE" 2>&1 <<'PY'
import importlib, sys
missing = []
for name in ("torch", "torchvision", "accelerate", "numpy", "rich", "PIL", "yaml"):
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - one line, whatever broke
        missing.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})")
if missing:
    sys.exit("missing packages: " + ", ".join(missing))
import cifar_dist.train.loop  # noqa: F401 - the package imports on this stack (without wandb)
import torch
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU visible to torch {torch.__version__} (CUDA {torch.version.cuda})")
PY
); then
  echo "gpu_check: $(echo "$why" | tail -n 1 | cut -c1-300)" | tee -a "$LOG"
  exit 2
fi

# Synthetic data, the archive's decoded cache and one JSON row per part: outside OUT_DIR, which gets four files
# (the device call brings back at most 8): gpu_check.md, gpu_check.json, gpu_check.log, environment.json.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
ROWS="$WORK/rows"
mkdir -p "$ROWS"
trap 'rm -rf "$WORK"' EXIT
{
  echo "# gpu_check $(date -u +%FT%TZ) on $(hostname) $([ "$SMOKE" = 1 ] && echo '(smoke pass only, on the CPU)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  echo "archive: $archive"
} 2>&1 | tee -a "$LOG"
$PY - "$OUT_DIR/environment.json" "$SMOKE" <<'PY' 2>&1 | tee -a "$LOG"
import json, platform, sys, torch, accelerate
cuda = torch.cuda.is_available() and sys.argv[2] != "1"
env = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
       "cuda": torch.version.cuda, "accelerate": accelerate.__version__, "python": platform.python_version(),
       "mode": "smoke: one step of each configuration on the CPU, figures mean nothing" if sys.argv[2] == "1"
       else "full"}
open(sys.argv[1], "w").write(json.dumps(env))
print(env)
PY

# -- the configurations ------------------------------------------------------------------------------------------
# "name|limit s|gpu_check.py or overhead.py arguments" (the measurement pass's order: eager, trained, overhead,
# compile with airbench w64 first)
MODELS=("airbench 64" "airbench 32" "resnet_fast 16" "tutorial_cnn 16")
CONFIGS=()
for precision in bf16 no; do
  for m in "${MODELS[@]}"; do
    set -- $m
    CONFIGS+=("throughput $1 w$2 $precision eager|60|benchmarks/gpu_check.py throughput --model $1 --width $2 --precision $precision --data-root $WORK/data-$1-$2-$precision")
  done
done
CONFIGS+=("train airbench|150|benchmarks/gpu_check.py train --preset airbench --archive $archive --cache-dir $WORK/cache")
CONFIGS+=("train fast|150|benchmarks/gpu_check.py train --preset fast --archive $archive --cache-dir $WORK/cache")
CONFIGS+=("overhead airbench w64|120|benchmarks/overhead.py --width 64 --train-size 50000")
for precision in bf16 no; do
  for m in "${MODELS[@]}"; do
    set -- $m
    CONFIGS+=("throughput $1 w$2 $precision compile|100|benchmarks/gpu_check.py throughput --model $1 --width $2 --precision $precision --compile --data-root $WORK/data-$1-$2-$precision")
  done
done

row() {  # row KIND NUMBER LIMIT NAME ARGS...: one configuration, one process, one JSON row (an error row if it fails)
  local kind=$1 num=$2 limit=$3 name=$4; shift 4
  local json="$ROWS/$kind-$(printf %02d "$num").json" plog="$WORK/$kind-$num.log"
  local extra=(--device "$DEVICE" --json "$json")
  [ "$kind" = smoke ] && extra+=(--tiny)
  timeout --signal=INT --kill-after=10 "$limit" $PY "$@" "${extra[@]}" > "$plog" 2>&1
  local rc=$?
  cat "$plog" >> "$LOG"
  if [ "$rc" != 0 ] || [ ! -s "$json" ]; then
    local why="exit $rc"; [ "$rc" = 124 ] && why="timed out after ${limit} s"
    $PY -c 'import json,sys; a=sys.argv; print(json.dumps({"part": a[1].split()[0], "config": a[1], "error": a[2]}))' \
      "$name" "$why: $(grep -v '^\s*$' "$plog" | tail -n 1 | cut -c1-200)" > "$json"
  fi
  echo "$kind $name: $(cut -c1-220 "$json")" | tee -a "$LOG"
}

config_row() {  # config_row KIND NUMBER LIMIT_CAP: row for CONFIGS[NUMBER-1]
  local kind=$1 num=$2 cap=$3 spec="${CONFIGS[$(($2 - 1))]}"
  local name=${spec%%|*} rest=${spec#*|}
  local limit=${rest%%|*} args=${rest#*|}
  [ "$cap" -lt "$limit" ] || [ "$kind" = smoke ] && limit=$cap  # a smoke step: its own limit, not the row's
  # shellcheck disable=SC2086 # the arguments are words without spaces
  row "$kind" "$num" "$limit" "$name" $args
}

# -- 1. smoke pass: every configuration, one step --------------------------------------------------------------
echo "== smoke pass: ${#CONFIGS[@]} configurations, one step each, $PARALLEL at a time" | tee -a "$LOG"
# the two trained presets share the archive's cache: they run one after the other, in one job
for i in $(seq 1 ${#CONFIGS[@]}); do
  case "${CONFIGS[$((i - 1))]}" in "train fast"*) continue ;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  case "${CONFIGS[$((i - 1))]}" in
    "train airbench"*) (config_row smoke "$i" "$TINY_LIMIT"; config_row smoke $((i + 1)) "$TINY_LIMIT") & ;;
    *) config_row smoke "$i" "$TINY_LIMIT" & ;;
  esac
done
wait
echo "smoke pass: $((SECONDS - START)) s" | tee -a "$LOG"

if [ "$SMOKE" = 1 ]; then
  $PY benchmarks/gpu_check.py report "$OUT_DIR" --rows-dir "$ROWS" --rows smoke 2>&1 | tee -a "$LOG"
  # Every configuration ran its step, else non-zero (the smoke test's check).
  $PY - "$OUT_DIR/gpu_check.json" <<'PY'
import json, sys
parts = json.load(open(sys.argv[1]))["parts"]
sys.exit(1 if any("error" in p for p in parts) else 0)
PY
  exit $?
fi

# -- 2. measurements, while the budget lasts -------------------------------------------------------------------
for i in $(seq 1 ${#CONFIGS[@]}); do
  spec="${CONFIGS[$((i - 1))]}"
  left=$((BUDGET - (SECONDS - START)))
  if grep -q '"error"' "$ROWS/smoke-$(printf %02d "$i").json" 2>/dev/null; then
    $PY -c 'import json,sys; d=json.load(open(sys.argv[1])); d["error"]="smoke pass failed: "+d["error"]; print(json.dumps(d))' \
      "$ROWS/smoke-$(printf %02d "$i").json" > "$ROWS/part-$(printf %02d "$i").json"
    echo "part ${spec%%|*}: skipped, its smoke step failed" | tee -a "$LOG"
  elif [ "$left" -lt 20 ]; then
    $PY -c 'import json,sys; print(json.dumps({"part": sys.argv[1].split()[0], "config": sys.argv[1], "error": "skipped: the time budget is spent"}))' \
      "${spec%%|*}" > "$ROWS/part-$(printf %02d "$i").json"
    echo "part ${spec%%|*}: skipped, budget spent" | tee -a "$LOG"
  else
    config_row part "$i" "$left"
  fi
done
$PY benchmarks/gpu_check.py report "$OUT_DIR" --rows-dir "$ROWS" 2>&1 | tee -a "$LOG"
echo "gpu_check: $((SECONDS - START)) s; table in $OUT_DIR/gpu_check.md" >> "$LOG"
# Every row has its number, else non-zero (the table is written either way).
$PY - "$OUT_DIR/gpu_check.json" <<'PY'
import json, sys
parts = json.load(open(sys.argv[1]))["parts"]
sys.exit(1 if any("error" in p for p in parts) else 0)
PY
