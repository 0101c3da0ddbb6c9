"""Batch augmentation as pure functions of (images, random parameters): random crop with reflect
padding and horizontal flip, on uint8 NCHW batches, on whatever device the batch lives.

    from cifar_dist.data.augment import draw_crop_flip, random_crop, random_flip
    dy, dx, flip = draw_crop_flip(128, pad=4, generator=torch.Generator().manual_seed(0))
    x = random_flip(random_crop(x_u8, 4, dy, dx), flip)

The tensor loader uses the fused form: it stores the training images once padded and once
padded-and-mirrored (`mirrored_padded`), and `gather_crop_flip` then picks, crops and flips a
whole batch in ONE indexing op on a strided (unfold) view, with no per-sample Python and no
intermediate copies (several times faster than torch.gather or advanced indexing; docs/results.md).

Why reflect padding: airbench pads by reflection; it leaves no black frame for the network to
learn about and needs no mask. flip(crop(P, dy, dx)) == crop(flip(P), dy, 2·pad - dx), which is
what lets the mirrored copy replace a second pass over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw_crop_flip(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random parameters for n images: crop offsets dy, dx uniform in [0, 2·pad] (pad = no shift)
    and a flip flag with probability 1/2. A pure function of the generator's state."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return dy, dx, flip


def pad_reflect(x_u8: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 2·pad, W + 2·pad), reflected at the borders."""
    return F.pad(x_u8, (pad, pad, pad, pad), mode="reflect") if pad else x_u8


def _crop_view(padded: torch.Tensor, size: int) -> torch.Tensor:
    """(..., C, Hp, Wp) -> (..., C, Hp-size+1, Wp-size+1, size, size): every crop as a view, no copy."""
    return padded.unfold(-2, size, 1).unfold(-2, size, 1)


def random_crop(x_u8: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Reflect-pad each image by `pad`, then take the H×W window at (dy[i], dx[i])."""
    n, _, h, w = x_u8.shape
    assert h == w, "square images"
    view = _crop_view(pad_reflect(x_u8, pad), h)  # (N, C, 2p+1, 2p+1, H, W)
    return view[torch.arange(n, device=x_u8.device), :, dy.to(x_u8.device), dx.to(x_u8.device)]


def random_flip(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose flag is set."""
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def mirrored_padded(images_u8: torch.Tensor, pad: int) -> torch.Tensor:
    """(N, C, H, W) -> (2, N, C, H+2p, W+2p): [padded, padded and mirrored]; 2·(1+2p/H)² × the bytes
    (3.1× for CIFAR at pad 4: 40,000 training images take 384 MB)."""
    padded = pad_reflect(images_u8, pad)
    return torch.stack([padded, padded.flip(3)])


def gather_crop_flip(
    stack: torch.Tensor, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, size: int
) -> torch.Tensor:
    """Images `index` of a `mirrored_padded` stack, cropped at (dy, dx) and flipped where `flip`:
    the same result as random_flip(random_crop(images[index], pad, dy, dx), flip), in one op."""
    pad2 = stack.shape[-1] - size  # 2·pad
    view = _crop_view(stack, size)  # (2, N, C, 2p+1, 2p+1, size, size)
    f = flip.long()
    return view[f, index, :, dy, torch.where(flip, pad2 - dx, dx)]


def alternating_flip(first_epoch_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """Derandomised flips: each image is mirrored in epoch 0 by a coin (`first_epoch_flip`, indexed
    by image), then in every later epoch the opposite of the epoch before. Any two consecutive
    epochs show each image once each way; random flips repeat a view in half of them."""
    return first_epoch_flip ^ bool(epoch % 2)
