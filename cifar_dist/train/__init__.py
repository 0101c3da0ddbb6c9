"""The training run: `from cifar_dist.train import train; train(cfg)` (`loop`), where the run is (`state`),
when best.pt and `last/` are written (`checkpoint`), how a global batch splits (`batching`), the loaders
(`loaders`, `tensor_loader`).

`from cifar_dist.train import X` gets loop.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".loop", __name__), name)
