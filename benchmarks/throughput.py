"""Training throughput: the PyTorch tutorial's loop against cifar-dist's, in one process, same data,
same model, interleaved rounds, medians.

    python benchmarks/throughput.py                          # tutorial_cnn: tutorial loop vs preset tutorial_fast
    python benchmarks/throughput.py --model resnet_fast      # resnet_fast: tutorial loop vs preset fast
    python benchmarks/throughput.py --rounds 3 --train.mixed_precision=bf16 --train.compile=true  # on a GPU

(a) tutorial: torchvision's CIFAR10 reader over the synthetic CIFAR-10 files (cifar_dist.data's
    SyntheticCIFAR10 class, so the bytes and the decoding are the real CIFAR path), ToTensor +
    Normalize per sample, SubsetRandomSampler over the 80% training split, DataLoader batch 16,
    num_workers 0, SGD lr 0.01, `train_loss += loss.item() * data.size(0)` every step.
(b) cifar-dist: `cifar_dist.train.loop.train` itself, run in this process with the model's preset
    (tutorial_fast for tutorial_cnn, fast for resnet_fast: tensor-held data, batch augmentation, its batch
    size, channels_last, ...) plus any --section.key=value overrides; its own per-epoch
    `images_per_sec` (the timed training loop only, not evaluation or checkpoints), epoch 1 dropped
    as warm-up.

Each round runs (a), (b) and an fp32 matmul measurement back to back, so load from other
processes hits all three alike; the report is the median over rounds. FLOPs per training image
(forward + backward, no optimizer) come from torch.utils.flop_counter; the floor is the measured
matmul rate divided by them, the speed the model would reach if every FLOP ran at matmul speed.
Last line: `speedup_vs_tutorial=<x> floor_fraction=<y>`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from cifar_dist.distributed.wait_policy import choose_wait_policy

choose_wait_policy()  # as train.py does, before torch starts its threads: time what a user gets

import torch  # noqa: E402
from harness import TutorialLoop, run_preset, sync  # noqa: E402 (benchmarks/harness.py)

from cifar_dist.config import resolve  # noqa: E402
from cifar_dist.data import split_indices  # noqa: E402
from cifar_dist.data.synthetic import ensure_synthetic, synthetic_class  # noqa: E402
from cifar_dist.models import build_model  # noqa: E402
from cifar_dist.models.flops import train_flops_per_image  # noqa: E402

PRESET_FOR = {"tutorial_cnn": "tutorial_fast", "resnet_fast": "resnet_fast"}


def matmul_gflops(device: torch.device, n: int = 4096, seconds: float = 2.0) -> float:
    """Sustained fp32 n×n matmul rate (2n³ FLOPs each): one warm-up, then matmuls for at least
    `seconds` (and at least 2), total FLOPs over total time. Sustained, not best-of, because the
    training rates it is compared with are sustained too (whole epochs), under the same load.
    TF32 stays off (PyTorch's default for matmul), so on a GPU this is the true fp32 rate."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    count, t = 0, time.perf_counter()
    while count < 2 or time.perf_counter() - t < seconds:
        a @ b
        count += 1
        if count % 8 == 0 or count < 8:
            sync(device)
    sync(device)
    return 2 * n**3 * count / (time.perf_counter() - t) / 1e9


def tutorial_loop(root: Path, model_name: str, device: torch.device, seed: int = 0) -> TutorialLoop:
    """The tutorial's loop over torchvision's CIFAR-10 reader of the synthetic files: ToTensor + Normalize per
    sample, SubsetRandomSampler over the 80% training split, batch 16, num_workers 0."""
    from torch.utils.data import DataLoader
    from torch.utils.data.sampler import SubsetRandomSampler
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train_data = synthetic_class(root)(str(root), train=True, download=False, transform=transform)
    train_idx, _ = split_indices(len(train_data), 0.2, seed)
    loader = DataLoader(train_data, batch_size=16, sampler=SubsetRandomSampler(train_idx.tolist()), num_workers=0)
    torch.manual_seed(seed)
    return TutorialLoop(loader, build_model(model_name, 3, 32, 10), device)


def cifar_dist_run(
    preset: str, root: Path, train_size: int, epochs: int, threads: int, overrides: list[str]
) -> list[float]:
    """One in-process `train()` run (benchmarks/harness.py); returns its per-epoch images/s after the first."""
    run = run_preset(
        preset,
        [
            "--data.name=synthetic",
            f"--data.root={root.parent}",
            f"--data.synthetic_train_size={train_size}",
            "--data.synthetic_test_size=1000",
            f"--train.epochs={epochs}",
            f"--train.threads_per_process={threads}",
            "--eval.per_device_batch_size=1000",
            *overrides,
        ],
        quiet=True,
    )
    return [r["images_per_sec"] for r in run.rows[1:]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(PRESET_FOR), default="tutorial_cnn")
    parser.add_argument(
        "--preset", default=None, help="cifar-dist preset for (b); default: tutorial_fast or fast by model"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tutorial-images", type=int, default=4000, help="images per tutorial measurement")
    parser.add_argument(
        "--train-size", type=int, default=5000, help="synthetic training files (80%% is the train split)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="cifar-dist epochs per round; the first is warm-up")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both loops (0: one per core)")
    parser.add_argument("--data-root", default=None, help="where the synthetic files go (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args, overrides = parser.parse_known_args(argv)
    preset = args.preset or PRESET_FOR[args.model]
    overrides = [f"--model.name={args.model}", *overrides]
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)

    tmp = None
    if args.data_root is None:
        tmp = Path(tempfile.mkdtemp(prefix="throughput-data-"))
    data_root = Path(args.data_root or tmp)
    cfg = resolve(
        preset,
        None,
        [
            "--data.name=synthetic",
            f"--data.root={data_root}",
            f"--data.synthetic_train_size={args.train_size}",
            "--data.synthetic_test_size=1000",
            *overrides,
        ],
    )
    root = ensure_synthetic(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.device != "cpu" else "cpu")

    model = build_model(args.model, 3, 32, 10, width=cfg.model.width, dropout=cfg.model.dropout).to(device)
    batch = cfg.train.global_batch_size or cfg.train.per_device_batch_size  # one process: the whole batch
    flops = train_flops_per_image(model, 3, 32)  # the trainer's own count (cifar_dist/models/flops.py)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{threads} threads'}), "
        f"torch {torch.__version__}; model {args.model}: {flops / 1e6:.1f} MFLOP per training image"
    )
    print(
        f"(b) = preset {preset} {' '.join(overrides)}: batch {batch}, loader {cfg.data.loader}, augment "
        f"{cfg.data.augment}, channels_last {cfg.train.channels_last}, mixed_precision {cfg.train.mixed_precision}, "
        f"compile {cfg.train.compile}"
    )

    tutorial = tutorial_loop(root, args.model, device)
    tutorial.images(160)  # warm-up: first batches allocate and pick kernels
    rows = []
    print(f"{'round':>5} {'tutorial img/s':>15} {'cifar-dist img/s':>17} {'ratio':>6} {'matmul GFLOP/s':>15}")
    for r in range(args.rounds):
        tut = tutorial.images(args.tutorial_images)
        ours_epochs = cifar_dist_run(preset, root, args.train_size, args.epochs, threads, overrides)
        ours = statistics.median(ours_epochs)
        gf = matmul_gflops(device)
        rows.append({"tutorial": tut, "cifar_dist": ours, "cifar_dist_epochs": ours_epochs, "matmul_gflops": gf})
        print(f"{r + 1:>5} {tut:>15.0f} {ours:>17.0f} {ours / tut:>6.2f} {gf:>15.1f}", flush=True)

    med = {k: statistics.median(row[k] for row in rows) for k in ("tutorial", "cifar_dist", "matmul_gflops")}
    floor = med["matmul_gflops"] * 1e9 / flops
    result = {
        "device": str(device),
        "threads": threads,
        "model": args.model,
        "preset": preset,
        "overrides": overrides,
        "flops_per_image": flops,
        "rounds": rows,
        "median": med,
        "floor_images_per_sec": floor,
        "speedup_vs_tutorial": med["cifar_dist"] / med["tutorial"],
        "floor_fraction": med["cifar_dist"] / floor,
        "tutorial_floor_fraction": med["tutorial"] / floor,
        "median_of_round_ratios": statistics.median(row["cifar_dist"] / row["tutorial"] for row in rows),
        # Against the best matmul round instead: other processes throttle a 2-thread matmul more
        # than they throttle training, so under load the median-based fraction flatters.
        "floor_fraction_vs_best_matmul": med["cifar_dist"] * flops / (max(row["matmul_gflops"] for row in rows) * 1e9),
    }
    print(
        f"medians over {args.rounds} rounds: tutorial {med['tutorial']:.0f} img/s, "
        f"cifar-dist {med['cifar_dist']:.0f} img/s, "
        f"matmul {med['matmul_gflops']:.1f} GFLOP/s -> floor {floor:.0f} img/s "
        f"(tutorial at {result['tutorial_floor_fraction']:.2f} of it); median of per-round ratios "
        f"{result['median_of_round_ratios']:.2f}; fraction of the best matmul round's floor "
        f"{result['floor_fraction_vs_best_matmul']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"speedup_vs_tutorial={result['speedup_vs_tutorial']:.2f} floor_fraction={result['floor_fraction']:.2f}")
    return result


if __name__ == "__main__":
    main()
