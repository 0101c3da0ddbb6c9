"""The training run: `from cifar_dist.train import train; train(cfg)` (`loop`), where the run is (`state`),
when best.pt and `last/` are written (`checkpoint`), how a global batch splits (`batching`), the loaders
(`loaders`, `tensor_loader`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.train import X` keeps working for what loop.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".loop", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.train' has no attribute {name!r}") from None
