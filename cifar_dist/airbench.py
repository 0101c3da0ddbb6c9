"""airbench's methods (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU") as pure
functions, each behind its own config switch (docs/config.md):

    model.whiten          patch_whitening_filters: the first layer's 2×2 filters from the data, frozen
    model.dirac_init      dirac_init_: each conv starts as the identity on its input channels
    optim.lookahead       Lookahead: slow weights pulled towards the fast ones every few steps
    data.alternate_flip   alternating_flip: an image is mirrored in every other epoch, not at random

and, for the trainer, `whiten_from_data` (model.whiten). The network they belong to (`airbench`) and
BatchNorm without a learned scale (model.bn_learn_scale=false) live in models.py; the norm biases'
larger learning rate (optim.bias_lr_scale) in optim.py.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import normalize_batch


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


def alternating_flip(first_epoch_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """Derandomised flips: each image is mirrored in epoch 0 by a coin (`first_epoch_flip`, indexed
    by image), then in every later epoch the opposite of the epoch before. Any two consecutive
    epochs show each image once each way; random flips repeat a view in half of them."""
    return first_epoch_flip ^ bool(epoch % 2)


def lookahead_decay(step: int, total_steps: int, every: int = 5) -> float:
    """How much of the slow weights a Lookahead sync at `step` keeps: 0.95^every · (step/total)³, so
    the early run is plain SGD (decay 0: slow = fast) and the end averages over ~20 syncs."""
    return 0.95**every * (min(step, total_steps) / max(total_steps, 1)) ** 3


@torch.no_grad()
def lookahead_step(slow: list[torch.Tensor], fast: list[torch.Tensor], decay: float) -> None:
    """slow ← decay·slow + (1 − decay)·fast, then fast ← slow (in place). decay 0 copies fast into
    slow; decay 1 puts the slow weights back into the network (the run's last step). Two multi-tensor ops
    (torch._foreach_*), not two per tensor: on a GPU, two kernel launches per sync rather than ~70."""
    if len(slow) != len(fast):
        raise ValueError(f"lookahead_step: {len(slow)} slow tensors for {len(fast)} fast ones")
    torch._foreach_lerp_(slow, fast, 1.0 - decay)
    torch._foreach_copy_(fast, slow)


class Lookahead:
    """Lookahead over a model's floating-point parameters and buffers (BatchNorm's running statistics
    too): every `every` steps, `lookahead_step` with decay `lookahead_decay`; at the last step the slow
    weights replace the network's. A checkpointed object (state_dict/load_state_dict): resume is exact."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5):
        self.tensors = [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self.fast = [t.detach() for t in self.tensors]  # views of the same storage, made once (not per sync)
        self.slow = [t.clone() for t in self.fast]
        self.total_steps, self.every = total_steps, every

    def after_step(self, step: int) -> None:
        """`step`: optimizer steps completed."""
        if step >= self.total_steps:
            lookahead_step(self.slow, self.fast, 1.0)
        elif step % self.every == 0:
            lookahead_step(self.slow, self.fast, lookahead_decay(step, self.total_steps))

    def state_dict(self) -> dict:
        return {"slow": [s.clone() for s in self.slow]}

    def load_state_dict(self, d: dict) -> None:
        for s, saved in zip(self.slow, d["slow"], strict=True):
            s.copy_(saved)


def whiten_from_data(model: nn.Module, train_images_u8: torch.Tensor, mean, std, images: int = 5000) -> None:
    """model.whiten: the `whiten` layer's filters whiten the 2×2 patches of the first `images` training
    images (normalised, not augmented; the same on every rank) and are frozen; its bias still trains."""
    layer = model.whiten
    x = normalize_batch(train_images_u8[:images], mean, std)
    with torch.no_grad():
        layer.weight.copy_(patch_whitening_filters(x, layer.kernel_size[0]))
    layer.weight.requires_grad_(False)
