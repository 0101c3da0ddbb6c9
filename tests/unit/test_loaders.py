"""train/loaders.py and train/batching.py: the tutorial's loader yields whole steps in an order fixed by
(seed, epoch), a mid-epoch resume lands on the exact batch, accumulation groups micro-batches into steps,
and a global batch splits over processes or says why not.

    python -m pytest tests/unit/test_loaders.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from cifar_dist.config import resolve
from cifar_dist.distributed import build_accelerator
from cifar_dist.errors import UserError
from cifar_dist.train.batching import plan_batches
from cifar_dist.train.loaders import TorchTrainLoader


def loader(accumulation: int = 1, n: int = 42):
    cfg = resolve("tutorial", None, ["--train.per_device_batch_size=4", "--train.device=cpu"])
    data = SimpleNamespace(train_set=TensorDataset(torch.arange(n).float(), torch.arange(n)))
    return TorchTrainLoader(cfg, data, build_accelerator(cfg), batch=4, accumulation=accumulation)


def labels(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


def test_whole_batches_in_an_order_fixed_by_the_epoch():
    train = loader()
    assert len(train) == 10 and train.samples_per_epoch == 40  # drop_last: 2 of 42 sit this epoch out
    train.set_epoch(0)
    first = labels(train.iterate())
    train.set_epoch(0)
    again = labels(train.iterate())
    train.set_epoch(1)
    other = labels(train.iterate())
    assert first == again and first != other
    assert len(first) == 10 and len({i for b in first for i in b}) == 40


def test_a_mid_epoch_resume_lands_on_the_exact_batch():
    train = loader()
    train.set_epoch(2)
    full = labels(train.iterate())
    train.set_epoch(2)
    assert labels(train.iterate(skip=3)) == full[3:]


def test_accumulation_yields_whole_steps_of_micro_batches():
    train = loader(accumulation=3)
    assert len(train) == 3  # 10 micro-batches make 3 whole steps
    train.set_epoch(0)
    assert len(labels(train.iterate())) == 9
    train.set_epoch(0)
    assert len(labels(train.iterate(skip=1))) == 6


def test_a_global_batch_splits_over_processes_and_accumulates_past_the_device_limit():
    cfg = resolve("tutorial", None, ["--train.global_batch_size=128", "--train.max_per_device_batch_size=48"])
    plan = plan_batches(cfg, 2)
    assert (plan.per_device, plan.accumulation, plan.global_batch) == (32, 2, 128)
    with pytest.raises(UserError, match="does not split evenly over 3 processes"):
        plan_batches(cfg, 3)
