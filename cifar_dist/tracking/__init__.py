"""Experiment tracking: W&B behind a small interface, or nothing (`tracker`), TensorBoard and MLflow
(`scalar`), an offline W&B run read back (`records`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.tracking import X` keeps working for what tracker.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".tracker", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.tracking' has no attribute {name!r}") from None
