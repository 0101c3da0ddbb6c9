"""Image folders as a dataset: `--data.name=imagefolder --data.root=DIR`, where DIR holds
`train/<class>/*` and `test/<class>/*` (or DIR is a .tar, .tar.gz or .tar.xz of that layout).

    accelerate launch train.py --preset tutorial_fast --data.name=imagefolder \
        --data.root=../shared/data/cifar10-jpeg.tar.xz

Classes are the class folders' names in sorted order (train and test must name the same ones);
files are read in sorted order, any format Pillow reads, hidden files skipped. The images are
greyscale (1 channel) if every file is, else RGB (3). They are decoded once into uint8 arrays under
`data.cache_dir` (never inside data.root), keyed by a fingerprint of every file's relative path,
size and modification time plus `data.image_size`: adding, removing or changing a file makes a new
cache; an unchanged folder loads its cache (about a second for CIFAR-10's 60,000 images). An
archive is unpacked once into the cache folder, keyed by its path, size and modification time.
Both go through prepare.build_once, so jobs sharing the cache wait for one builder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .prepare import build_once

SPLITS = ("train", "test")
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz")
CACHE_FORMAT = 1  # bump when the cached arrays' layout changes: old caches are then rebuilt
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}  # Pillow modes read as one channel
FIX_CACHE = "set --data.cache_dir to a writable folder"


class ImageArrayDataset(Dataset):
    """uint8 NCHW images held in memory, served one at a time as torchvision's CIFAR10 serves
    them: a PIL image through `transform` (the tutorial's ToTensor + Normalize), and the label."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str], transform=None):
        self.images, self.targets, self.classes, self.transform = images, labels.tolist(), classes, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        x = self.images[i].numpy()
        img = Image.fromarray(x[0], mode="L") if x.shape[0] == 1 else Image.fromarray(x.transpose(1, 2, 0))
        return (self.transform(img) if self.transform else img), self.targets[i]


def _key(*parts) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


def _label(path: Path) -> str:
    """A readable folder-name prefix for a source: its name without archive suffixes."""
    name = path.resolve().name
    for suffix in ARCHIVES:
        name = name.removesuffix(suffix)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "root"


def _replace_older(current: Path, prefix: str) -> None:
    """Remove this source's previous caches (same prefix, other fingerprint): they would only fill the disk."""
    for old in current.parent.glob(f"{prefix}*"):
        if old != current and old.is_dir() and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVES)


def _extract_data_only(tf: tarfile.TarFile, dest: Path) -> None:
    """Extract with tarfile's "data" filter: no absolute paths, no links out, no devices. Pythons
    before 3.11.4 (Debian 12's 3.11.2) have no filters: there the same refusal is checked here."""
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    for m in tf.getmembers():
        if Path(m.name).is_absolute() or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
            raise ValueError(f"member {m.name!r} is not a plain file or folder inside the archive")
    tf.extractall(dest)


def unpack(archive: Path, cache_dir: Path) -> Path:
    """Unpack `archive` once into cache_dir/unpacked/ and return the folder holding train/ and test/."""
    st = archive.stat()
    prefix = f"{_label(archive)}-{_key(archive.resolve())[:8]}-"
    target = cache_dir / "unpacked" / f"{prefix}{_key(st.st_size, st.st_mtime_ns)[:12]}"

    def build(tmp: Path) -> None:
        try:
            with tarfile.open(archive) as tf:
                _extract_data_only(tf, tmp)  # no absolute paths, links out or devices; also on Python 3.11.2
        except (tarfile.TarError, EOFError, ValueError) as e:
            raise UserError(
                f"data.root {archive} is not a readable tar archive ({e}); "
                f"give a .tar/.tar.gz/.tar.xz of train/<class>/ and test/<class>/ or a folder"
            ) from None

    build_once(target, build, f"the unpacked {archive.name}", FIX_CACHE)
    _replace_older(target, prefix)
    inner = [p for p in target.iterdir() if p.is_dir()]
    if not (target / "train").is_dir() and len(inner) == 1:  # an archive of one top folder: DIR/train/...
        return inner[0]
    return target


def _entries(folder: str) -> list[os.DirEntry]:
    """The folder's entries in name order, hidden ones (.DS_Store, .ipynb_checkpoints) left out."""
    with os.scandir(folder) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _files(folder: str, skipped: list[str] | None = None) -> list[os.DirEntry]:
    """Every image file under `folder`, recursively, in a fixed order (os.scandir: one stat per file,
    about 6x faster than pathlib on CIFAR-10's 60,000 files). An image is what torchvision's
    ImageFolder takes: a name ending in one of its IMG_EXTENSIONS (any case); the other files
    (Thumbs.db, desktop.ini, notes.txt) go into `skipped`. A file named .jpg that does not decode is
    still an error (decode names it)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    out = []
    for e in _entries(folder):
        if e.is_dir():
            out += _files(e.path, skipped)
        elif e.is_file():
            if e.name.lower().endswith(IMG_EXTENSIONS):
                out.append(e)
            elif skipped is not None:
                skipped.append(e.path)
    return out


def skipped_line(skipped: list[str]) -> str:
    """One line for the files scan left out, or '' when there were none."""
    if not skipped:
        return ""
    names = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return f"imagefolder: skipped {len(skipped)} file(s) that are not images by their extension ({names})"


def scan(root: Path, skipped: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]], int, str]:
    """-> (classes, [(file, label)] for train then test, number of train files, fingerprint of the
    files), or a one-line UserError for a layout that is not train/<class>/ + test/<class>/. Files
    that are not images by their extension are left out and appended to `skipped`."""
    split_classes = {}
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            raise UserError(
                f"data.root {root} has no {split}/ folder; an image folder holds train/<class>/ and "
                f"test/<class>/ (one folder of images per class)"
            )
        split_classes[split] = [e.name for e in _entries(str(folder)) if e.is_dir()]
        if not split_classes[split]:
            raise UserError(f"{folder} holds no class folders; put each class's images in {folder}/<class name>/")
    if split_classes["train"] != split_classes["test"]:
        a, b = set(split_classes["train"]), set(split_classes["test"])
        raise UserError(
            f"train/ and test/ in {root} name different classes: only in train/: "
            f"{', '.join(sorted(a - b)) or '-'}; only in test/: {', '.join(sorted(b - a)) or '-'}; "
            f"both need one folder per class with the same names"
        )
    classes, files, lines, cut = split_classes["train"], [], [], len(str(root)) + 1
    for split in SPLITS:
        for label, name in enumerate(classes):
            found = _files(str(root / split / name), skipped)
            if not found:
                raise UserError(
                    f"class folder {root / split / name} holds no images; add some or remove the folder "
                    f"(from train/ and test/ alike)"
                )
            for e in found:
                st = e.stat()
                lines.append(f"{e.path[cut:]}\t{st.st_size}\t{st.st_mtime_ns}")
                files.append((e.path, label))
        if split == "train":
            n_train = len(files)
    return classes, files, n_train, _key(*lines)


def _open(path: str, image_size: int):
    """Decode one file -> (HWC uint8 array, grey?), resized to image_size×image_size when > 0."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            grey = im.mode in GREY_MODES
            im = im.convert("L" if grey else "RGB")
            if image_size:
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(im), grey
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UserError(
            f"{path} is not an image Pillow can read ({type(e).__name__}: {str(e)[:80]}); "
            f"remove it from the image folder"
        ) from None


def decode(files: list[tuple[str, int]], image_size: int) -> np.ndarray:
    """Every file as one uint8 (N, C, H, W) array; C = 1 only if every file is greyscale."""
    first, grey_all, out = None, True, None
    for i, (path, _) in enumerate(files):
        arr, grey = _open(path, image_size)
        h, w = arr.shape[:2]
        if out is None:
            first = path
            out = np.empty((len(files), 3, h, w), np.uint8)  # greys are copied into all three channels
        if arr.shape[:2] != out.shape[2:]:
            raise UserError(
                f"images differ in size: {first} is {out.shape[3]}×{out.shape[2]} but {path} is {w}×{h}; "
                f"resize every image while caching with --data.image_size=N (e.g. "
                f"--data.image_size={min(out.shape[2], out.shape[3], h, w)})"
            )
        out[i] = arr[None] if grey else arr.transpose(2, 0, 1)
        grey_all &= grey
    _, _, h, w = out.shape
    if h != w:
        raise UserError(
            f"the images are {w}×{h}, not square (e.g. {first}); the models need square input: "
            f"resize every image while caching with --data.image_size=N (e.g. --data.image_size={min(h, w)})"
        )
    return np.ascontiguousarray(out[:, :1]) if grey_all else out


def load_imagefolder(
    cfg, announce: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """-> (train uint8 NCHW, train labels, test uint8 NCHW, test labels, classes), decoding only
    when the cache for this exact set of files and data.image_size is missing."""
    source, cache_dir = Path(cfg.data.root), Path(cfg.data.cache_dir)
    if not source.exists():
        raise UserError(
            f"data.root {source} does not exist; point it at a folder holding train/<class>/ and "
            f"test/<class>/, or at a .tar/.tar.gz/.tar.xz of one"
        )
    if source.is_dir() and cache_dir.resolve().is_relative_to(source.resolve()):
        raise UserError(
            f"data.cache_dir {cache_dir} is inside data.root {source}, which is only ever read; "
            f"choose a cache folder outside it"
        )
    if is_archive(source):  # an archive's files change only with it: no need to list them on a cache hit
        st = source.stat()
        listing, fingerprint = None, _key("archive", st.st_size, st.st_mtime_ns)
    elif source.is_dir():
        skipped: list[str] = []
        listing = scan(source, skipped)
        fingerprint = _key(listing[3], *skipped)
    else:
        raise UserError(f"data.root {source} is neither a folder nor a .tar/.tar.gz/.tar.xz archive")
    # One cache per (source, image_size); a new fingerprint (files changed) replaces that one only,
    # so jobs reading the same source at another image_size keep theirs.
    prefix = f"{_label(source)}-{_key(source.resolve())[:8]}-s{cfg.data.image_size}-"
    target = cache_dir / "imagefolder" / f"{prefix}{_key(CACHE_FORMAT, fingerprint)[:16]}"

    def build(tmp: Path) -> None:
        left_out: list[str] = []
        classes, files, n_train, _ = listing or scan(unpack(source, cache_dir), left_out)
        images = decode(files, cfg.data.image_size)
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", np.array([label for _, label in files], np.int64))
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "source": str(source.resolve()),
                    "classes": classes,
                    "n_train": n_train,
                    "image_size": cfg.data.image_size,
                    "skipped": skipped if listing else left_out,
                }
            )
        )

    build_once(target, build, "the image-folder cache", FIX_CACHE)
    _replace_older(target, prefix)
    meta = json.loads((target / "meta.json").read_text())
    line = skipped_line(meta.get("skipped", []))
    if line and announce:
        print(line, file=sys.stderr, flush=True)
    # Memory-mapped, not read: the ranks of a machine (and its other jobs) share the page cache's one copy.
    # Copy-on-write ("c"), so the tensor is writable as torch wants; nothing writes to it.
    images = torch.from_numpy(np.load(target / "images.npy", mmap_mode="c"))
    labels = torch.from_numpy(np.load(target / "labels.npy"))
    n = meta["n_train"]
    return images[:n], labels[:n], images[n:], labels[n:], meta["classes"]
