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

Every rank can read the whole training split and gathers its own batches from it, so reshuffling
across ranks every epoch costs no communication. On the host that is the dataset's array, shared by the
ranks of a machine when memory-mapped (an image-folder cache); on a GPU each rank holds it on its device
(uint8; with augmentation padded and once mirrored, 384 MB for CIFAR-10's 40,000 at pad 4).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.augment import draw_crop_flip, gather_crop_flip, mirrored_padded, random_crop, random_flip
from ..data.datasets import norm_stats, normalize_batch
from ..data.rows import gathered
from ..errors import UserError
from .batching import plan_batches

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
    """data.alternate_flip: each image's flip in epoch 0, by image index; augment.alternating_flip
    derives every later epoch's from it."""
    return torch.randint(0, 2, (n,), generator=_generator(seed, 0, _FLIP)).bool()


class TensorTrainLoader:
    """With gradient accumulation (A micro-batches per optimizer step, batching.py) the rank's share of a
    step is split into A consecutive blocks: micro-batch j of rank r is block r·A + j of the step's W·A
    blocks, so the images of an optimizer step, and their crops, do not depend on W or A."""

    def __init__(
        self, cfg, data, accelerator, batch: int | None = None, accumulation: int = 1, device_stack: bool | None = None
    ):
        """device_stack: hold the split on the device, padded and mirrored (default: unless the device is the CPU)."""
        self.device = accelerator.device
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        if batch is None:  # built on its own (tests): the run's plan for this world size
            plan = plan_batches(cfg, self.world)
            batch, accumulation = plan.per_device, plan.accumulation
        self.batch, self.accumulation = batch, accumulation
        self.seed = cfg.seed
        self.augment = cfg.data.augment
        self.pad = cfg.data.crop_pad
        self.flips = first_epoch_flips(len(data.train_labels), cfg.seed) if cfg.data.alternate_flip else None
        self.channels_last = cfg.train.channels_last
        self.mean, self.std = norm_stats(data.mean, data.std, self.device)  # once, not per batch
        self.n = len(data.train_labels)
        self.size = data.image_size
        if len(self) == 0:
            g = self.batch * self.world * self.accumulation
            raise UserError(
                f"the global batch ({self.batch} per process × {self.world} processes × {self.accumulation} "
                f"accumulation steps = {g}) exceeds the {self.n} training samples; lower the batch size"
            )
        if device_stack is None:
            device_stack = self.device.type != "cpu"
        if not device_stack:
            # On the host a batch is gathered from the split's rows when drawn: the ranks of a machine share
            # the dataset's (memory-mapped) images rather than each holding a padded copy, 2·(1 + 2p/H)² × the
            # bytes (311 MB for CIFAR-10's 40,000 at pad 2); the same pixels as the fused path below.
            self.images, self.stack = data.train_images, None
        else:
            # On a GPU, once on the device as [padded, padded+mirrored]: a batch is gathered, cropped and flipped
            # in one op. Without augmentation the stack is the images themselves.
            images = gathered(data.train_images)
            self.stack = (mirrored_padded(images, self.pad) if self.augment else images).to(self.device)
        self.labels = data.train_labels.to(self.device)
        self.epoch = 0

    def __len__(self) -> int:
        """Optimizer steps per epoch."""
        return steps_per_epoch(self.n, self.batch, self.world * self.accumulation)

    @property
    def samples_per_epoch(self) -> int:
        """Samples trained on by all ranks together in one epoch."""
        return len(self) * self.batch * self.world * self.accumulation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _blocks(self, fn, *extra):
        """fn's (steps, batch) tensors for this rank's A micro-batch blocks, interleaved step by step:
        (steps · A, batch). A = 1: fn for this rank, as is."""
        a, n = self.accumulation, self.n
        parts = [fn(n, self.batch, self.world * a, self.rank * a + j, self.seed, self.epoch, *extra) for j in range(a)]
        if a == 1:
            return parts[0]
        if isinstance(parts[0], torch.Tensor):
            return torch.stack(parts, dim=1).flatten(0, 1)
        return tuple(torch.stack([p[k] for p in parts], dim=1).flatten(0, 1) for k in range(len(parts[0])))

    def iterate(self, skip: int = 0):
        """This rank's micro-batches for the current epoch (A per optimizer step), normalised, on the device,
        those of the first `skip` optimizer steps left out (mid-epoch resume lands on the exact batch: the
        order and the crops are recomputed)."""
        order = self._blocks(rank_batches).to(self.device)
        if self.augment:
            dy, dx, flip = (p.to(self.device) for p in self._blocks(rank_augment, self.pad))
            if self.flips is not None:  # by image, not by position: see augment.alternating_flip
                from ..data.augment import alternating_flip

                flip = alternating_flip(self.flips.to(self.device), self.epoch)[order]
        for i in range(skip * self.accumulation, len(order)):
            index = order[i]
            if self.stack is None:
                x = self.images[index]  # on the host already: this path runs only there
                if self.augment:
                    x = random_flip(random_crop(x, self.pad, dy[i], dx[i]), flip[i])
            elif self.augment:
                x = gather_crop_flip(self.stack, index, dy[i], dx[i], flip[i], self.size)
            else:
                x = self.stack[index]
            if self.channels_last:  # convert the uint8 batch (1 byte/value); the float ops keep the layout
                x = x.contiguous(memory_format=torch.channels_last)
            yield normalize_batch(x, self.mean, self.std), self.labels[index]
