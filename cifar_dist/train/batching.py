"""How one optimizer step's images are split over processes and micro-batches: the same recipe at any
world size.

    plan = plan_batches(cfg, processes=4)   # train.global_batch_size=256 -> 4 × 64, accumulation 1

With `train.global_batch_size` G > 0 (the presets), each of W processes takes G / W images per optimizer
step; where that exceeds `train.max_per_device_batch_size` M (> 0), it is split into A micro-batches of
G / (W·A) images whose gradients Accelerate accumulates (A the smallest count that fits M and divides
evenly). The optimizer sees the mean gradient over the same G images whatever W and A are, and the lr
(optim.reference_batch_size: scaled by G / R) does not change with W. With G = 0, the older way:
`train.per_device_batch_size` P per process and step, global batch P × W (the lr then scales with W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class BatchPlan:
    processes: int
    per_device: int  # images in one forward/backward on one process (a micro-batch)
    accumulation: int  # micro-batches per optimizer step

    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all processes."""
        return self.per_device * self.accumulation * self.processes

    def describe(self) -> str:
        return (
            f"processes {self.processes}, per-device batch {self.per_device}, accumulation steps "
            f"{self.accumulation}, global batch {self.global_batch}"
        )


def plan_batches(cfg, processes: int) -> BatchPlan:
    g, m = cfg.train.global_batch_size, cfg.train.max_per_device_batch_size
    if g:
        if g % processes:
            raise UserError(
                f"train.global_batch_size={g} does not split evenly over {processes} processes; choose a "
                f"multiple of {processes} (e.g. {math.ceil(g / processes) * processes})"
            )
        share = g // processes
    else:
        share = cfg.train.per_device_batch_size
    accumulation = 1
    if m and share > m:
        accumulation = math.ceil(share / m)
        while share % accumulation:  # the smallest count that fits m and splits the share evenly
            accumulation += 1
    return BatchPlan(processes, share // accumulation, accumulation)
