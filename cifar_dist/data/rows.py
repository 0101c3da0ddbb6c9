"""A split's images as rows of the dataset's array picked by an index, gathered only when read: the
training and validation splits of a memory-mapped image-folder cache stay in the page cache that every
rank on the machine shares, instead of each rank copying 80 % and 20 % of the images.

    rows = Rows(images, torch.tensor([5, 2, 9]))
    rows[0:2]          # images[[5, 2]]: a tensor, the two images copied now
    rows[1]            # images[2]: a view
    gathered(rows)     # images[[5, 2, 9]]: all of them, for a loader that keeps its own copy anyway
    channel_stats(rows)  # per-channel mean and std of x/255, in chunks (no float copy of the split)
"""

from __future__ import annotations

import torch


class Rows:
    """`base[index]` without the copy: len, shape, dtype and indexing (an int, a slice, an index
    tensor) as on that tensor; every read gathers just what it asks for."""

    def __init__(self, base: torch.Tensor, index: torch.Tensor):
        self.base, self.index = base, index.to(torch.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self.base[int(self.index[key])]
        return self.base[self.index[key]]


def gathered(images: Rows | torch.Tensor) -> torch.Tensor:
    """A tensor of every row (a copy for Rows; a tensor is returned as it is)."""
    return images.base[images.index] if isinstance(images, Rows) else images


def channel_stats(images: Rows | torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std of uint8 images scaled to [0, 1], what
    `x.float().div(255).mean/std(dim=(0, 2, 3))` gives, from float64 sums over `chunk` images at a time:
    50,000 CIFAR images as one float32 copy would take 614 MB, a chunk takes 25 MB.
    std² = (Σx² − n·mean²) / (n − 1), with n = images · H · W values per channel."""
    n_img, c = len(images), images.shape[1]
    total, squares = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for lo in range(0, n_img, chunk):
        x = images[lo : lo + chunk].to(torch.float64).div_(255)
        total += x.sum(dim=(0, 2, 3))
        squares += x.square_().sum(dim=(0, 2, 3))
    n = n_img * images.shape[2] * images.shape[3]
    mean = total / n
    var = (squares - n * mean.square()) / max(n - 1, 1)
    return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().tolist())
