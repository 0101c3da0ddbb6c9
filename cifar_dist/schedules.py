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
