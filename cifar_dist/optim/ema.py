"""An exponential moving average (EMA) of the model's weights and BatchNorm buffers, for
train.ema_decay > 0. After every optimizer step, on every rank:

    ema ← decay · ema + (1 − decay) · current          (each parameter and floating-point buffer)

Averaging over the last ~1 / (1 − decay) steps smooths the noise of the final steps (decay 0.999:
about 1,000 steps). The EMA network (always in eval mode) is what validation, best.pt, the test and
the exported model use when it is on.

Identical on every rank: DDP keeps the parameters identical, but each rank's BatchNorm running
statistics come from its own batches, so the floating-point buffers are averaged over ranks (one
small all-reduce per step, sums then divide) before they enter the EMA. Integer buffers (BatchNorm's
num_batches_tracked) are copied. Registered with Accelerate, so `last/` holds it and --resume
restores it exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float, accelerator):
        self.decay = decay
        self.accelerator = accelerator
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Collective when the model has floating-point buffers and there are several processes."""
        ema_params = list(self.module.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - self.decay)
        pairs = list(zip(self.module.buffers(), model.buffers()))
        floats = [(e, b) for e, b in pairs if b.is_floating_point()]
        ints = [(e, b) for e, b in pairs if not b.is_floating_point()]
        if ints:  # one multi-tensor copy, not one per BatchNorm layer
            torch._foreach_copy_([e for e, _ in ints], [b for _, b in ints])
        if not floats:
            return
        current = [b for _, b in floats]
        if self.accelerator.num_processes > 1:
            flat = torch.cat([b.reshape(-1).float() for b in current])
            flat = self.accelerator.reduce(flat, reduction="sum") / self.accelerator.num_processes
            current = [c.view_as(b).to(b.dtype) for c, b in zip(flat.split([b.numel() for b in current]), current)]
        torch._foreach_lerp_([e for e, _ in floats], current, 1.0 - self.decay)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
