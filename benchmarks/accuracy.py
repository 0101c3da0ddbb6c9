"""Real-data accuracy: train a preset, evaluate the test split with the best-validation weights,
print wall seconds, test accuracy and the tutorial's per-class lines.

    python benchmarks/accuracy.py --preset tutorial_fast --data.name fashion_mnist
    python benchmarks/accuracy.py --preset fast --data.name fashion_mnist --seed 1
    python benchmarks/accuracy.py --preset tutorial_fast --data.name fashion_mnist --seeds 0 1 2 --quiet  # medians
    python benchmarks/accuracy.py --preset fast --data.name cifar10 --train.mixed_precision=bf16  # on a GPU

Recipes are tuned on the validation split (printed as val_accuracy), never on the test split. With
--data.val_fraction=0 (a final fit on every training image) there is no validation split, and the
last epoch's weights are tested.
train_seconds is the wall time of the whole training call: data loading, every epoch's training
and validation, checkpoints and the final test evaluation; the loop alone is printed too.
pflops is the training compute: FLOPs per training image (forward + backward, counted once at the
start by torch.utils.flop_counter on the real model; cifar_dist/models/flops.py) times the images trained.
Last line: `test_accuracy=<a> train_seconds=<s> pflops=<p>`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from cifar_dist.distributed.wait_policy import choose_wait_policy

choose_wait_policy()  # as train.py does, before torch starts its threads: time what a user gets

from harness import run_preset  # noqa: E402 (benchmarks/harness.py)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tutorial_fast")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="several runs, one after the other (e.g. --seeds 0 1 2); the last line holds the medians",
    )
    parser.add_argument("--run-dir", default=None, help="keep the run here (default: a temp folder, removed)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--quiet", action="store_true", help="hide the training run's own output")
    args, overrides = parser.parse_known_args(argv)
    # argparse-style `--data.name fashion_mnist` and `--data.name=fashion_mnist` both work (config parses them)
    if not args.seeds:
        return run_one(args, args.seed, overrides, args.run_dir, args.json)
    results = []
    for seed in args.seeds:
        run_dir = f"{args.run_dir}/seed{seed}" if args.run_dir else None
        results.append(run_one(args, seed, overrides, run_dir, None))
    acc = [r["test_accuracy"] for r in results]
    secs = [r["train_seconds"] for r in results]
    compute = [r["train_pflops"] for r in results]
    summary = {
        "preset": args.preset,
        "runs": results,
        "seeds": args.seeds,
        "test_accuracy_mean": statistics.mean(acc),
        "test_accuracy_median": statistics.median(acc),
        "test_accuracy_min": min(acc),
        "test_accuracy_max": max(acc),
        "test_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
        "train_seconds_median": statistics.median(secs),
        "train_seconds_max": max(secs),
        "train_pflops_median": statistics.median(compute),
    }
    for key in ("val_accuracy_best_epoch", "val_accuracy_raw_best_epoch"):
        vals = [r[key] for r in results if r[key] is not None]
        if len(vals) == len(results):
            summary[key.replace("best_epoch", "median")] = statistics.median(vals)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(
        f"\n{args.preset}: {len(acc)} seeds {args.seeds}: test accuracy "
        + " ".join(f"{a:.4f}" for a in acc)
        + f"; mean {summary['test_accuracy_mean']:.4f} ± {summary['test_accuracy_std']:.4f} (sample std), "
        f"range {min(acc):.4f}–{max(acc):.4f}; train seconds " + " ".join(f"{t:.0f}" for t in secs)
    )
    if "val_accuracy_raw_median" in summary:  # train.ema_decay: the EMA's weights against the trained ones
        print(
            "validation accuracy, EMA weights "
            + " ".join(f"{r['val_accuracy_best_epoch']:.4f}" for r in results)
            + " (median {:.4f}); trained weights ".format(summary["val_accuracy_median"])
            + " ".join(f"{r['val_accuracy_raw_best_epoch']:.4f}" for r in results)
            + " (median {:.4f})".format(summary["val_accuracy_raw_median"])
        )
    print(
        f"test_accuracy={summary['test_accuracy_median']:.4f} train_seconds={summary['train_seconds_median']:.1f} "
        f"pflops={summary['train_pflops_median']:.4g}"
    )
    return summary


def run_one(args, seed: int, overrides: list[str], run_dir: str | None, json_path: str | None) -> dict:
    result = run_preset(args.preset, [f"--seed={seed}", *overrides], run_dir, quiet=args.quiet)
    if "stopped_at_step" in result.summary:  # SIGUSR1/SIGTERM: the run saved its state and stopped, untested
        again = f"its state is kept in {run_dir}" if run_dir else "run it again"
        sys.exit(f"accuracy.py: the run stopped at step {result.summary['stopped_at_step']} before its test; {again}")
    return report(args, seed, overrides, result, json_path)


def report(args, seed: int, overrides: list[str], run, json_path: str | None) -> dict:
    """The run's numbers as a dict (and JSON), the tutorial's per-class lines and the last line."""
    import torch

    cfg, summary, rows, wall = run.cfg, run.summary, run.rows, run.seconds
    loop = sum(r["epoch_seconds"] for r in rows)
    result = {
        "preset": args.preset,
        "data": cfg.data.name,
        "model": cfg.model.name,
        "seed": seed,
        "epochs": cfg.train.epochs,
        "test_accuracy": summary["accuracy"],
        "test_loss": summary["loss"],
        "best_epoch": summary["best_epoch"],
        "val_accuracy_best_epoch": rows[summary["best_epoch"] - 1].get("val_accuracy"),
        # with train.ema_decay: the trained weights' validation in the same run (the EMA's is val_accuracy)
        "val_accuracy_raw_best_epoch": rows[summary["best_epoch"] - 1].get("val_accuracy_raw"),
        "train_seconds": wall,
        "train_loop_seconds": loop,
        "train_flops_per_image": summary["train_flops_per_image"],
        "train_pflops": summary["train_pflops"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "per_class": summary["per_class"],
        "overrides": overrides,
    }
    print(
        f"\n{args.preset} on {cfg.data.name} ({cfg.model.name}, {cfg.train.epochs} epochs, seed {seed}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})"
    )
    for name, pc in summary["per_class"].items():
        print(
            f"Test Accuracy of {name:>12s}: {100 * pc['correct'] / max(pc['total'], 1):5.1f}% "
            f"({pc['correct']}/{pc['total']})"
        )
    val, raw = result["val_accuracy_best_epoch"], result["val_accuracy_raw_best_epoch"]
    print(
        f"best epoch {summary['best_epoch']} "
        + (f"(validation accuracy {val:.4f}" if val is not None else "(no validation split: data.val_fraction=0")
        + (f", trained weights without EMA {raw:.4f}); " if raw is not None else "); ")
        + f"training loop {loop:.1f} s of {wall:.1f} s wall; "
        + f"{summary['train_flops_per_image'] / 1e9:.4g} GFLOP per training image, {summary['train_pflops']:.4g} PFLOP"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    print(f"test_accuracy={summary['accuracy']:.4f} train_seconds={wall:.1f} pflops={summary['train_pflops']:.4g}")
    return result


if __name__ == "__main__":
    main()
