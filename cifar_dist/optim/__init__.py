"""The optimizer and what steers it: SGD/AdamW and their parameter groups (`optimizers`), the learning
rate of a step (`schedules`), the moving average of the weights (`ema`), airbench's Lookahead (`lookahead`).

`from cifar_dist.optim import X` gets optimizers.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".optimizers", __name__), name)
