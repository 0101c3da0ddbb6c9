"""The datasets: the registry and readers (`datasets`), the synthetic set, folders of images
(`imagefolder`), preparing a data folder once under a lock (`prepare`), a split's rows (`rows`) and batch
augmentation (`augment`).

`from cifar_dist.data import X` gets datasets.py's X, imported on first use, so that importing one
module of this folder imports no other (torch, for one).
"""

import importlib


def __getattr__(name: str):
    return getattr(importlib.import_module(".datasets", __name__), name)
