"""Collectives: what every rank calls together, each a no-op (or the identity) in a single process.
Sums and counts are reduced in float64 and divided by the caller; evaluation shards are dealt so
that the gathered result equals a single-process evaluation exactly.

    from cifar_dist.collectives import raise_if_any, reduce_sum
    raise_if_any(accelerator, error)            # every rank raises the first rank's error, or none does
"""

from __future__ import annotations

import torch

from ..errors import UserError


def broadcast_object(accelerator, obj):
    """The main process's value of `obj` on every rank."""
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


def raise_if_any(accelerator, message: str | None) -> None:
    """Collective: if any rank has an error message, every rank raises the first one (so no rank
    is left waiting in a collective for a rank that gave up)."""
    if accelerator.num_processes == 1:
        if message:
            raise UserError(message)
        return
    from accelerate.utils import gather_object

    messages = [m for m in gather_object([message]) if m]
    if messages:
        raise UserError(messages[0])


def broadcast_module(accelerator, module) -> None:
    """Copy the main process's parameters and buffers into every rank's module, in place."""
    if accelerator.num_processes == 1:
        return
    from accelerate.utils import broadcast

    for t in module.state_dict().values():
        t.copy_(broadcast(t.detach().clone().to(accelerator.device), from_process=0).to(t.device))


def seed_each_rank(accelerator, seed: int) -> None:
    """After the (identical) initial weights are drawn, give each rank its own random stream, so
    ranks do not draw the same dropout masks. Rank r of W > 1 gets seed·65537 + 1 + r; a single
    process keeps the stream it has."""
    if accelerator.num_processes > 1:
        torch.manual_seed(seed * 65537 + 1 + accelerator.process_index)


def gather_per_rank(accelerator, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (collective)."""
    if accelerator.num_processes == 1:
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def any_rank(accelerator, flag: bool) -> bool:
    """Collective OR of a per-rank flag."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def reduce_sum(accelerator, values: list[float | torch.Tensor]) -> list[float]:
    """Sum scalars across ranks in float64, then the caller divides: never average averages."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().cpu() for v in values]).to(accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return t.cpu().tolist()


def eval_batches(n: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """Evaluation sharding: the single-process batches [0,B), [B,2B), ... dealt round-robin to ranks,
    no padding. Every sample is seen exactly once and each batch has the same members as in a
    single-process run, so per-sample outputs, and the metrics built from them, are identical."""
    starts = range(0, n, batch_size)
    return [list(range(s, min(s + batch_size, n))) for i, s in enumerate(starts) if i % world == rank]


def gather_varlen(accelerator, t: torch.Tensor) -> torch.Tensor:
    """Concatenate a per-rank tensor of varying length along dim 0 (pad, gather, drop the padding)."""
    if accelerator.num_processes == 1:
        return t
    n = torch.tensor([t.shape[0]], device=accelerator.device)
    sizes = accelerator.gather(n).tolist()
    padded = accelerator.pad_across_processes(t.to(accelerator.device), dim=0)
    everything = accelerator.gather(padded)
    width = max(sizes)
    parts = [everything[i * width : i * width + s] for i, s in enumerate(sizes)]
    return torch.cat(parts).cpu()
