"""cifar_dist/data/rows.py: a split's images as indexed rows (no copy until read), and the chunked channel
statistics that replace a float copy of the whole training split; and that an image-folder cache is
memory-mapped, so the ranks of a machine share its pages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cifar_dist.data.rows import Rows, channel_stats, gathered


def test_rows_index_like_the_gathered_tensor():
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8, generator=g)
    index = torch.randperm(50, generator=g)[:30]
    rows, want = Rows(base, index), base[index]
    assert len(rows) == 30 and rows.shape == want.shape and rows.dtype == torch.uint8
    assert torch.equal(rows[4], want[4]) and rows[4].data_ptr() == base[int(index[4])].data_ptr()  # a view
    assert torch.equal(rows[3:17], want[3:17])
    pick = torch.tensor([29, 0, 7, 7])
    assert torch.equal(rows[pick], want[pick])
    assert torch.equal(gathered(rows), want) and gathered(want) is want


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_channel_stats_equal_the_float_copys(chunk):
    g = torch.Generator().manual_seed(1)
    base = torch.randint(0, 256, (40, 3, 6, 6), dtype=torch.uint8, generator=g)
    base[:, 1] //= 4  # channels with different statistics
    index = torch.randperm(40, generator=g)[:25]
    x = base[index].float().div(255)
    mean, std = channel_stats(Rows(base, index), chunk=chunk)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), x.mean(dim=(0, 2, 3)).double(), rtol=0, atol=1e-6)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), x.std(dim=(0, 2, 3)).double(), rtol=0, atol=1e-6)
    assert std[1] < std[0]


def _mappings_of(path) -> list[tuple[int, int]]:
    """(start, end) addresses at which this process maps `path` (/proc/self/maps)."""
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path):
            lo, hi = (int(a, 16) for a in parts[0].split("-"))
            spans.append((lo, hi))
    return spans


def test_the_image_folder_cache_is_mapped_not_read(tmp_path):
    """The images the loader reads lie inside a mapping of the cache file: a second rank (or job) maps the
    same pages rather than holding its own copy. A np.load without mmap_mode fails this."""
    from cifar_dist.config import resolve
    from cifar_dist.data.imagefolder import load_imagefolder

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            d = tmp_path / "folder" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    root, cache_dir = tmp_path / "folder", tmp_path / "c"
    cfg = resolve("tutorial", None, ["--data.name=imagefolder", f"--data.root={root}", f"--data.cache_dir={cache_dir}"])
    tr_x, tr_y, te_x, te_y, classes = load_imagefolder(cfg, announce=False)
    (cache,) = (tmp_path / "c" / "imagefolder").glob("*/images.npy")
    spans = _mappings_of(cache.resolve())
    assert spans, "images.npy is not mapped"
    for t in (tr_x, te_x):
        assert any(lo <= t.data_ptr() < hi for lo, hi in spans)
    assert tr_x.shape == (6, 3, 8, 8) and te_x.shape == (6, 3, 8, 8) and classes == ["cat", "dog"]
    first = np.asarray(Image.open(tmp_path / "folder" / "train" / "cat" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(tr_x[0].numpy(), first) and tr_y.tolist() == [0, 0, 0, 1, 1, 1]
