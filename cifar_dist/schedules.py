"""Learning-rate schedules as pure functions of the step: testable on the CPU, restorable on
resume (the step is all the state there is), and immune to Accelerate's scheduler wrapper, which
steps a prepared scheduler once per process.

    lr_at(step=100, total_steps=1000, base_lr=0.05, schedule="onecycle", warmup_steps=50)
"""
from __future__ import annotations


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str = "constant", warmup_steps: int = 0) -> float:
    if schedule == "constant":
        return base_lr
    if warmup_steps and step < warmup_steps:  # linear warm-up from base_lr/warmup_steps to base_lr
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "linear":  # linear decay to 0 at the last step
        return base_lr * (1.0 - progress)
    if schedule == "onecycle":  # warm-up, then cosine-free triangular decay to base_lr/100 (airbench style)
        return base_lr * (1.0 - progress * 0.99)
    raise ValueError(f"unknown schedule {schedule!r}")


def scaled_lr(cfg, world_size: int) -> float:
    """optim.lr at the run's global batch (per_device_batch_size × processes).

    With optim.reference_batch_size = R > 0, optim.lr and optim.weight_decay are the values for a
    global batch of R images, and lr is scaled linearly: lr × G / R at global batch G. PyTorch's SGD
    decays by lr · weight_decay per step, so the decay per step grows by G / R while the steps per
    epoch shrink by R / G: weight decay per epoch (per image seen) stays what it was at batch R.
    Example: lr 0.2 at R = 256, run on 4 processes × 256 -> lr 0.8, decay per step 4×, 4× fewer steps.
    R = 0 uses optim.lr as given, whatever the batch.
    """
    ref = cfg.optim.reference_batch_size
    return cfg.optim.lr * cfg.train.per_device_batch_size * world_size / ref if ref else cfg.optim.lr
