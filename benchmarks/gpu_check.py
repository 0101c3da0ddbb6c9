"""One part of benchmarks/gpu_check.sh, in a process of its own (Accelerate keeps one AcceleratorState per
process: a second configuration in the same process would raise "AcceleratorState has already been
initialized"). Each part writes one JSON row; `report` turns the rows into the table.

    python benchmarks/gpu_check.py throughput --model resnet_fast --width 64 --precision bf16 --compile --json r.json
    python benchmarks/gpu_check.py fast --archive cifar10-jpeg.tar.xz --json f.json
    python benchmarks/gpu_check.py report OUT_DIR

`--smoke` makes every part tiny and runs it on the CPU (the test of this script); the real check wants CUDA
and says so in one line without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import preset_config, run_folder, train_config  # benchmarks/harness.py

from cifar_dist.config import resolve

PRESET_FOR = {"tutorial_cnn": "tutorial_fast", "resnet_fast": "resnet_fast"}
# Published (github.com/KellerJordan/cifar10-airbench README): airbench94, 94.01 % in 3.83 s on one A100, 0.36 PFLOP.
AIRBENCH = "airbench94 reaches 94.01% in 3.83 s on an A100 using 0.36 PFLOP (published)"


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak resident set (Linux KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "GPU allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"


def _common(args) -> list[str]:
    device = "cpu" if args.smoke else "cuda"  # never a silent CPU run on the GPU box
    return [f"--train.device={device}", "--tracking.backend=none", "--run.progress=false"]


def throughput(args) -> dict:
    """Images/s of cifar-dist's own training, through `train(cfg)` like every benchmark (its lr schedule and
    all), on synthetic data: two epochs of about `timed` steps; the first warms up (compilation included),
    the second is timed by the run's own epoch clock (which waits for the device's queued work)."""
    size = 200 if args.smoke else 10_000
    overrides = [
        *_common(args),
        "--data.name=synthetic",
        f"--data.root={args.data_root}",
        "--data.synthetic_test_size=10",
        f"--model.name={args.model}",
        f"--model.width={args.width}",
        f"--train.mixed_precision={args.precision}",
        f"--train.compile={str(args.compile).lower()}",
        "--train.epochs=2",
    ]
    if args.smoke:
        overrides.append("--train.per_device_batch_size=8")
        # Inductor compiles one configuration in ~110 s on 2 loaded cores (measured): too slow for a test.
        # The smoke run traces the model with TorchDynamo and runs the graph eagerly; the GPU run uses Inductor.
        if args.compile:
            import functools

            torch.compile = functools.partial(torch.compile, backend="eager")
    timed = 2 if args.smoke else 60
    with run_folder(prefix="gpu-check-") as run_dir:
        cfg = preset_config(PRESET_FOR[args.model], overrides, run_dir)
        batch = cfg.train.global_batch_size or cfg.train.per_device_batch_size  # one process: the whole batch
        size = max(size, math.ceil(timed * batch / max(1 - cfg.data.val_fraction, 0.1)))  # an epoch ≈ timed steps
        cfg = preset_config(PRESET_FOR[args.model], [*overrides, f"--data.synthetic_train_size={size}"], run_dir)
        run = train_config(cfg, quiet=True)
    warm, timed_row = run.rows[0], run.rows[-1]
    peak, peak_kind = peak_memory_gib(torch.device("cpu" if args.smoke else "cuda"))
    from cifar_dist.distributed import resolve_mixed_precision

    return {
        "part": "throughput",
        "model": args.model,
        "width": args.width if args.model == "resnet_fast" else None,
        "batch": batch,
        "mixed_precision": resolve_mixed_precision(cfg.train.mixed_precision, use_cpu=args.smoke),
        "compile": args.compile,
        "images_per_sec": timed_row["images_per_sec"],
        "timed_steps": timed_row["step"] - warm["step"],
        "clock": "the run's epoch clock",
        "warmup_seconds": warm["epoch_seconds"],
        "gflop_per_image": timed_row["train_flops_per_image"] / 1e9,
        "tflops_per_sec": timed_row["train_flops_per_image"] * timed_row["images_per_sec"] / 1e12,
        "peak_mem_gib": peak,
        "peak_mem_kind": peak_kind,
        "device": "cpu" if args.smoke else "cuda",
        "compiler": ("dynamo, eager backend (smoke)" if args.smoke else "inductor") if args.compile else None,
    }


def fast(args) -> dict:
    """A preset (--preset: `fast`, or `airbench` at width 64, airbench94's network) trained on the CIFAR-10
    JPEG archive as a user runs it (bf16 on a GPU): test accuracy
    of the best-validation weights, training seconds (the run's own per-epoch clock), the seconds of one test
    evaluation with the run's TTA, peak memory and training PFLOPs (FLOPs per image × images trained)."""
    from cifar_dist.distributed import resolve_mixed_precision

    overrides = [
        *_common(args),
        "--data.name=imagefolder",
        f"--data.root={args.archive}",
        f"--data.cache_dir={args.cache_dir}",
        *([f"--model.width={args.width}"] if args.width else []),
        f"--run.dir={tempfile.mkdtemp(prefix='gpu-check-fast-')}/run",
        *args.override,
    ]
    if args.smoke:
        overrides += ["--train.epochs=1", "--train.per_device_batch_size=8", "--eval.per_device_batch_size=16"]
    cfg = resolve(args.preset, None, overrides)
    device = torch.device("cpu" if args.smoke else "cuda")
    rows, evals = [], []

    def after_epoch(epoch, row, evaluate_split):
        rows.append(row)
        if epoch == cfg.train.epochs:  # the final weights, timed once: one evaluation of the test split
            t = time.perf_counter()
            evaluate_split("test")  # returns host floats: the device has finished
            evals.append(time.perf_counter() - t)
        return False

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run = train_config(cfg, after_epoch=after_epoch)  # benchmarks/harness.py: train(cfg) as a user runs it
    summary, wall = run.summary, run.seconds
    trained = sum(r["train_samples"] for r in rows)
    peak, peak_kind = peak_memory_gib(device)
    return {
        "part": "fast",
        "preset": args.preset,
        "width": cfg.model.width,
        "epochs": cfg.train.epochs,
        "batch": cfg.train.global_batch_size or cfg.train.per_device_batch_size,
        "mixed_precision": resolve_mixed_precision(cfg.train.mixed_precision, use_cpu=device.type != "cuda"),
        "test_accuracy": summary["accuracy"],
        "train_seconds": sum(r["epoch_seconds"] for r in rows),
        "eval_seconds": evals[-1] if evals else None,
        "wall_seconds": wall,
        "train_images": trained,
        "train_pflop": rows[-1]["train_pflops"],  # the run's own count (cifar_dist/models/flops.py)
        "peak_mem_gib": peak,
        "peak_mem_kind": peak_kind,
        "data": f"CIFAR-10 (JPEG q75 copy) {args.archive}" if not args.smoke else f"smoke archive {args.archive}",
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(args) -> int:
    """gpu_check.md and gpu_check.json from the parts' rows (a part that failed has an `error`); the last line
    printed is the published comparison."""
    out = Path(args.out)
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("part-*.json"))]
    env = json.loads((out / "environment.json").read_text()) if (out / "environment.json").exists() else {}
    lines = [
        f"device: {env.get('device', '?')}; torch {env.get('torch', '?')}; {env.get('mode', '')}",
        "",
        "| model | width | batch | precision | compile | images/s | GFLOP/image | TFLOP/s | peak GiB | clock | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        if p["part"] != "throughput":
            continue
        lines.append(
            f"| {p['model']} | {p.get('width') or '-'} | {_fmt(p.get('batch'), 'd')} | {p['mixed_precision']} | "
            f"{p['compile']} | {_fmt(p.get('images_per_sec'), '.0f')} | {_fmt(p.get('gflop_per_image'), '.3f')} | "
            f"{_fmt(p.get('tflops_per_sec'), '.2f')} | {_fmt(p.get('peak_mem_gib'), '.2f')} | {p.get('clock', '-')} | "
            f"{p.get('error', '')} |"
        )
    lines += [
        "",
        "| preset | width | epochs | precision | test acc | train s | eval s | PFLOP | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        if p["part"] != "fast":
            continue
        lines.append(
            f"| {p.get('preset', 'fast')} | {_fmt(p.get('width'), 'd')} | {_fmt(p.get('epochs'), 'd')} | "
            f"{p.get('mixed_precision') or '-'} | "
            f"{_fmt(p.get('test_accuracy'), '.4f')} | {_fmt(p.get('train_seconds'), '.1f')} | "
            f"{_fmt(p.get('eval_seconds'), '.2f')} | {_fmt(p.get('train_pflop'), '.4f')} | "
            f"{_fmt(p.get('peak_mem_gib'), '.2f')} | {p.get('error', '')} |"
        )
    lines += ["", AIRBENCH]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "parts": parts}, indent=2))
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--model", required=True, choices=sorted(PRESET_FOR))
    t.add_argument("--width", type=int, default=16)
    t.add_argument("--precision", default="no", choices=("no", "bf16"))
    t.add_argument("--compile", action="store_true")
    t.add_argument("--data-root", required=True)
    f = sub.add_parser("fast")
    f.add_argument("--archive", required=True)
    f.add_argument("--cache-dir", required=True)
    f.add_argument("--preset", default="fast", choices=("fast", "airbench", "resnet_fast"))
    f.add_argument("--width", type=int, default=0, help="model.width (default: the preset's)")
    f.add_argument("--override", action="append", default=[], help="a --section.key=value for the run")
    for s in (t, f):
        s.add_argument("--smoke", action="store_true", help="tiny, on the CPU")
        s.add_argument("--json", required=True)
    r = sub.add_parser("report")
    r.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "report":
        return report(args)
    if not args.smoke and not torch.cuda.is_available():
        print(f"error: no CUDA GPU visible to torch {torch.__version__}; for the CPU smoke test pass --smoke")
        return 2
    os.environ.setdefault("WANDB_MODE", "disabled")
    row = throughput(args) if args.cmd == "throughput" else fast(args)
    Path(args.json).write_text(json.dumps(row))
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
