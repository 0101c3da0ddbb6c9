#!/usr/bin/env bash
# One short GPU check for a lent GPU (an H100 on the device machine: torch 2.11, no wandb, no network).
# Run from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: $OUT, else ./gpu_check_out
#   GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # CPU smoke test of this script (tiny data, 2 short runs)
#
# On synthetic CIFAR-shaped data (50,000 training files written in CIFAR-10's format, 80% of them
# the training split), for seed_cnn (preset seed_fast) and resnet_fast (preset fast, its width and
# width 64 = ResNet-9), with bf16 off/on and torch.compile off/on, it reports images/s of the
# timed training loop (cifar-dist's own per-epoch figure, epoch 1 dropped as warm-up), the seconds
# one 50,000-image epoch takes at that rate, and peak GPU memory; then the wall time of the `fast`
# preset's full epoch count (training + per-epoch validation + test); then the tutorial-loop
# comparison of benchmarks/throughput.py for seed_cnn. Everything lands in OUT_DIR:
# gpu_check.json, gpu_check.md (the table), throughput.json and the log. Each part has its own
# time limit, so one slow compile cannot eat the whole lease; a part that fails or times out is
# reported as such and the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-./gpu_check_out}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled PYTHONUNBUFFERED=1
LOG="$OUT_DIR/gpu_check.log"
{
  echo "# gpu_check $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, torchvision, accelerate; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$LOG"

# Time limits (s): one run, all runs together, the tutorial comparison. 420 + 120 stays under the
# device machine's 600 s per command; the synthetic data goes outside OUT_DIR (it would be copied back).
PART_LIMIT=150 DRIVER_LIMIT=420 TUTORIAL_LIMIT=120
DATA_ROOT="${GPU_CHECK_DATA:-/tmp/gpu_check_data}"

timeout --signal=INT "$DRIVER_LIMIT" python - "$OUT_DIR" "$PART_LIMIT" "$DATA_ROOT" <<'PY' 2>&1 | tee -a "$LOG"
import contextlib, io, json, os, shutil, signal, sys, tempfile, time, traceback
from pathlib import Path

import torch

from cifar_dist.config import resolve
from cifar_dist.data import _ensure_synthetic
from cifar_dist.trainer import train

out_dir, part_limit, data_root = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
tiny = os.environ.get("GPU_CHECK_TINY") == "1"
cuda = torch.cuda.is_available()
if not cuda and not tiny:
    sys.exit("no CUDA GPU visible; for a CPU smoke test of this script set GPU_CHECK_TINY=1")
train_size = 600 if tiny else 50_000
common = ["--data.name=synthetic", f"--data.root={data_root}", f"--data.synthetic_train_size={train_size}",
          "--data.synthetic_test_size=" + ("100" if tiny else "1000"), "--tracking.backend=none", "--run.progress=false",
          "--eval.per_device_batch_size=1000"]
t = time.perf_counter()
_ensure_synthetic(resolve("seed", None, common))
print(f"synthetic data: {train_size} training files written in {time.perf_counter() - t:.1f} s", flush=True)

MODELS = [("seed_cnn", "seed_fast", []), ("resnet_fast", "fast", []), ("resnet_fast", "fast", ["--model.width=64"])]
# compile only with bf16: each compile costs tens of seconds of the lease, and bf16 is the GPU default to beat
COMBOS = [("no", False), ("bf16", False), ("bf16", True)]
if tiny:  # CPU: bf16 autocast works but is slow, compile costs a minute; one combo each is enough to check the code
    MODELS, COMBOS = MODELS[:2], [("no", False)]


class PartTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise PartTimeout()


signal.signal(signal.SIGALRM, _alarm)


def run(preset, overrides, epochs):
    """One in-process training run; returns (metrics rows, wall seconds, peak GPU bytes, error)."""
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-run-"))
    cfg = resolve(preset, None, [*common, f"--train.epochs={epochs}", f"--run.dir={run_dir / 'run'}", *overrides])
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()
    signal.alarm(part_limit)
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg)
        error = None
    except PartTimeout:
        error = f"timed out after {part_limit} s"
    except BaseException as e:  # noqa: BLE001 - a failed part is reported, the others still run
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        traceback.print_exc()
    finally:
        signal.alarm(0)
    wall = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    metrics = run_dir / "run" / "metrics.jsonl"
    rows = [json.loads(l) for l in metrics.read_text().splitlines()] if metrics.exists() else []
    shutil.rmtree(run_dir, ignore_errors=True)
    return rows, wall, peak, error, cfg


results = []
for model, preset, extra in MODELS:
    for precision, compile_ in COMBOS:
        overrides = [f"--model.name={model}", f"--train.mixed_precision={precision}", f"--train.compile={str(compile_).lower()}", *extra]
        rows, wall, peak, error, cfg = run(preset, overrides, epochs=2)  # epoch 1: warm-up (and compile)
        ips = rows[1]["images_per_sec"] if len(rows) > 1 else None
        entry = {"model": model, "width": cfg.model.width if model == "resnet_fast" else None, "preset": preset,
                 "batch": cfg.train.per_device_batch_size, "mixed_precision": precision, "compile": compile_,
                 "images_per_sec": ips, "seconds_per_50k_epoch": 50_000 / ips if ips else None,
                 "epoch1_seconds": rows[0]["epoch_seconds"] if rows else None, "run_wall_s": wall,
                 "peak_mem_gib": peak / 2**30, "error": error}
        results.append(entry)
        print(json.dumps(entry), flush=True)

# The fast preset's full epoch count, as a user would run it (defaults of the preset, bf16 on a GPU).
full = []
for extra in ([], ["--model.width=64"])[: 1 if tiny else 2]:
    overrides = (["--train.mixed_precision=bf16"] if cuda else []) + extra + (["--train.epochs=2"] if tiny else [])
    cfg = resolve("fast", None, [*common, *overrides])
    rows, wall, peak, error, cfg = run("fast", overrides, epochs=cfg.train.epochs)
    entry = {"preset": "fast", "width": cfg.model.width, "epochs": cfg.train.epochs, "mixed_precision": cfg.train.mixed_precision,
             "train_seconds": sum(r["epoch_seconds"] for r in rows), "wall_seconds": wall,
             "val_accuracy": rows[-1].get("val_accuracy") if rows else None, "peak_mem_gib": peak / 2**30, "error": error}
    full.append(entry)
    print(json.dumps(entry), flush=True)

device = torch.cuda.get_device_name() if cuda else "cpu"
(out_dir / "gpu_check.json").write_text(json.dumps({"device": device, "torch": torch.__version__, "train_size": train_size,
                                                     "runs": results, "fast_full": full}, indent=2))
fmt = lambda v, f: "-" if v is None else format(v, f)
lines = [f"device: {device}, torch {torch.__version__}; synthetic CIFAR-shaped data, {int(train_size * 0.8)} training images",
         "", "| model | width | batch | precision | compile | images/s | s per 50k epoch | peak GiB | note |",
         "|---|---|---|---|---|---|---|---|---|"]
for e in results:
    lines.append(f"| {e['model']} | {e['width'] or '-'} | {e['batch']} | {e['mixed_precision']} | {e['compile']} | "
                 f"{fmt(e['images_per_sec'], '.0f')} | {fmt(e['seconds_per_50k_epoch'], '.2f')} | {e['peak_mem_gib']:.2f} | {e['error'] or ''} |")
lines += ["", "| preset | width | epochs | precision | training s | wall s (incl. eval, data) | val acc (synthetic) | note |",
          "|---|---|---|---|---|---|---|---|"]
for e in full:
    lines.append(f"| fast | {e['width']} | {e['epochs']} | {e['mixed_precision']} | {e['train_seconds']:.1f} | {e['wall_seconds']:.1f} | "
                 f"{fmt(e['val_accuracy'], '.4f')} | {e['error'] or ''} |")
(out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
status=${PIPESTATUS[0]}

# The tutorial's loop against cifar-dist's on this device (seed_cnn); short, as the lease is.
if [ "${GPU_CHECK_TINY:-0}" = 1 ]; then
  TP_ARGS=(--rounds 1 --tutorial-images 160 --train-size 600 --epochs 2)
else
  TP_ARGS=(--rounds 3 --tutorial-images 4000 --train-size 50000 --epochs 2)
fi
timeout --signal=INT "$TUTORIAL_LIMIT" python benchmarks/throughput.py "${TP_ARGS[@]}" --data-root "$DATA_ROOT" \
  --json "$OUT_DIR/throughput.json" 2>&1 | tee -a "$LOG"
tp_status=${PIPESTATUS[0]}
echo "gpu_check: table in $OUT_DIR/gpu_check.md (driver exit $status, throughput exit $tp_status)" | tee -a "$LOG"
[ "$status" = 0 ] && [ "$tp_status" = 0 ]
