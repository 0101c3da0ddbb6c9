"""Experiment tracking: W&B behind a small interface, or nothing (`tracker`), TensorBoard and MLflow
(`scalar`), an offline W&B run read back (`records`).

`from cifar_dist.tracking import X` gets tracker.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".tracker", __name__), name)
