"""One config object, resolved once: each key declared in `schema` (`from cifar_dist.config import resolve,
Config`), how a key is declared and parsed (`keys`), the named recipes (`presets`), the rules across keys (`rules`).

`from cifar_dist.config import X` gets schema.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".schema", __name__), name)
