"""The `synthetic` dataset: a small learnable set written in CIFAR-10's exact python format and read
back by torchvision's own CIFAR-10 reader (its md5 check kept live), for tests and smoke runs.

    from cifar_dist.synthetic import write_synthetic_cifar10
    write_synthetic_cifar10(Path("data/synthetic_500_101"), 500, 101)
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np

from .prepare import build_once

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SYNTHETIC_DATA_SEED = 1234  # the synthetic images do not change with cfg.seed; the split does


def _class_templates(rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """One smooth colour pattern per class: 4×4 random colours upsampled to 32×32, plus a stripe."""
    coarse = rng.uniform(80, 175, size=(num_classes, 3, 4, 4))
    big = coarse.repeat(8, axis=2).repeat(8, axis=3)
    for c in range(num_classes):  # a class-specific stripe orientation/position makes classes separable
        if c % 2:
            big[c, :, (c * 3) % 32 : (c * 3) % 32 + 2, :] += 40
        else:
            big[c, :, :, (c * 3) % 32 : (c * 3) % 32 + 2] += 40
    return big


def _synthetic_arrays(n: int, rng: np.random.Generator, templates: np.ndarray) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, len(templates), size=n)
    noise = rng.normal(0, 80, size=(n, 3, 32, 32))
    brightness = rng.uniform(-50, 50, size=(n, 1, 1, 1))
    shift = rng.integers(-6, 7, size=n)
    imgs = templates[labels] + noise + brightness
    for i in range(n):  # small random shifts so memorising pixels is not enough
        imgs[i] = np.roll(imgs[i], shift[i], axis=2)
    data = np.clip(imgs, 0, 255).astype(np.uint8).reshape(n, 3072)  # CIFAR rows: 1024 R, 1024 G, 1024 B
    return data, [int(x) for x in labels]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_synthetic_cifar10(
    root: Path, n_train: int = 5000, n_test: int = 1000, seed: int = SYNTHETIC_DATA_SEED
) -> Path:
    """Write `root/cifar-10-batches-py/` exactly as CIFAR-10's python tarball lays it out
    (five `data_batch_i` pickles, `test_batch`, `batches.meta`; str keys, as torchvision reads them
    with encoding="latin1"), plus `manifest.json` with each file's md5; once, however many jobs
    ask at the same moment (prepare.build_once)."""

    def build(tmp: Path) -> None:
        rng = np.random.default_rng(seed)
        templates = _class_templates(rng, 10)
        train, train_labels = _synthetic_arrays(n_train, rng, templates)
        test, test_labels = _synthetic_arrays(n_test, rng, templates)
        bounds = np.linspace(0, n_train, 6).astype(int)
        for i in range(5):
            lo, hi = bounds[i], bounds[i + 1]
            entry = {
                "batch_label": f"training batch {i + 1} of 5",
                "labels": train_labels[lo:hi],
                "data": train[lo:hi],
                "filenames": [f"synthetic_{j:06d}.png" for j in range(lo, hi)],
            }
            with open(tmp / f"data_batch_{i + 1}", "wb") as f:
                pickle.dump(entry, f, protocol=2)
        with open(tmp / "test_batch", "wb") as f:
            pickle.dump(
                {
                    "batch_label": "testing batch 1 of 1",
                    "labels": test_labels,
                    "data": test,
                    "filenames": [f"synthetic_test_{j:06d}.png" for j in range(n_test)],
                },
                f,
                protocol=2,
            )
        with open(tmp / "batches.meta", "wb") as f:
            pickle.dump(
                {"num_cases_per_batch": int(bounds[1]), "label_names": CIFAR10_CLASSES, "num_vis": 3072}, f, protocol=2
            )
        manifest = {p.name: _md5(p) for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(
            json.dumps({"n_train": n_train, "n_test": n_test, "seed": seed, "md5": manifest})
        )

    return build_once(
        root / "cifar-10-batches-py", build, "the synthetic dataset", "set --data.root to a writable folder"
    )


def synthetic_root(cfg) -> Path:
    return Path(cfg.data.root) / f"synthetic_{cfg.data.synthetic_train_size}_{cfg.data.synthetic_test_size}"


def ensure_synthetic(cfg) -> Path:
    root = synthetic_root(cfg)
    write_synthetic_cifar10(root, cfg.data.synthetic_train_size, cfg.data.synthetic_test_size)
    return root


def synthetic_class(root: Path):
    """torchvision's CIFAR10 with the md5 sums of the files we wrote, so its integrity check stays live."""
    from torchvision.datasets import CIFAR10

    md5 = json.loads((root / "cifar-10-batches-py" / "manifest.json").read_text())["md5"]

    class SyntheticCIFAR10(CIFAR10):
        train_list = [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
        test_list = [["test_batch", md5["test_batch"]]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}

    return SyntheticCIFAR10
