"""optim.name=muon: the convolution filters train with Muon (PyTorch's `torch.optim.Muon`: momentum, then
the update orthogonalised by a Newton-Schulz iteration), everything else with a companion SGD or AdamW
(optim.muon_companion), as airbench94_muon groups them: conv filters -> Muon; norms, biases, the head and a
frozen whitening layer's bias -> the companion (the whitening filters themselves do not train at all).

    muon_params(model)              the trainable conv filters, in the model's order (pure)
    split_params(model)             (conv filters, the rest): every trainable parameter in exactly one
    build_muon_optimizer(...)       MuonWithCompanion([FilterMuon, SGD or AdamW])
    prepare(accelerator, model, optimizer)   Accelerate prepares each part; what comes back steps both

Composite optimizer, and Accelerate. `accelerator.prepare(model, muon, companion)` wraps each optimizer on its
own, so `save_state` writes optimizer.bin (Muon's momentum buffers) and optimizer_1.bin (the companion's) and
`load_state` restores both: resume is exact. `MuonWithCompanion` holds the prepared pair and is what the loop
sees: `param_groups` is both lists (the loop's per-step lr times each group's `lr_scale` reaches both, so the
schedule applies to both), `step` and `zero_grad` call both (each prepared optimizer skips its step while
gradients accumulate).

Learning rates. The companion's groups are optim.py's `param_groups` over the parameters Muon does not take,
at the scheduled lr (optim.lr at optim.reference_batch_size, scaled with the batch). Muon's group gets
`lr_scale = optim.muon_lr / base lr`, so the same per-step schedule gives optim.muon_lr × the schedule's
fraction: Muon's lr is not scaled with the batch (its update has a fixed size whatever the gradient's).

4-D filters. `torch.optim.Muon` takes 2-D parameters only. `FilterMuon` is torch's Muon with its step and its
Newton-Schulz unchanged; only the collection of each step's tensors (`_init_group`) hands it (out, in·k·k)
views of each filter, its gradient and its momentum buffer, in the filter's memory order (a channels_last
filter is flattened as (out, k, k, in): orthogonalisation does not depend on the order of the columns).
optim.muon_normalize_weights (airbench94_muon) rescales each filter to Frobenius norm sqrt(out channels)
before each step: every filter is followed by a BatchNorm, so its scale is free, and this pins it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UserError

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def muon_params(model: nn.Module) -> list[nn.Parameter]:
    """The trainable weights of the model's convolutions (filters with ≥ 2 dimensions), each once, in
    module order. A frozen conv (a whitening layer) is left out; its bias, like every bias, is not a filter."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, CONV_TYPES) and m.weight.requires_grad and m.weight.ndim >= 2 and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


def split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(Muon's, the companion's): the trainable conv filters, and every other trainable parameter."""
    filters = muon_params(model)
    ids = {id(p) for p in filters}
    return filters, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


def _matrix(t: torch.Tensor, channels_last: bool, view: bool = True) -> torch.Tensor:
    """A filter-shaped tensor as an (out, rest) matrix: a view (view=True; in place updates reach `t`) or a
    copy where needed (view=False). channels_last: the columns in (k, k, in) order, the memory order then."""
    if channels_last:
        t = t.permute(0, *range(2, t.ndim), 1)
    return t.view(t.shape[0], -1) if view else t.reshape(t.shape[0], -1)


def _is_channels_last(p: torch.Tensor) -> bool:
    return p.ndim == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)


class FilterMuon(torch.optim.Muon):
    """torch.optim.Muon for conv filters (and 2-D matrices): its hyperparameter checks, step and
    Newton-Schulz iteration, fed (out, in·k·k) views. The momentum buffers keep each filter's shape
    (state_dict, save/resume as any optimizer's)."""

    def __init__(self, params, normalize_weights: bool = False, **hyper):
        probe = torch.optim.Muon([torch.zeros(1, 1)], **hyper)  # torch's own argument checks and defaults
        torch.optim.Optimizer.__init__(self, params, {**probe.defaults, "normalize_weights": normalize_weights})
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon trains matrices and filters; got a parameter of shape {tuple(p.shape)}")

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        for p in group["params"]:
            if p.grad is None:
                continue
            if torch.is_complex(p) or p.grad.is_sparse:
                raise RuntimeError("Muon does not support complex parameters or sparse gradients")
            cl = _is_channels_last(p)
            fmt = torch.channels_last if cl else torch.contiguous_format
            if not p.is_contiguous(memory_format=fmt):
                raise RuntimeError(f"Muon needs a dense filter; got strides {p.stride()} for shape {tuple(p.shape)}")
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = torch.zeros_like(p, memory_format=fmt)
            state["momentum_buffer"] = buf = buf.contiguous(memory_format=fmt)  # a loaded buffer, any layout
            params_with_grad.append(_matrix(p, cl))
            grads.append(_matrix(p.grad, cl, view=False))
            muon_momentum_bufs.append(_matrix(buf, cl))
        return False

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["normalize_weights"]:
                for p in group["params"]:
                    if p.grad is not None:
                        p.mul_(math.sqrt(p.shape[0]) / p.norm().clamp_min(1e-12))
        return super().step(closure)


class MuonWithCompanion:
    """Muon for the filters and SGD/AdamW for the rest, stepped, zeroed and scheduled as one optimizer.
    `optimizers`: [Muon, companion], each a torch optimizer or Accelerate's prepared wrapper of one."""

    def __init__(self, optimizers: list):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self, closure=None) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


def build_muon_optimizer(model: nn.Module, optim_cfg, lr: float, fused: bool, companion_groups) -> MuonWithCompanion:
    """optim.name=muon. `companion_groups(exclude)`: optim.py's param_groups without the `exclude` ids.
    A model with no trainable conv filter is a one-line UserError."""
    filters = muon_params(model)
    if not filters:
        raise UserError(
            f"optim.name=muon trains convolution filters (parameters of ≥ 2 dimensions in Conv layers), and "
            f"{type(model).__name__} has none that train: use optim.name=sgd or adamw"
        )
    muon = FilterMuon(
        [{"params": filters, "lr_scale": optim_cfg.muon_lr / lr}],
        lr=optim_cfg.muon_lr,
        momentum=optim_cfg.muon_momentum,
        nesterov=True,
        weight_decay=optim_cfg.muon_weight_decay,
        ns_steps=optim_cfg.muon_ns_steps,
        normalize_weights=optim_cfg.muon_normalize_weights,
    )
    groups = companion_groups({id(p) for p in filters})
    if optim_cfg.muon_companion == "adamw":
        beta1, beta2 = optim_cfg.betas
        rest = torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), fused=fused)
    else:
        rest = torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov, fused=fused)
    return MuonWithCompanion([muon, rest])


def prepare(accelerator, model: nn.Module, optimizer):
    """accelerator.prepare(model, optimizer), for a MuonWithCompanion too: each of its optimizers is
    prepared (and so saved and loaded by save_state/load_state) on its own."""
    if not isinstance(optimizer, MuonWithCompanion):
        return accelerator.prepare(model, optimizer)
    model, *prepared = accelerator.prepare(model, *optimizer.optimizers)
    return model, MuonWithCompanion(prepared)
