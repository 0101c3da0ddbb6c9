"""airbench's Lookahead (optim.lookahead): slow weights pulled towards the fast ones every few steps,
the slow ones put back at the last step. A checkpointed object, so resume is exact.

    lookahead = Lookahead(model, total_steps, every=5); ...; lookahead.after_step(step)
"""

from __future__ import annotations

import torch
from torch import nn


def lookahead_decay(step: int, total_steps: int, every: int = 5) -> float:
    """How much of the slow weights a Lookahead sync at `step` keeps: 0.95^every · (step/total)³, so
    the early run is plain SGD (decay 0: slow = fast) and the end averages over ~20 syncs."""
    return 0.95**every * (min(step, total_steps) / max(total_steps, 1)) ** 3


@torch.no_grad()
def lookahead_step(slow: list[torch.Tensor], fast: list[torch.Tensor], decay: float) -> None:
    """slow ← decay·slow + (1 − decay)·fast, then fast ← slow (in place). decay 0 copies fast into
    slow; decay 1 puts the slow weights back into the network (the run's last step). Two multi-tensor ops
    (torch._foreach_*), not two per tensor: on a GPU, two kernel launches per sync rather than ~70."""
    if len(slow) != len(fast):
        raise ValueError(f"lookahead_step: {len(slow)} slow tensors for {len(fast)} fast ones")
    torch._foreach_lerp_(slow, fast, 1.0 - decay)
    torch._foreach_copy_(fast, slow)


class Lookahead:
    """Lookahead over a model's floating-point parameters and buffers (BatchNorm's running statistics
    too): every `every` steps, `lookahead_step` with decay `lookahead_decay`; at the last step the slow
    weights replace the network's. A checkpointed object (state_dict/load_state_dict): resume is exact."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5):
        self.tensors = [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]
        self.fast = [t.detach() for t in self.tensors]  # views of the same storage, made once (not per sync)
        self.slow = [t.clone() for t in self.fast]
        self.total_steps, self.every = total_steps, every

    def after_step(self, step: int) -> None:
        """`step`: optimizer steps completed."""
        if step >= self.total_steps:
            lookahead_step(self.slow, self.fast, 1.0)
        elif step % self.every == 0:
            lookahead_step(self.slow, self.fast, lookahead_decay(step, self.total_steps))

    def state_dict(self) -> dict:
        return {"slow": [s.clone() for s in self.slow]}

    def load_state_dict(self, d: dict) -> None:
        for s, saved in zip(self.slow, d["slow"], strict=True):
            s.copy_(saved)
