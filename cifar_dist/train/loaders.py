"""Training batches. Each loader yields normalised (x, y) on the accelerator's device, each rank a
disjoint shard of the epoch, in an order that is a pure function of (seed, epoch):

- `torch`: the tutorial's path. torchvision dataset, ToTensor + Normalize per sample, a DataLoader
  prepared by Accelerate (seedable sampler, sharded by rank). drop_last=True, so Accelerate never
  pads a rank's shard with repeated samples: at most world × batch - 1 samples sit out an epoch
  (none for the tutorial: 40,000 = 2,500 × 16).
- `tensor`: see tensor_loader.py.
"""

from __future__ import annotations

import itertools

from torch.utils.data import DataLoader

from .batching import plan_batches


class TorchTrainLoader:
    """With gradient accumulation (A micro-batches per optimizer step) it yields A micro-batches per step and
    drops the epoch's last micro-batches that would not make a whole step. Accelerate deals the sampler's
    batches of B round-robin to the W ranks, so a step covers the same W·A·B images whatever W and A are."""

    def __init__(self, cfg, data, accelerator, batch: int | None = None, accumulation: int = 1):
        if batch is None:  # built on its own (tests): the run's plan for this world size
            plan = plan_batches(cfg, accelerator.num_processes)
            batch, accumulation = plan.per_device, plan.accumulation
        loader = DataLoader(
            data.train_set,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )
        self.loader = accelerator.prepare(loader)
        self.per_device_batch_size = batch
        self.accumulation = accumulation
        self.world = accelerator.num_processes

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        return len(self.loader) // self.accumulation

    @property
    def samples_per_epoch(self) -> int:
        """Samples trained on by all ranks together in one epoch."""
        return len(self) * self.per_device_batch_size * self.world * self.accumulation

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def iterate(self, skip: int = 0):
        """This rank's batches for the current epoch, the first `skip` dropped (mid-epoch resume:
        the order is recomputed from (seed, epoch), so dropping them lands on the exact batch)."""
        a = self.accumulation
        # Run the loader to its end when whole steps fill it: Accelerate tidies up only then.
        stop = None if len(self.loader) % a == 0 else len(self) * a
        return itertools.islice(iter(self.loader), skip * a, stop)


def build_train_loader(cfg, data, accelerator, plan=None):
    """The run's training loader; `plan` (batching.BatchPlan) sets the micro-batch and the accumulation."""
    batch, accumulation = (plan.per_device, plan.accumulation) if plan else (None, 1)
    if cfg.data.loader == "tensor":
        from .tensor_loader import TensorTrainLoader

        return TensorTrainLoader(cfg, data, accelerator, batch, accumulation)
    return TorchTrainLoader(cfg, data, accelerator, batch, accumulation)
