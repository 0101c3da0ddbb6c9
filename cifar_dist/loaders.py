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


class TorchTrainLoader:
    def __init__(self, cfg, data, accelerator):
        loader = DataLoader(
            data.train_set,
            batch_size=cfg.train.per_device_batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.data.num_workers,
            pin_memory=accelerator.device.type == "cuda",
            persistent_workers=cfg.data.num_workers > 0,
        )
        self.loader = accelerator.prepare(loader)
        self.per_device_batch_size = cfg.train.per_device_batch_size
        self.world = accelerator.num_processes

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def samples_per_epoch(self) -> int:
        """Samples trained on by all ranks together in one epoch."""
        return len(self) * self.per_device_batch_size * self.world

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def iterate(self, skip: int = 0):
        """This rank's batches for the current epoch, the first `skip` dropped (mid-epoch resume:
        the order is recomputed from (seed, epoch), so dropping them lands on the exact batch)."""
        return itertools.islice(iter(self.loader), skip, None)


def build_train_loader(cfg, data, accelerator):
    if cfg.data.loader == "tensor":
        from .tensor_loader import TensorTrainLoader

        return TensorTrainLoader(cfg, data, accelerator)
    return TorchTrainLoader(cfg, data, accelerator)
