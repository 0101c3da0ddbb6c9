"""Processes and devices: the accelerator (`accelerator`), GPUs asked for against GPUs seen (`devices`),
what every rank calls together (`collectives`), one-line messages for failed writes and dead peers
(`faults`), the OpenMP wait policy chosen before torch starts (`wait_policy`), stop requests (`preemption`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.distributed import X` keeps working for what accelerator.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".accelerator", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.distributed' has no attribute {name!r}") from None
