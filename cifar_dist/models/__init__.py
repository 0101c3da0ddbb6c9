"""The networks: the registry and its built-ins (`registry`), airbench's patch whitening (`whitening`),
a model's training FLOPs per image (`flops`).

`from cifar_dist.models import X` gets registry.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".registry", __name__), name)
