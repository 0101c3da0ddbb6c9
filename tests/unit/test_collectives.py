"""distributed/collectives.py in one process: every collective is the identity (or a plain raise), sums
stay float64, and evaluation shards cover a split exactly once in single-process batches.

    python -m pytest tests/unit/test_collectives.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cifar_dist.distributed.collectives import (
    any_rank,
    broadcast_object,
    eval_batches,
    gather_per_rank,
    raise_if_any,
    reduce_sum,
    seed_each_rank,
)
from cifar_dist.errors import UserError

ONE = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"))


def test_one_process_collectives_are_the_identity():
    assert broadcast_object(ONE, {"a": 1}) == {"a": 1}
    assert gather_per_rank(ONE, "x") == ["x"]
    assert any_rank(ONE, True) and not any_rank(ONE, False)


def test_reduce_sum_keeps_float64_and_returns_python_numbers():
    big = torch.tensor(2**53, dtype=torch.int64)  # exact in float64, not in float32
    loss = torch.tensor(0.1, dtype=torch.float64)
    out = reduce_sum(ONE, [big, loss, 7])
    assert out == [float(2**53), 0.1, 7.0] and all(isinstance(v, float) for v in out)


def test_raise_if_any_raises_the_message_or_nothing():
    raise_if_any(ONE, None)
    raise_if_any(ONE, "")
    with pytest.raises(UserError, match="disk full"):
        raise_if_any(ONE, "disk full")


def test_seed_each_rank_leaves_a_single_process_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    seed_each_rank(ONE, 0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n,batch", [(10, 3), (101, 25), (7, 10), (0, 4)])
def test_eval_shards_cover_the_split_once_in_single_process_batches(n, batch):
    single = eval_batches(n, batch, 0, 1)
    for world in (1, 2, 3, 4):
        shards = [eval_batches(n, batch, rank, world) for rank in range(world)]
        batches = [b for shard in shards for b in shard]
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert sorted(batches) == sorted(single)  # the same members per batch, whatever the world size
