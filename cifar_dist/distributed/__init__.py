"""Processes and devices: the accelerator (`accelerator`), GPUs asked for against GPUs seen (`devices`),
what every rank calls together (`collectives`), one-line messages for failed writes and dead peers
(`faults`), the OpenMP wait policy chosen before torch starts (`wait_policy`), stop requests (`preemption`).

`from cifar_dist.distributed import X` gets accelerator.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".accelerator", __name__), name)
