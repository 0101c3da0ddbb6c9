"""The fast training data path (`data.loader=tensor`): the training split held as one uint8 tensor
on the device, batches picked, augmented and normalised with whole-batch tensor ops (airbench's
approach), instead of the tutorial's PIL decode + ToTensor + Normalize one image at a time.

    accelerate launch train.py --preset tutorial_fast --data.name=synthetic

Order: each epoch is one permutation of the training split, a pure function of (seed, epoch),
computed identically on every rank. Global step i takes the W·B samples perm[i·W·B : (i+1)·W·B]
and rank r trains on the r-th block of B of them, so

- the ranks' shards are disjoint; together they cover the first steps·W·B samples of the epoch's
  permutation; the remainder (< W·B samples, like drop_last) sits out this epoch only, as the
  permutation changes every epoch;
- a W-process run sees the same global batches (same samples, same crops and flips) as a
  1-process run with batch W·B;
- every rank has the same number of steps, so DDP never waits on a rank that ran out;
- resume is exact: `iterate(skip)` recomputes the epoch's order and starts at batch `skip`.

Every rank holds the whole training split (uint8; with augmentation padded and once mirrored, 384 MB
for CIFAR-10's 40,000 training images) and gathers its own batches from it, so reshuffling across
ranks every epoch costs no communication.
"""

from __future__ import annotations

import numpy as np
import torch

from .augment import draw_crop_flip, gather_crop_flip, mirrored_padded
from .data import norm_stats, normalize_batch
from .errors import UserError

CROP_PAD = 4  # the standard CIFAR translation: up to ±4 pixels (data.crop_pad's default)
_ORDER, _AUGMENT, _FLIP = 0, 1, 2  # separate random streams: turning augmentation on does not change the order


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, stream) through numpy's SeedSequence, so nearby
    seeds and epochs give unrelated streams."""
    state = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def steps_per_epoch(n: int, batch: int, world: int) -> int:
    return n // (batch * world)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=_generator(seed, epoch, _ORDER))


def rank_batches(n: int, batch: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    """(steps, batch) indices into the training split: rank `rank`'s batches for `epoch`."""
    steps = steps_per_epoch(n, batch, world)
    used = epoch_permutation(n, seed, epoch)[: steps * world * batch]
    return used.view(steps, world, batch)[:, rank]


def rank_augment(n: int, batch: int, world: int, rank: int, seed: int, epoch: int, pad: int = CROP_PAD):
    """(dy, dx, flip), each (steps, batch): drawn for every global position of the epoch, then
    this rank's block taken, so the crops do not depend on the world size either."""
    steps = steps_per_epoch(n, batch, world)
    params = draw_crop_flip(steps * world * batch, pad, _generator(seed, epoch, _AUGMENT))
    return tuple(p.view(steps, world, batch)[:, rank] for p in params)


def first_epoch_flips(n: int, seed: int) -> torch.Tensor:
    """data.alternate_flip: each image's flip in epoch 0, by image index; airbench.alternating_flip
    derives every later epoch's from it."""
    return torch.randint(0, 2, (n,), generator=_generator(seed, 0, _FLIP)).bool()


class TensorTrainLoader:
    def __init__(self, cfg, data, accelerator):
        self.device = accelerator.device
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.batch = cfg.train.per_device_batch_size
        self.seed = cfg.seed
        self.augment = cfg.data.augment
        self.pad = cfg.data.crop_pad
        self.flips = first_epoch_flips(len(data.train_labels), cfg.seed) if cfg.data.alternate_flip else None
        self.channels_last = cfg.train.channels_last
        self.mean, self.std = norm_stats(data.mean, data.std, self.device)  # once, not per batch
        self.n = len(data.train_labels)
        self.size = data.image_size
        if steps_per_epoch(self.n, self.batch, self.world) == 0:
            raise UserError(
                f"train.per_device_batch_size={self.batch} × {self.world} processes = {self.batch * self.world} "
                f"exceeds the {self.n} training samples; lower the batch size"
            )
        images = data.train_images
        # With augmentation: [padded, padded+mirrored], so a batch is gathered, cropped and flipped in one op.
        self.images = (mirrored_padded(images, self.pad) if self.augment else images).to(self.device)
        self.labels = data.train_labels.to(self.device)
        self.epoch = 0

    def __len__(self) -> int:
        return steps_per_epoch(self.n, self.batch, self.world)

    @property
    def samples_per_epoch(self) -> int:
        """Samples trained on by all ranks together in one epoch."""
        return len(self) * self.batch * self.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def iterate(self, skip: int = 0):
        """This rank's batches for the current epoch, normalised, on the device, the first `skip`
        left out (mid-epoch resume lands on the exact batch: the order and the crops are recomputed)."""
        order = rank_batches(self.n, self.batch, self.world, self.rank, self.seed, self.epoch).to(self.device)
        if self.augment:
            dy, dx, flip = (
                p.to(self.device)
                for p in rank_augment(self.n, self.batch, self.world, self.rank, self.seed, self.epoch, self.pad)
            )
            if self.flips is not None:  # by image, not by position: see airbench.alternating_flip
                from .airbench import alternating_flip

                flip = alternating_flip(self.flips.to(self.device), self.epoch)[order]
        for i in range(skip, len(order)):
            index = order[i]
            if self.augment:
                x = gather_crop_flip(self.images, index, dy[i], dx[i], flip[i], self.size)
            else:
                x = self.images[index]
            if self.channels_last:  # convert the uint8 batch (1 byte/value); the float ops keep the layout
                x = x.contiguous(memory_format=torch.channels_last)
            yield normalize_batch(x, self.mean, self.std), self.labels[index]
