"""The optimizer and what steers it: SGD/AdamW and their parameter groups (`optimizers`), the learning
rate of a step (`schedules`), the moving average of the weights (`ema`), airbench's Lookahead (`lookahead`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.optim import X` keeps working for what optimizers.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".optimizers", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.optim' has no attribute {name!r}") from None
