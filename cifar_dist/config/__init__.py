"""One config object, resolved once: each key declared in `schema` (`from cifar_dist.config import resolve,
Config`), how a key is declared and parsed (`keys`), the named recipes (`presets`), the rules across keys (`rules`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.config import X` keeps working for what schema.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".schema", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.config' has no attribute {name!r}") from None
