"""Model registry. Every model takes (in_channels, image_size, num_classes) so one recipe runs on
CIFAR (3×32×32) and Fashion-MNIST (1×28×28).

    from cifar_dist.models import build_model
    model = build_model("seed_cnn", in_channels=3, image_size=32, num_classes=10)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


class SeedCNN(nn.Module):
    """The PyTorch CIFAR-10 tutorial's CNN, layer for layer.

    3 conv layers (3→16→32→64, 3×3, padding 1), each ReLU + 2×2 max-pool; dropout 0.3; fc 1024→500→10.
    For 3×32×32 input: 448 + 4,640 + 18,496 + 512,500 + 5,010 = 541,094 parameters.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        side = image_size // 2 // 2 // 2  # three 2×2 pools: 32 → 4, 28 → 3
        self.fc1 = nn.Linear(64 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = self.pool(F.relu(self.conv3(x)))
        # The tutorial's x.view(-1, 64*4*4) fails on channels_last tensors; flatten is the same maths.
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = F.relu(self.fc1(x))
        x = self.dropout(x)
        return self.fc2(x)


@register("seed_cnn")
def seed_cnn(in_channels: int, image_size: int, num_classes: int, dropout: float = 0.3, **_) -> nn.Module:
    return SeedCNN(in_channels, image_size, num_classes, dropout)


def build_model(name: str, in_channels: int, image_size: int, num_classes: int, **kwargs) -> nn.Module:
    if name not in MODELS:
        from .errors import UserError

        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](in_channels=in_channels, image_size=image_size, num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
