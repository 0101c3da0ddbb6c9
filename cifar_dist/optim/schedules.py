"""Learning-rate schedules as pure functions of the step: testable on the CPU, restorable on
resume (the step is all the state there is), and immune to Accelerate's scheduler wrapper, which
steps a prepared scheduler once per process.

    lr_at(step=100, total_steps=1000, base_lr=0.05, schedule="linear_to_1pct", warmup_steps=50)

With s the optimizer step (0-based), T the run's total steps, W = optim.warmup_epochs × steps per
epoch and p = clamp((s − W) / (T − W), 0, 1) the fraction of the decay done:

    constant         lr(s) = lr                                  (no warm-up either)
    warm-up, s < W   lr(s) = lr · (s + 1) / W                    (every schedule but constant)
    linear           lr(s) = lr · (1 − p)                        ends at 0
    linear_to_1pct   lr(s) = lr · (1 − 0.99 p)                   ends at lr / 100 (airbench's schedule)
    cosine           lr(s) = lr · (1 + cos(π p)) / 2             ends at 0 (SGDR without restarts)

`onecycle` is the old name of `linear_to_1pct`, kept as a deprecated alias: it was never PyTorch's
OneCycleLR (cosine annealing with momentum cycling), only a linear warm-up and a linear decay.
"""

from __future__ import annotations

import math

DEPRECATED = {"onecycle": "linear_to_1pct"}  # old name -> the schedule it means


def canonical(schedule: str) -> str:
    """The current name of a schedule (a deprecated alias maps to the schedule it means)."""
    return DEPRECATED.get(schedule, schedule)


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "constant", warmup_steps: int = 0) -> float:
    schedule = canonical(schedule)
    if schedule == "constant":
        return base_lr
    if warmup_steps and step < warmup_steps:  # linear warm-up from base_lr/warmup_steps to base_lr
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "linear":  # linear decay to 0 at the last step
        return base_lr * (1.0 - progress)
    if schedule == "linear_to_1pct":  # linear decay to base_lr/100
        return base_lr * (1.0 - progress * 0.99)
    if schedule == "cosine":  # half a cosine from base_lr to 0 at the last step
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def scaled_lr(cfg, global_batch: int) -> float:
    """optim.lr at the run's global batch (images per optimizer step over all processes; batching.py).

    With optim.reference_batch_size = R > 0, optim.lr and optim.weight_decay are the values for a
    global batch of R images, and lr is scaled linearly: lr × G / R at global batch G. PyTorch's SGD
    decays by lr · weight_decay per step, so the decay per step grows by G / R while the steps per
    epoch shrink by R / G: weight decay per epoch (per image seen) stays what it was at batch R.
    Example: lr 0.2 at R = 256, run at global batch 1,024 -> lr 0.8, decay per step 4×, 4× fewer steps.
    With train.global_batch_size (the presets) G does not change with the process count, so neither does
    the lr; with train.per_device_batch_size it is that × processes, and the lr follows.
    R = 0 uses optim.lr as given, whatever the batch.
    """
    ref = cfg.optim.reference_batch_size
    return cfg.optim.lr * global_batch / ref if ref else cfg.optim.lr
