"""The datasets: the registry and readers (`datasets`), the synthetic set, folders of images
(`imagefolder`), preparing a data folder once under a lock (`prepare`), a split's rows (`rows`) and batch
augmentation (`augment`)."""

import importlib


def __getattr__(name: str):
    # `from cifar_dist.data import X` keeps working for what datasets.py defines, loaded on first use so
    # that importing one module of this folder does not import them all (torch, for one).
    if name.startswith("__"):  # introspection (copy, pickle, pytest) asks for dunders: no import for them
        raise AttributeError(name)
    module = importlib.import_module(".datasets", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module 'cifar_dist.data' has no attribute {name!r}") from None
