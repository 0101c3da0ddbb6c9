"""One part of benchmarks/gpu_check.sh, in a process of its own (Accelerate keeps one AcceleratorState per
process: a second configuration in the same process would raise "AcceleratorState has already been
initialized"). Each part writes one JSON row; `report` turns the rows into the table.

    python3 benchmarks/gpu_check.py throughput --model airbench --width 64 --precision bf16 --compile --json r.json
    python3 benchmarks/gpu_check.py train --preset airbench --archive .device/cifar10-jpeg.tar.xz --json a.json
    python3 benchmarks/gpu_check.py report OUT_DIR

`--tiny` makes a part one step (one step timed, one epoch cut to a few steps) and compiles with TorchDynamo's
eager backend (tracing only, no Inductor): the smoke pass that gpu_check.sh runs first on the GPU, and the
whole of `gpu_check.sh --smoke` on the CPU. `--device cuda` (the default) says so in one line when torch sees
no GPU: never a silent CPU run on the GPU machine.

Runs on the GPU machine's python3 (torch 2.11, accelerate 1.15, no wandb): tracking stays off, and nothing
here imports wandb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from cifar_dist.config import resolve  # noqa: E402

# model -> the preset whose recipe its throughput row uses
PRESET_FOR = {"tutorial_cnn": "tutorial_fast", "resnet_fast": "resnet_fast", "airbench": "airbench"}
TARGETS = (0.90, 0.93)
# Published (github.com/KellerJordan/cifar10-airbench README): airbench94, 94.01 % in 3.83 s on one A100, 0.36 PFLOP.
PUBLISHED = "published: airbench94 reaches 94.01% in 3.83 s on an A100, lossless CIFAR-10, 0.36 PFLOP"


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak resident set (Linux KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "GPU allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"


def _common(args) -> list[str]:
    return [f"--train.device={args.device}", "--tracking.backend=none", "--run.progress=false"]


def _eager_compile_for_tiny(args) -> None:
    """--tiny with --compile: TorchDynamo traces the model and runs the graph eagerly (Inductor compiles one
    configuration in ~110 s on 2 loaded cores, tens of seconds on a GPU box: too slow for a smoke pass)."""
    if args.tiny and getattr(args, "compile", False):
        import functools

        torch.compile = functools.partial(torch.compile, backend="eager")


def throughput(args) -> dict:
    """Images/s of cifar-dist's own training step (trainer.train_step over the run's loader): warm-up steps
    (compilation and cuDNN autotuning included), then timed steps; CUDA events on a GPU, the wall clock on the
    CPU."""
    from cifar_dist.data import load_data
    from cifar_dist.distributed import build_accelerator
    from cifar_dist.train.job import build
    from cifar_dist.train.loop import train_step

    size = 200 if args.tiny else 10_000
    overrides = [
        *_common(args),
        "--data.name=synthetic",
        f"--data.root={args.data_root}",
        f"--data.synthetic_train_size={size}",
        "--data.synthetic_test_size=10",
        "--data.val_fraction=0",
        f"--model.name={args.model}",
        f"--model.width={args.width}",
        f"--train.mixed_precision={args.precision}",
        f"--train.compile={str(args.compile).lower()}",
        f"--run.dir={tempfile.mkdtemp(prefix='gpu-check-')}",
    ]
    if args.tiny and args.device == "cpu":
        overrides.append("--train.global_batch_size=8")
    cfg = resolve(PRESET_FOR[args.model], None, overrides)
    _eager_compile_for_tiny(args)
    warmup, timed = (1, 1) if args.tiny else (15, 60)
    accelerator = build_accelerator(cfg)
    device = accelerator.device
    job = build(cfg, accelerator, load_data(cfg, accelerator))
    flops = job.flops_per_image  # the trainer's own count (cifar_dist/flops.py)

    def steps():
        epoch = 0
        while True:
            job.loader.set_epoch(epoch)
            yield from job.loader.iterate()
            epoch += 1

    batches = steps()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_first = time.perf_counter()
    for _ in range(warmup):
        _, loss = train_step(job, *next(batches), job.base_lr)
    loss.item()  # wait for the warm-up (and the compilation) to finish
    warmup_s = time.perf_counter() - t_first
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(timed):
            _, loss = train_step(job, *next(batches), job.base_lr)
        end.record()
        end.synchronize()
        seconds, clock = start.elapsed_time(end) / 1000, "CUDA events"
    else:
        t = time.perf_counter()
        for _ in range(timed):
            _, loss = train_step(job, *next(batches), job.base_lr)
        loss.item()
        seconds, clock = time.perf_counter() - t, "wall clock"
    images = timed * job.plan.per_device * job.plan.accumulation
    peak, peak_kind = peak_memory_gib(device)
    return {
        "part": "throughput",
        "model": args.model,
        "width": None if args.model == "tutorial_cnn" else args.width,
        "batch": job.plan.per_device,
        "mixed_precision": accelerator.mixed_precision,
        "compile": args.compile,
        "images_per_sec": images / seconds,
        "timed_steps": timed,
        "clock": clock,
        "warmup_seconds": warmup_s,
        "gflop_per_image": flops / 1e9,
        "tflops_per_sec": flops * images / seconds / 1e12,
        "peak_mem_gib": peak,
        "peak_mem_kind": peak_kind,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "compiler": ("dynamo, eager backend (tiny)" if args.tiny else "inductor") if args.compile else None,
    }


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds (the run's own per-epoch clock, summed) when the test accuracy first reached
    `target`; None if it never did."""
    return next((c["train_seconds"] for c in curve if c["test_accuracy"] >= target), None)


def train_preset(args) -> dict:
    """A preset (`airbench`: airbench94's network and methods; `fast`: the same at width 32 for 26 epochs) trained
    through cifar_dist.train.train on the CIFAR-10 JPEG archive as a user runs it (bf16 where the GPU runs it
    natively). After every epoch the test split is evaluated with the run's TTA, outside the timed training
    (the run's epoch_seconds); the row holds that curve, the training seconds at which it first reached 0.90
    and 0.93, the final test accuracy, the per-epoch seconds spent validating, saving and logging
    (metrics.jsonl), peak memory and training PFLOPs."""
    from cifar_dist.distributed import resolve_mixed_precision
    from cifar_dist.train import train

    overrides = [
        *_common(args),
        "--data.name=imagefolder",
        f"--data.root={args.archive}",
        f"--data.cache_dir={args.cache_dir}",
        *([f"--model.width={args.width}"] if args.width else []),
        f"--run.dir={tempfile.mkdtemp(prefix='gpu-check-train-')}/run",
        *args.override,
    ]
    if args.tiny:
        overrides += ["--train.epochs=2", "--train.max_steps=2"]
        if args.device == "cpu":
            overrides += ["--train.global_batch_size=8", "--eval.per_device_batch_size=16"]
    cfg = resolve(args.preset, None, overrides)
    device = torch.device(args.device)
    curve: list[dict] = []
    rows: list[dict] = []

    def after_epoch(epoch, row, evaluate_split):
        rows.append(row)
        t = time.perf_counter()
        test = evaluate_split("test")  # host floats: the device has finished
        curve.append(
            {
                "epoch": epoch,
                "train_seconds": sum(r["epoch_seconds"] for r in rows),
                "test_accuracy": test.accuracy,
                "eval_seconds": time.perf_counter() - t,
            }
        )
        return False

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    summary = train(cfg, after_epoch=after_epoch)
    wall = time.perf_counter() - t
    peak, peak_kind = peak_memory_gib(device)
    extra = {k: sum(r.get(k, 0.0) for r in rows) for k in ("validate_seconds", "save_seconds", "log_seconds")}
    return {
        "part": "train",
        "preset": args.preset,
        "width": cfg.model.width,
        "epochs": len(rows),
        "batch": cfg.train.global_batch_size or cfg.train.per_device_batch_size,
        "mixed_precision": resolve_mixed_precision(cfg.train.mixed_precision, use_cpu=device.type != "cuda"),
        "test_accuracy": summary["accuracy"],
        "train_seconds": curve[-1]["train_seconds"] if curve else None,
        **{f"seconds_to_{t:.2f}": time_to(curve, t) for t in TARGETS},
        "curve": curve,
        **extra,
        "eval_seconds": curve[-1]["eval_seconds"] if curve else None,
        "wall_seconds": wall,
        "train_pflop": rows[-1]["train_pflops"],  # the run's own count (cifar_dist/flops.py)
        "peak_mem_gib": peak,
        "peak_mem_kind": peak_kind,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "data": f"CIFAR-10 (JPEG q75 copy) {Path(args.archive).name}" if not args.tiny else f"tiny: {args.archive}",
    }


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ours_line(parts: list[dict], env: dict) -> str:
    ab = next((p for p in parts if p.get("part") == "train" and p.get("preset") == "airbench"), None)
    where = f"{env.get('device', '?')}, torch {env.get('torch', '?')}"
    if ab is None or "error" in ab:
        why = ab.get("error", "no row") if ab else "no row"
        return f"ours: airbench preset on {where}, CIFAR-10 JPEG q75 copy: no result ({why})"
    t93 = ab.get("seconds_to_0.93")
    return (
        f"ours: airbench preset (airbench94's network and methods, through train()) reaches "
        f"{100 * ab['test_accuracy']:.2f}% in {ab['train_seconds']:.2f} s of training "
        f"({'0.93 at ' + format(t93, '.2f') + ' s' if t93 is not None else 'never 0.93'}) on {where}, "
        f"CIFAR-10 JPEG q75 copy (about 3.4 points below lossless at this budget), "
        f"{ab['train_pflop']:.2f} PFLOP, {ab['mixed_precision']}"
    )


def report(args) -> int:
    """gpu_check.md and gpu_check.json from the rows (`--rows part` or `smoke`; a part that failed has an
    `error`); the last two lines printed are the published comparison and ours."""
    out = Path(args.out)
    rows = Path(args.rows_dir or args.out)
    parts = [json.loads(p.read_text()) for p in sorted(rows.glob(f"{args.rows}-*.json"))]
    env = json.loads((out / "environment.json").read_text()) if (out / "environment.json").exists() else {}
    lines = [
        f"device: {env.get('device', '?')}; torch {env.get('torch', '?')}; accelerate {env.get('accelerate', '?')};"
        f" python {env.get('python', '?')}; {env.get('mode', '')}",
        "",
        "| model | width | batch | precision | compile | images/s | GFLOP/image | TFLOP/s | peak GiB | clock | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        if p["part"] != "throughput":
            continue
        lines.append(
            f"| {p['model']} | {p.get('width') or '-'} | {_fmt(p.get('batch'), 'd')} | "
            f"{p.get('mixed_precision', '-')} | {p.get('compile', '-')} | {_fmt(p.get('images_per_sec'), '.0f')} | "
            f"{_fmt(p.get('gflop_per_image'), '.3f')} | {_fmt(p.get('tflops_per_sec'), '.2f')} | "
            f"{_fmt(p.get('peak_mem_gib'), '.2f')} | {p.get('clock', '-')} | {p.get('error', '')} |"
        )
    lines += [
        "",
        "| preset | width | epochs | precision | test acc | train s | s to 0.90 | s to 0.93 | validate/save/log s "
        "| PFLOP | peak GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in parts:
        if p["part"] != "train":
            continue
        vsl = "/".join(_fmt(p.get(k), ".2f") for k in ("validate_seconds", "save_seconds", "log_seconds"))
        lines.append(
            f"| {p.get('preset', '-')} | {_fmt(p.get('width'), 'd')} | {_fmt(p.get('epochs'), 'd')} | "
            f"{p.get('mixed_precision') or '-'} | {_fmt(p.get('test_accuracy'), '.4f')} | "
            f"{_fmt(p.get('train_seconds'), '.2f')} | {_fmt(p.get('seconds_to_0.90'), '.2f')} | "
            f"{_fmt(p.get('seconds_to_0.93'), '.2f')} | {vsl if 'error' not in p else '-'} | "
            f"{_fmt(p.get('train_pflop'), '.4f')} | {_fmt(p.get('peak_mem_gib'), '.2f')} | {p.get('error', '')} |"
        )
    for p in parts:
        if p["part"] != "overhead":
            continue
        if "error" in p:
            lines += ["", f"overhead (train() vs a bare loop): {p['error']}"]
            continue
        lines += [
            "",
            f"overhead, airbench w{p['width']} {p['mixed_precision']} on {p['device']}: train() at "
            f"{p['speed_ratio']:.3f} of the bare loop's speed (epoch {p['toolkit_epoch_s']:.3f} s vs "
            f"{p['bare_epoch_s']:.3f} s, all costs); aten ops per optimizer step outside forward/backward/optimizer "
            f"step: train() {p['toolkit_ops_per_step']:.1f}, bare {p['bare_ops_per_step']:.1f}",
        ]
    lines += ["", PUBLISHED, _ours_line(parts, env)]
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
    f = sub.add_parser("train")
    f.add_argument("--archive", required=True)
    f.add_argument("--cache-dir", required=True)
    f.add_argument("--preset", default="airbench", choices=("fast", "airbench", "resnet_fast"))
    f.add_argument("--width", type=int, default=0, help="model.width (default: the preset's)")
    f.add_argument("--override", action="append", default=[], help="a --section.key=value for the run")
    for s in (t, f):
        s.add_argument("--tiny", action="store_true", help="one step (the smoke pass)")
        s.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
        s.add_argument("--json", required=True)
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--rows", default="part", choices=("part", "smoke"))
    r.add_argument("--rows-dir", default="", help="where the rows are (default: OUT)")
    args = p.parse_args(argv)
    if args.cmd == "report":
        return report(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA GPU visible to torch {torch.__version__}; on the CPU pass --device cpu")
        return 2
    row = throughput(args) if args.cmd == "throughput" else train_preset(args)
    row["tiny"] = args.tiny
    Path(args.json).write_text(json.dumps(row))
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.exit(main())
