"""Small image-folder trees for the tests: train/<class>/ and test/<class>/ of PNG files, each
class a colour of its own plus noise, so a model learns them in a few steps."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

CLASSES = ("apple", "banana", "cherry")


def write_image(path: Path, label: int, rng: np.random.Generator, size: int = 8, grey: bool = False) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.array([[200, 40, 40], [220, 200, 60], [90, 20, 60]][label % 3], float)
    pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    (image.convert("L") if grey else image).save(path)


def write_tree(
    root: Path, n_train: int = 12, n_test: int = 4, size: int = 8, grey: bool = False, classes=CLASSES, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for label, name in enumerate(classes):
            for i in range(n):
                write_image(root / split / name / f"{i:03d}.png", label, rng, size, grey)
    return root


def write_tar(folder: Path, archive: Path, top: str = "") -> Path:
    """`folder`'s train/ and test/ as a tar archive (compression from the suffix), optionally inside `top/`."""
    mode = {".xz": "w:xz", ".gz": "w:gz"}.get(archive.suffix, "w")
    with tarfile.open(archive, mode) as tf:
        for split in ("train", "test"):
            tf.add(folder / split, arcname=f"{top}/{split}" if top else split)
    return archive
