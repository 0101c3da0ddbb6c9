"""What the toolkit's loop costs: the airbench network trained through cifar_dist.train.train() against a bare
PyTorch loop written out below, on the same device, interleaved, in one process.

    python benchmarks/overhead.py                       # CPU: width 32, 10,000 synthetic images, 3 epochs × 3 rounds
    python benchmarks/overhead.py --device cuda --width 64 --train-size 50000

The bare loop does what a run of the `airbench` preset does and nothing else: the same batches (the epoch's
permutation, crops and alternating flips from the same seeds and the same helper functions), normalisation,
channels_last, the same model (whitening, identity init), optimizer groups (fused Nesterov SGD, norm biases at
64× the lr), learning-rate schedule, label-smoothed loss, Lookahead and precision (autocast). No metrics, no
progress, no checkpoints, no Accelerate.

1. Time per epoch, all costs included: the wall clock from the end of epoch 1 to the end of the last epoch,
   divided by the epochs in between; for train() that spans everything between its epoch-end hooks (training,
   metrics, logging, the checkpoint, the stop check). The two sides alternate, `--rounds` times each; the
   ratio of the medians is printed: toolkit speed / bare speed (1.0: no overhead).
2. Aten ops dispatched per optimizer step outside the model's forward (any nn.Module's forward, the loss
   included), the backward (ops run by the autograd engine) and the optimizer's step, for both sides (a
   TorchDispatchMode over `--count-steps` steps in the middle of an epoch, in a separate untimed run), with the
   ops by name: on a GPU each is a kernel launch or a host-side op that the bare loop does not pay.

Last line: `ratio=<toolkit speed / bare speed> toolkit_ops=<n> bare_ops=<n>`.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cifar_dist.distributed.wait_policy import choose_wait_policy  # noqa: E402

choose_wait_policy()  # as train.py does, before torch starts its threads

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from cifar_dist.config import resolve  # noqa: E402
from cifar_dist.train import loop as trainer  # noqa: E402


def config(args, run_dir: str, epochs: int):
    return resolve(
        "airbench",
        None,
        [
            f"--train.device={args.device}",
            "--tracking.backend=none",
            "--run.progress=false",
            "--data.name=synthetic",
            f"--data.root={args.data_root}",
            f"--data.synthetic_train_size={args.train_size}",
            f"--data.synthetic_test_size={args.test_size}",
            f"--model.width={args.width}",
            f"--train.mixed_precision={args.precision}",
            f"--train.epochs={epochs}",
            *([f"--train.global_batch_size={args.batch}"] if args.batch else []),
            f"--run.dir={run_dir}",
            *args.override,
        ],
    )


# --------------------------------------------------------------------------- counting aten ops outside the core


class OutsideCore(TorchDispatchMode):
    """Counts aten ops dispatched outside any nn.Module's forward, the autograd engine's backward and an
    optimizer's step (global hooks set the flags)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()
        self.depth = 0  # inside a module's forward, or an optimizer's step

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and torch._C._current_autograd_node() is None:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


class CoreHooks:
    """Global forward and optimizer-step hooks that mark the core for an OutsideCore mode."""

    def __init__(self, mode: OutsideCore):
        from torch.nn.modules import module
        from torch.optim import optimizer

        def enter(*_):
            mode.depth += 1

        def leave(*_):
            mode.depth -= 1

        self.handles = [
            module.register_module_forward_pre_hook(enter),
            module.register_module_forward_hook(leave),
            optimizer.register_optimizer_step_pre_hook(enter),
            optimizer.register_optimizer_step_post_hook(leave),
        ]

    def remove(self):
        for h in self.handles:
            h.remove()


class Window:
    """Counts ops over steps [start, start + n) of a loop that calls `tick()` before each step."""

    def __init__(self, start: int, n: int):
        self.start, self.n, self.calls = start, n, 0
        self.mode = OutsideCore()
        self.hooks = None

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.start:
            self.hooks = CoreHooks(self.mode)
            self.mode.__enter__()
        elif self.calls == self.start + self.n:
            self.close()

    def close(self) -> None:
        if self.hooks is not None:
            self.mode.__exit__(None, None, None)
            self.hooks.remove()
            self.hooks = None

    def per_step(self) -> tuple[float, dict]:
        return sum(self.mode.ops.values()) / self.n, {k: v / self.n for k, v in self.mode.ops.most_common()}


# --------------------------------------------------------------------------- the two sides


def run_toolkit(args, epochs: int, window: Window | None = None) -> list[float]:
    """train() itself; returns the wall-clock times of its epoch-end hooks."""
    marks: list[float] = []

    def after_epoch(epoch, row, evaluate_split):
        if args.device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return False

    original = trainer.train_step
    if window is not None:

        def counted(job, x, y, lr):
            window.tick()
            return original(job, x, y, lr)

        trainer.train_step = counted
    try:
        run_dir = tempfile.mkdtemp(prefix="overhead-toolkit-") + "/run"
        summary = trainer.train(config(args, run_dir, epochs), after_epoch)
        if "stopped_at_step" in summary:  # SIGTERM/SIGUSR1: train() saved and stopped; so does the benchmark
            sys.exit(summary["exit_code"] or 1)
    finally:
        trainer.train_step = original
        if window is not None:
            window.close()
    return marks


def run_bare(args, epochs: int, window: Window | None = None) -> list[float]:
    """The bare loop: what the airbench preset trains, written out. Returns the epoch-end times."""
    from cifar_dist.data.augment import alternating_flip, gather_crop_flip, mirrored_padded, random_crop, random_flip
    from cifar_dist.data.datasets import load_data, norm_stats, normalize_batch
    from cifar_dist.data.rows import gathered
    from cifar_dist.distributed import build_accelerator
    from cifar_dist.models import build_model
    from cifar_dist.models.whitening import WHITEN_IMAGES, whiten_from_data
    from cifar_dist.optim import build_optimizer
    from cifar_dist.optim.lookahead import Lookahead
    from cifar_dist.optim.schedules import lr_at, scaled_lr
    from cifar_dist.train.tensor_loader import epoch_permutation, first_epoch_flips, rank_augment

    cfg = config(args, tempfile.mkdtemp(prefix="overhead-bare-"), epochs)
    # The data as the toolkit reads it (load_data needs an accelerator for its main-process-first gate; the
    # accelerator trains nothing here).
    data = load_data(cfg, build_accelerator(cfg))
    device = torch.device(args.device)
    torch.manual_seed(cfg.seed)
    m = cfg.model
    model = build_model(
        m.name, 3, 32, 10, width=m.width, bn_learn_scale=m.bn_learn_scale, dirac_init=m.dirac_init, trust_code=True
    )
    whiten_from_data(model, normalize_batch(data.train_images[:WHITEN_IMAGES], data.mean, data.std))
    model = model.to(device, memory_format=torch.channels_last)
    batch = cfg.train.global_batch_size
    base_lr = scaled_lr(cfg, batch)
    optimizer = build_optimizer(model, cfg.optim, base_lr, fused=True)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    n, pad = len(data.train_labels), cfg.data.crop_pad
    steps = n // batch
    total = steps * epochs
    warmup = int(cfg.optim.warmup_epochs * steps)
    lookahead = Lookahead(model, total, cfg.optim.lookahead_every_steps)
    mean, std = norm_stats(data.mean, data.std, device)
    images = gathered(data.train_images)
    stack = mirrored_padded(images, pad).to(device) if device.type != "cpu" else None
    labels = data.train_labels.to(device)
    flips0 = first_epoch_flips(n, cfg.seed)
    precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved_precision(args))
    marks, step = [], 0
    model.train()
    for epoch in range(epochs):
        order = epoch_permutation(n, cfg.seed, epoch)[: steps * batch].view(steps, batch)
        dy, dx, _ = rank_augment(n, batch, 1, 0, cfg.seed, epoch, pad)
        flip = alternating_flip(flips0, epoch)[order]
        order, dy, dx, flip = (t.to(device) for t in (order, dy, dx, flip))
        for i in range(steps):
            if window is not None:
                window.tick()
            if stack is not None:
                x = gather_crop_flip(stack, order[i], dy[i], dx[i], flip[i], 32)
            else:
                x = random_flip(random_crop(images[order[i]], pad, dy[i], dx[i]), flip[i])
            x = x.contiguous(memory_format=torch.channels_last).float().div_(255).sub_(mean).div_(std)
            y = labels[order[i]]
            lr = lr_at(step, total, base_lr, cfg.optim.schedule, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            lookahead.after_step(step)
        loss.item()  # the epoch's end: the device has finished
        marks.append(time.perf_counter())
    if window is not None:
        window.close()
    return marks


def resolved_precision(args) -> str:
    from cifar_dist.distributed import resolve_mixed_precision

    return resolve_mixed_precision(args.precision, use_cpu=args.device == "cpu")


def per_epoch(marks: list[float]) -> float:
    return (marks[-1] - marks[0]) / (len(marks) - 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--batch", type=int, default=0, help="global batch (default: the preset's 512)")
    p.add_argument("--epochs", type=int, default=3, help="per run; the first is warm-up")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--precision", default="auto", help="train.mixed_precision for both sides (auto: as a run picks)")
    p.add_argument("--count-steps", type=int, default=5)
    p.add_argument("--override", action="append", default=[], help="a --section.key=value for train()")
    p.add_argument("--data-root", default="")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the smoke pass of gpu_check.sh")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA GPU visible to torch {torch.__version__}")
        return 2
    if args.tiny:
        args.train_size, args.test_size, args.batch, args.epochs, args.rounds, args.count_steps = 64, 32, 16, 2, 1, 1
    args.data_root = args.data_root or tempfile.mkdtemp(prefix="overhead-data-")
    args.precision = resolved_precision(args)  # both sides the same, whatever `auto` picks here

    toolkit, bare = [], []
    for r in range(args.rounds):  # interleaved, the order alternating
        sides = [("toolkit", run_toolkit, toolkit), ("bare", run_bare, bare)]
        for name, fn, out in sides if r % 2 == 0 else sides[::-1]:
            out.append(per_epoch(fn(args, args.epochs)))
            print(f"round {r + 1} {name}: {out[-1]:.3f} s/epoch", flush=True)
    t_toolkit, t_bare = statistics.median(toolkit), statistics.median(bare)
    ratio = t_bare / t_toolkit

    steps = args.train_size // (args.batch or 512)
    start = max(2, steps // 2 - args.count_steps // 2)  # mid-epoch, clear of the first step
    counts = {}
    for name, fn in (("toolkit", run_toolkit), ("bare", run_bare)):
        window = Window(start, args.count_steps)
        fn(args, 1, window)
        counts[name] = window.per_step()
    row = {
        "part": "overhead",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "width": args.width,
        "mixed_precision": args.precision,
        "train_size": args.train_size,
        "threads": torch.get_num_threads(),
        "toolkit_epoch_s": t_toolkit,
        "bare_epoch_s": t_bare,
        "toolkit_epochs_s": toolkit,
        "bare_epochs_s": bare,
        "speed_ratio": ratio,
        "toolkit_ops_per_step": counts["toolkit"][0],
        "bare_ops_per_step": counts["bare"][0],
        "toolkit_ops": counts["toolkit"][1],
        "bare_ops": counts["bare"][1],
    }
    for name in ("toolkit", "bare"):
        ops = ", ".join(f"{k} {v:g}" for k, v in counts[name][1].items())
        print(f"{name}: {counts[name][0]:g} aten ops per step outside forward/backward/optimizer step: {ops}")
    print(
        f"airbench w{args.width} {args.precision} on {row['device']}, {args.train_size} images, "
        f"{torch.get_num_threads()} threads: toolkit {t_toolkit:.3f} s/epoch, bare {t_bare:.3f} s/epoch "
        f"(medians of {args.rounds})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(row))
    print(
        f"ratio={ratio:.3f} toolkit_ops={counts['toolkit'][0]:g} bare_ops={counts['bare'][0]:g}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
