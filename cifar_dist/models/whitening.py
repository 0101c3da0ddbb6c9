"""airbench's network methods (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU") as pure
functions, each behind its own config switch (docs/config.md):

    model.whiten          patch_whitening_filters: the first layer's 2×2 filters from the data, frozen
    model.dirac_init      dirac_init_: each conv starts as the identity on its input channels

and, for the trainer, `whiten_from_data` (model.whiten). The network they belong to (`airbench`) and
BatchNorm without a learned scale (model.bn_learn_scale=false) live in registry.py; airbench's other
methods where their concern is: Lookahead in optim/lookahead.py, alternating flips in data/augment.py,
the norm biases' larger learning rate (optim.bias_lr_scale) in optim/optimizers.py.
"""

from __future__ import annotations

import torch
from torch import nn


def image_patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) float -> (N·(H-size+1)·(W-size+1), C·size·size): every size×size patch, flattened
    in the order of a conv weight's (C, size, size)."""
    n, c = images.shape[:2]
    p = images.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H', W', size, size)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size).double()


def patch_whitening_filters(images: torch.Tensor, size: int = 2, eps: float = 5e-4) -> torch.Tensor:
    """(2·C·size², C, size, size) conv filters that whiten the images' size×size patches.

    With Σ = E[p pᵀ] the patches' second-moment matrix (normalised images have mean ~0) and Σ = V Λ Vᵀ,
    the filters vᵢ / sqrt(λᵢ + eps) map a patch to coordinates of (about) unit variance that are
    uncorrelated; their negatives follow, so a GELU after the layer keeps both signs of each
    coordinate (airbench's 24 channels from 12 filters for RGB at 2×2). Largest eigenvalue first.
    """
    c = images.shape[1]
    p = image_patches(images, size)
    cov = p.T @ p / p.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T.reshape(-1, c, size, size)
    return torch.cat([filters, -filters]).float()


@torch.no_grad()
def dirac_init_(weight: torch.Tensor) -> torch.Tensor:
    """A conv weight (C_out, C_in, k, k): its first min(C_out, C_in) filters become the identity
    (output channel i = input channel i, the centre tap 1); the other filters keep their random
    init. The network starts close to passing its input through, which lets a short run train
    deep stacks of convs at a high learning rate. In place; returns the weight."""
    nn.init.dirac_(weight[: weight.shape[1]])
    return weight


# How many training images model.whiten's filters are computed from (airbench's 5,000).
WHITEN_IMAGES = 5000


def whiten_from_data(model: nn.Module, images: torch.Tensor) -> None:
    """model.whiten: the `whiten` layer's filters whiten the 2×2 patches of `images` (the first
    WHITEN_IMAGES training images, normalised, not augmented; the same on every rank) and are frozen;
    its bias still trains. The caller normalises: the model does not reach into data/."""
    layer = model.whiten
    x = images
    with torch.no_grad():
        layer.weight.copy_(patch_whitening_filters(x, layer.kernel_size[0]))
    layer.weight.requires_grad_(False)
