"""Training compute, counted rather than timed: FLOPs per training image, forward + backward, as
`torch.utils.flop_counter` sees the real model run one step. Hardware-independent, so a run on two CPU
cores and one on a GPU compare: a run's compute is this times the images it trained on.

    from cifar_dist.flops import train_flops_per_image
    train_flops_per_image(model, in_channels=3, image_size=32)   # tutorial_cnn: 19,027,248

What is counted is what the counter counts: matrix multiplies and convolutions (2 FLOPs per
multiply-add), forward and the backward that training runs (no gradient for the input images, so
the first layer's backward computes only its weight gradient). Norms, activations, pools, the loss
and the optimizer are left out, as in published FLOP figures (airbench's 0.36 PFLOP among them).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def train_flops_per_image(model: nn.Module, in_channels: int, image_size: int, batch: int = 2) -> float:
    """FLOPs of one training step on `batch` random images, per image. Runs on a copy of the model in
    training mode, under a forked RNG: the model, its batch-norm statistics and the run's random
    streams are left exactly as they were."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randn(batch, in_channels, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter:
            net(x).float().sum().backward()
    return counter.get_total_flops() / batch


def pflops(flops_per_image: float, images: int) -> float:
    """Compute of `images` training images, in PFLOP (10^15 FLOPs)."""
    return flops_per_image * images / 1e15
