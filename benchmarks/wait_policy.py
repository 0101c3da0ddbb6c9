"""Seconds per training epoch under each OpenMP wait policy, on quiet cores and beside busy processes.

    python benchmarks/wait_policy.py                      # tutorial_fast on the CIFAR-10 JPEG archive, ~5 min
    python benchmarks/wait_policy.py --steps 20 --rounds 1 --data.name=synthetic   # a quick try

Every configuration is a real training run (`train.py`, the README's preset) in a process of its own,
since OpenMP reads OMP_WAIT_POLICY once, when the process starts its threads. Policies: PASSIVE (idle
threads sleep), ACTIVE (they spin), unset (GNU OpenMP spins a short while, then sleeps). Loads: quiet,
and with N competing busy processes (`--busy 1`: one pure-Python loop, one core's worth of other work).
Configurations are interleaved over rounds so that drifting load hits them alike; each run trains
`--steps` steps of one epoch (the run's own images/s, which excludes start-up and evaluation) and the
table gives seconds per full epoch (training images / images/s, median over rounds) and each
policy's ratio to the fastest policy under the same load. Each run is train.py as it would
run if cifar_dist/distributed/wait_policy.py's DEFAULT (the one place the choice is made) were that policy, with
OMP_WAIT_POLICY unset in its environment, as in a user's clean shell. The figures go to
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = Path(os.environ.get("CIFAR10_JPEG_ARCHIVE") or REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz")
POLICIES = ("PASSIVE", "ACTIVE", "unset")


def busy_processes(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def one_run(policy: str, threads: int, args, overrides: list[str], work: Path, tag: str) -> dict:
    """One training process; -> {"ips": images/s of its training steps, "train_images": per epoch}."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # a clean shell, as the README's
    env.update({"OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"})
    run_dir = work / tag
    # train.py as it would run if cifar_dist/distributed/wait_policy.py's DEFAULT were this policy
    default = None if policy == "unset" else policy
    entry = (
        f"from cifar_dist.distributed import wait_policy; wait_policy.DEFAULT = {default!r}; "
        "import sys; from cifar_dist.cli.main import train_main; train_main(sys.argv[1:])"
    )
    cmd = [
        *[sys.executable, "-c", entry, "--preset", args.preset, *overrides],
        *[f"--data.cache_dir={work / 'cache'}", f"--run.dir={run_dir}", "--tracking.backend=none"],
        *["--eval.tta=false", "--eval.tta_translate=0"],  # the test at the end is not timed: keep it short
        *[
            "--run.progress=false",
            "--train.epochs=1",
            f"--train.max_steps={args.steps}",
            "--train.log_every_steps=1000000",
        ],
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        raise SystemExit(f"{tag}: train.py exited {p.returncode}\n{p.stderr[-3000:]}")
    start = next(line for line in p.stdout.splitlines() if line.startswith("model "))
    expected = "OMP_WAIT_POLICY unset" if policy == "unset" else f"OMP_WAIT_POLICY {policy}"
    assert expected in start, f"{tag}: the run did not get its policy: {start}"
    train_images = int(re.search(r"([\d,]+) train /", start).group(1).replace(",", ""))
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    threads = next(part for part in start.split("; ") if "threads" in part)
    return {"ips": row["images_per_sec"], "train_images": train_images, "threads_line": threads}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tutorial_fast")
    p.add_argument("--steps", type=int, default=150, help="training steps per run (tutorial_fast: 313 make an epoch)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--busy", type=int, default=1, help="competing busy processes in the loaded condition")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="OMP_NUM_THREADS (the README: nproc)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--timeout", type=float, default=600, help="seconds before one run counts as failed")
    args, overrides = p.parse_known_args(argv)
    if not any(o.startswith("--data.name") for o in overrides):
        if not ARCHIVE.is_file():
            raise SystemExit(f"error: {ARCHIVE} not found; set CIFAR10_JPEG_ARCHIVE or pass --data.name=synthetic")
        overrides = ["--data.name=imagefolder", f"--data.root={ARCHIVE}", *overrides]

    import torch

    loads = [0, args.busy] if args.busy else [0]
    times: dict[tuple[int, str], list[float]] = {(b, pol): [] for b in loads for pol in args.policies}
    t0 = time.perf_counter()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, preset {args.preset}, {args.steps} steps per run, {args.rounds} rounds, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="wait_policy-") as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for busy in loads:
                hogs = busy_processes(busy)
                try:
                    for pol in args.policies:
                        tag = f"r{r}-b{busy}-{pol}"
                        out = one_run(pol, args.threads, args, overrides, work, tag)
                        times[(busy, pol)].append(out["train_images"] / out["ips"])
                        print(f"  {tag}: {times[(busy, pol)][-1]:.1f} s/epoch ({out['threads_line']})", flush=True)
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
    median = {k: statistics.median(v) for k, v in times.items()}
    best = {b: min(median[(b, pol)] for pol in args.policies) for b in loads}
    names = {0: "quiet"} | ({args.busy: f"{args.busy} busy"} if args.busy else {})
    print(f"\nseconds per epoch (median of {args.rounds}) and ratio to the fastest policy under the same load:\n")
    header = "| OMP_WAIT_POLICY | " + " | ".join(f"{names[b]} s/epoch | {names[b]} ×" for b in loads) + " | worst × |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(loads)))
    worst = {}
    for pol in args.policies:
        ratios = [median[(b, pol)] / best[b] for b in loads]
        worst[pol] = max(ratios)
        cells = " | ".join(f"{median[(b, pol)]:.1f} | {x:.2f}" for b, x in zip(loads, ratios))
        print(f"| {pol} | {cells} | {worst[pol]:.2f} |")
    choice = min(worst, key=worst.get)
    print(
        f"\nleast worst case: {choice} ({worst[choice]:.2f}× the fastest in its worse condition); "
        f"total {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
