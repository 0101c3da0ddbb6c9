"""Your own network for cifar-dist: any function (or nn.Module class) that takes num_classes (and,
if it wants them, in_channels and image_size) plus your --model.kwargs, and returns an nn.Module
whose output is [batch, num_classes] logits.

    PYTHONPATH=examples python train.py --model.name=my_model:small_cnn --model.kwargs="{width: 32}"
"""

from torch import nn


def small_cnn(num_classes: int, in_channels: int = 3, width: int = 32) -> nn.Module:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(in_channels, width),
        *block(width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
