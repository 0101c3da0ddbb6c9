"""The networks: the registry and its built-ins (`registry`), airbench's patch whitening (`whitening`),
a model's training FLOPs per image (`flops`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.models import X` keeps working for what registry.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".registry", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.models' has no attribute {name!r}") from None
