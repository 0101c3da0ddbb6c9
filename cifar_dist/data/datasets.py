"""Datasets, in a registry (DATASETS, like models.MODELS): CIFAR-10/100 through torchvision's
on-disk format, Fashion-MNIST from Debian's `dataset-fashion-mnist`, `synthetic` (synthetic.py: a
small learnable set in CIFAR-10's exact python format, read back by torchvision's own reader), and
`imagefolder`, folders of image files (imagefolder.py).

    from cifar_dist.data import load_data
    bundle = load_data(cfg, accelerator)   # every rank gets the same seeded 80/20 split
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import UserError, first_line
from .prepare import build_once, has_marker
from .rows import Rows, channel_stats
from .synthetic import ensure_synthetic, synthetic_class

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


@dataclass
class DataBundle:
    name: str
    classes: list[str]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_images: Rows | torch.Tensor  # uint8 (N, C, H, W), the training part of the split
    train_labels: torch.Tensor  # int64 (N,)
    val_images: Rows | torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    train_set: Dataset  # the tutorial path: torchvision dataset + ToTensor + Normalize, per sample
    train_indices: torch.Tensor  # indices of train_images in the full training set
    val_indices: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[Rows | torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) of the "train", "val" or "test" split: the one place a split is picked.
        Images index like a tensor (rows.Rows): `images[lo:hi]` is a tensor."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"no split {name!r}; train, val or test")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


# --------------------------------------------------------------------------- readers


def _open_cifar(cls, root: Path, train: bool, label: str, transform=None):
    """torchvision's reader, never downloading (_prepare_cifar has done that): it md5-checks every file."""
    synthetic = label.startswith("synthetic")
    try:
        return cls(str(root), train=train, download=False, transform=transform)
    except RuntimeError as e:  # "Dataset not found or corrupted"
        if synthetic:  # written by us, md5-checked against its manifest: regenerate rather than download
            raise UserError(
                f"{label} under {root} is corrupted ({e}); delete {root} and run again (it is rewritten)"
            ) from None
        raise UserError(
            f"{label} not found or corrupted under {root} ({e}); place {cls.filename} in {root}/ and "
            f"run again (it is unpacked there; with data.download=true it is downloaded)"
        ) from None
    except ValueError as e:  # the pickles load but their arrays do not reshape to N×3×32×32
        raise UserError(
            f"{label} files under {root} hold data of the wrong shape ({first_line(e, 100)}); "
            f"they are not CIFAR batches: delete them and {'run again' if synthetic else 'download again'}"
        ) from None
    except OSError as e:
        raise UserError(
            f"cannot read {label} under {root} ({e.strerror or e}); check the folder's permissions"
        ) from None
    except (pickle.UnpicklingError, EOFError, KeyError, UnicodeDecodeError) as e:
        raise UserError(
            f"{label} files under {root} are corrupt ({type(e).__name__}); delete them and download again"
        ) from None


def _prepare_fashion_mnist(root: Path) -> None:
    """torchvision wants the four idx files uncompressed under <root>/FashionMNIST/raw/. Debian ships
    them gzipped with other checksums than torchvision's, so we decompress them ourselves and never
    let torchvision download; once, however many jobs sharing data.root ask at the same moment."""
    raw = root / "FashionMNIST" / "raw"

    def complete(
        folder: Path,
    ) -> bool:  # also a folder filled by hand, or by earlier versions (file by file, atomically)
        return has_marker(folder) or all((folder / f).is_file() for f in FASHION_FILES)

    if complete(raw):
        return
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").exists() for f in FASHION_FILES):
        raise UserError(
            f"Fashion-MNIST not found in {raw} nor in {DEBIAN_FASHION_MNIST}; install it with "
            f"'apt-get install dataset-fashion-mnist' or place the four idx files in {raw}/"
        )

    def build(tmp: Path) -> None:
        for f in FASHION_FILES:
            with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src, open(tmp / f, "wb") as dst:
                shutil.copyfileobj(src, dst)

    build_once(raw, build, "Fashion-MNIST's files", "set --data.root to a writable folder", is_complete=complete)


def _prepare_cifar(cls, root: Path, download: bool, label: str) -> None:
    """Download (torchvision's own code: URL, md5 of the archive) and unpack CIFAR-10/100 into
    root/<base_folder> once, however many jobs sharing data.root ask at the same moment. The archive
    is downloaded into root/ under the lock (a partial one fails its md5 and is fetched again);
    an archive placed there by hand is unpacked without a download."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    folder = root / cls.base_folder

    def complete(f: Path) -> bool:  # the marker, or torchvision's own per-file md5 check (a folder unpacked by hand)
        return has_marker(f) or all(check_integrity(str(f / name), md5) for name, md5 in cls.train_list + cls.test_list)

    if complete(folder) or not (download or (root / cls.filename).is_file()):
        return  # ready, or nothing to prepare it from: the reader says what is missing
    if not (root / cls.filename).is_file():
        # Offline: say so before the lock, so a failed start leaves no data folder or lock file behind.
        _check_download(cls, root, label)

    def build(tmp: Path) -> None:
        try:
            download_and_extract_archive(
                cls.url, download_root=str(root), extract_root=str(tmp), filename=cls.filename, md5=cls.tgz_md5
            )
        except OSError as e:  # URLError is an OSError: no network
            raise UserError(_offline_message(cls, root, label, e)) from None
        except RuntimeError as e:  # the archive's md5 differs from torchvision's
            raise UserError(f"{root / cls.filename} is not {label}'s archive ({e}); delete it and run again") from None
        for p in (tmp / cls.base_folder).iterdir():  # the archive holds <base_folder>/...: its files are the folder's
            os.replace(p, tmp / p.name)
        (tmp / cls.base_folder).rmdir()

    build_once(folder, build, f"{label}'s files", "set --data.root to a writable folder", is_complete=complete)


def _offline_message(cls, root: Path, label: str, e: OSError) -> str:
    return (
        f"{label} is not in {root} and the download failed ({getattr(e, 'reason', e)}; this machine seems "
        f"offline); place {cls.filename} (from {cls.url}) in {root}/ and run again, or train on images in "
        "folders: --data.name=imagefolder --data.root=DIR_OR_ARCHIVE (e.g. the CIFAR-10 JPEG copy, "
        "../shared/data/cifar10-jpeg.tar.xz; README, docs/data.md)"
    )


def _check_download(cls, root: Path, label: str, timeout_s: float = 20) -> None:
    """One HEAD request to the archive's URL (through the proxies urllib honours, as the download)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(cls.url, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:  # the server answered (a refused HEAD, say): online; the download decides
        return
    except OSError as e:
        raise UserError(_offline_message(cls, root, label, e)) from None


@dataclass
class RawData:
    """What a dataset reader returns: the training set (per-sample, with `transform`) and both splits
    as uint8 NCHW tensors with int64 labels."""

    train_set: Dataset
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]


# The dataset registry, like models.MODELS: data.name's choices are its names (config.dataset_names).
# A reader takes (cfg, main_process_first, transform) and returns RawData.
DATASETS: dict[str, Callable[..., RawData]] = {}


def register_dataset(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn

    return deco


def _torchvision_raw(train, test, label: str) -> RawData:
    """RawData from torchvision datasets whose `.data` is N×H×W×C (CIFAR) or N×H×W (MNIST), checked."""
    tr_x, te_x = (_nchw(torch.as_tensor(np.ascontiguousarray(d.data))) for d in (train, test))
    tr_y = torch.as_tensor(np.asarray(train.targets), dtype=torch.int64)
    te_y = torch.as_tensor(np.asarray(test.targets), dtype=torch.int64)
    classes = list(train.classes)
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3] or x.dtype != torch.uint8:
            raise UserError(
                f"{label} {split} images have shape {tuple(x.shape)}; expected N×H×W×3 uint8 (CIFAR) or N×H×W (MNIST)"
            )
        if len(x) != len(y):
            raise UserError(
                f"{label} {split} split has {len(x)} images but {len(y)} labels; the files are inconsistent"
            )
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise UserError(
                f"{label} {split} labels run {int(y.min())}..{int(y.max())} but there are {len(classes)} classes; "
                "the files are corrupt"
            )
    return RawData(train, tr_x, tr_y, te_x, te_y, classes)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """N×H×W×C (CIFAR's arrays) or N×H×W (MNIST's) -> N×C×H×W; any other shape is left for the check."""
    if x.ndim == 3:
        return x.unsqueeze(1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous() if x.ndim == 4 else x


def _read_cifar_like(cls, root: Path, label: str, main_process_first, transform) -> RawData:
    with main_process_first():
        # prepared before (downloaded if it could be): here torchvision only reads, md5-checking every file
        train = _open_cifar(cls, root, True, label, transform)
        test = _open_cifar(cls, root, False, label)
    return _torchvision_raw(train, test, label)


def _cifar(cfg, main_process_first, transform, hundred: bool) -> RawData:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, label = (CIFAR100, "CIFAR-100") if hundred else (CIFAR10, "CIFAR-10")
    root = Path(cfg.data.root)
    with main_process_first():  # one rank downloads and unpacks; the others wait, then read
        _prepare_cifar(cls, root, cfg.data.download, label)
    return _read_cifar_like(cls, root, label, main_process_first, transform)


@register_dataset("cifar10")
def _cifar10(cfg, main_process_first, transform) -> RawData:
    return _cifar(cfg, main_process_first, transform, hundred=False)


@register_dataset("cifar100")
def _cifar100(cfg, main_process_first, transform) -> RawData:
    return _cifar(cfg, main_process_first, transform, hundred=True)


@register_dataset("fashion_mnist")
def _fashion_mnist(cfg, main_process_first, transform) -> RawData:
    from torchvision.datasets import FashionMNIST

    root = Path(cfg.data.root)
    with main_process_first():  # one rank decompresses Debian's files; the others wait, then read
        _prepare_fashion_mnist(root)
    try:
        train = FashionMNIST(str(root), train=True, download=False, transform=transform)
        test = FashionMNIST(str(root), train=False, download=False)
    except (RuntimeError, ValueError, OSError) as e:
        raise UserError(
            f"Fashion-MNIST files under {root}/FashionMNIST/raw are unreadable ({e}); delete them and run again"
        ) from None
    return _torchvision_raw(train, test, "Fashion-MNIST")


@register_dataset("synthetic")
def _synthetic(cfg, main_process_first, transform) -> RawData:
    with main_process_first():  # one rank writes the files; the others wait, then read
        root = ensure_synthetic(cfg)
    return _read_cifar_like(synthetic_class(root), root, "synthetic CIFAR-10", main_process_first, transform)


@register_dataset("imagefolder")
def _imagefolder(cfg, main_process_first, transform) -> RawData:
    from accelerate import PartialState  # the process this is: only the main one says what was skipped

    from .imagefolder import ImageArrayDataset, load_imagefolder

    with main_process_first():  # one rank decodes into the cache (other jobs wait on its lock); the others read
        tr_x, tr_y, te_x, te_y, classes = load_imagefolder(cfg, announce=PartialState().is_main_process)
    return RawData(ImageArrayDataset(tr_x, tr_y, classes, transform), tr_x, tr_y, te_x, te_y, classes)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tutorial's split: shuffle all indices, the first floor(val_fraction·n) are validation.
    Seeded with its own generator, so every rank computes the same split."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = int(np.floor(val_fraction * n))
    return perm[n_val:], perm[:n_val]


def load_data(cfg, accelerator) -> DataBundle:
    from torchvision import transforms

    placeholder = transforms.Compose([transforms.ToTensor()])  # Normalize added once mean/std are known
    raw = DATASETS[cfg.data.name](cfg, accelerator.main_process_first, placeholder)
    train_ds, tr_x, tr_y, te_x, te_y, classes = (
        raw.train_set,
        raw.train_images,
        raw.train_labels,
        raw.test_images,
        raw.test_labels,
        raw.classes,
    )
    train_idx, val_idx = split_indices(len(tr_x), cfg.data.val_fraction, cfg.seed)
    c = tr_x.shape[1]
    if cfg.data.normalize == "half":
        mean, std = (0.5,) * c, (0.5,) * c
    else:  # per-channel statistics of the training part of the split only (never the test set)
        mean, std = channel_stats(Rows(tr_x, train_idx))
    train_ds.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    return DataBundle(
        name=cfg.data.name,
        classes=classes,
        in_channels=c,
        image_size=tr_x.shape[-1],
        mean=mean,
        std=std,
        # Rows, not tr_x[idx]: no rank copies the split (an image-folder cache is memory-mapped and shared)
        train_images=Rows(tr_x, train_idx),
        train_labels=tr_y[train_idx],
        val_images=Rows(tr_x, val_idx),
        val_labels=tr_y[val_idx],
        test_images=te_x,
        test_labels=te_y,
        train_set=Subset(train_ds, train_idx.tolist()),
        train_indices=train_idx,
        val_indices=val_idx,
    )


def norm_stats(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as (1, C, 1, 1) float tensors on `device`: made once per loader or
    evaluation, since a tensor built from Python numbers on a GPU is a host-to-device copy that waits for
    the queued work (every batch, before issue 27)."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(device)
    return m, s


def normalize_batch(x_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NCHW -> float, the same arithmetic as ToTensor + Normalize: (x/255 - mean) / std. `mean` and
    `std` are best norm_stats' device tensors; sequences of numbers are converted here (one-off callers)."""
    x = x_u8.float().div_(255)
    if not isinstance(mean, torch.Tensor):
        mean, std = norm_stats(mean, std, x.device)
    return x.sub_(mean).div_(std)
