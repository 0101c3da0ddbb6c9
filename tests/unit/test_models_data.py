"""The tutorial CNN is the tutorial's network; the synthetic data is CIFAR-10's on-disk format, read
by torchvision's own reader; the split is seeded; evaluation shards cover each split once."""

import pickle

import numpy as np
import pytest
import torch

from cifar_dist.data import split_indices
from cifar_dist.data.synthetic import synthetic_class, write_synthetic_cifar10
from cifar_dist.distributed.collectives import eval_batches
from cifar_dist.models import build_model, count_parameters


def test_tutorial_cnn_is_the_tutorial():
    m = build_model("tutorial_cnn", 3, 32, 10)
    assert count_parameters(m) == 541_094
    shapes = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
    assert shapes == [
        ("conv1.weight", (16, 3, 3, 3)),
        ("conv1.bias", (16,)),
        ("conv2.weight", (32, 16, 3, 3)),
        ("conv2.bias", (32,)),
        ("conv3.weight", (64, 32, 3, 3)),
        ("conv3.bias", (64,)),
        ("fc1.weight", (500, 1024)),
        ("fc1.bias", (500,)),
        ("fc2.weight", (10, 500)),
        ("fc2.bias", (10,)),
    ]
    assert m.dropout.p == 0.3
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tutorial_cnn_adapts_to_fashion_mnist_and_channels_last():
    m = build_model("tutorial_cnn", 1, 28, 10).eval()
    assert m.fc1.in_features == 64 * 3 * 3
    x = torch.randn(4, 1, 28, 28)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    assert torch.allclose(m_cl(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5)


def test_synthetic_is_cifar10_format_and_read_by_torchvision(tmp_path):
    folder = write_synthetic_cifar10(tmp_path, 50, 20)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
            "batches.meta",
            "manifest.json",
            ".complete",
        ]
    )
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert entry["data"].dtype == np.uint8 and entry["data"].shape == (10, 3072)
    cls = synthetic_class(tmp_path)
    train = cls(str(tmp_path), train=True, download=False)
    test = cls(str(tmp_path), train=False, download=False)
    assert len(train) == 50 and len(test) == 20
    assert train.data.shape == (50, 32, 32, 3)
    assert train.classes[2] == "bird"
    # torchvision's md5 check is live: flip bytes and it refuses the file
    p = folder / "data_batch_3"
    raw = bytearray(p.read_bytes())
    raw[200:203] = b"\x00\x01\x02"
    p.write_bytes(bytes(raw))
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        cls(str(tmp_path), train=True, download=False)


def test_synthetic_classes_are_learnable_patterns(tmp_path):
    write_synthetic_cifar10(tmp_path, 1000, 10)
    train = synthetic_class(tmp_path)(str(tmp_path), train=True, download=False)
    x = train.data.reshape(len(train), -1).astype(np.float32)
    y = np.array(train.targets)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    # nearest class mean already beats chance by far: there is signal to learn
    pred = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == y).mean() > 0.3
    assert (pred == y).mean() < 0.99  # ... but it is not trivial


def test_split_is_seeded_80_20_and_disjoint():
    tr, va = split_indices(50_000, 0.2, seed=0)
    assert len(tr) == 40_000 and len(va) == 10_000
    assert len(set(tr.tolist()) | set(va.tolist())) == 50_000
    tr2, va2 = split_indices(50_000, 0.2, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(split_indices(50_000, 0.2, seed=1)[1], va)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("n, batch", [(101, 16), (1000, 500), (7, 16), (64, 16)])
def test_eval_shards_cover_each_sample_once(world, n, batch):
    shards = [eval_batches(n, batch, r, world) for r in range(world)]
    flat = [i for s in shards for b in s for i in b]
    assert sorted(flat) == list(range(n))
    single = eval_batches(n, batch, 0, 1)
    # every rank's batches are batches of the single-process run, so per-sample outputs match
    assert all(b in single for s in shards for b in s)
