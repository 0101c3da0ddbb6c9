"""The optimizer, built from config.optim: a pure function of the model and the config.

    optimizer = build_optimizer(model.parameters() source, cfg.optim, lr, fused=True)

optim.name:
    sgd     torch.optim.SGD: momentum, Nesterov, weight decay as L2 (lr · wd · w added to each step)
    adamw   torch.optim.AdamW: optim.betas, weight decay decoupled from the gradient
            (w ← w − lr · wd · w, then the Adam step; Loshchilov & Hutter)
    muon    conv filters: torch.optim.Muon (optim.muon_*); the rest: SGD or AdamW (optim.muon_companion),
            grouped as below (cifar_dist/optim/muon.py)

optim.no_decay_norm_bias=true puts every parameter with fewer than 2 dimensions (biases, the scales
and shifts of BatchNorm/LayerNorm/GroupNorm) in a second group with weight_decay 0: decay shrinks
weights toward 0, which for a norm's scale or a bias only fights the layer's own normalisation.
optim.bias_lr_scale=k != 1 (airbench: 64) puts batch-norm shifts in a group of their own that trains at
lr × k with weight decay ÷ k, so its decay per step (lr · wd) is unchanged.
The learning rate is set per step by the loop (schedules.lr_at) times each group's `lr_scale`; the
groups keep their own decay. Frozen parameters (requires_grad false: a whitening layer) are left out.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_norm_bias: bool,
    bias_lr_scale: float = 1.0,
    exclude: frozenset[int] | set[int] = frozenset(),
) -> list[dict]:
    """[{params, weight_decay, lr_scale}]: one group, or (no_decay_norm_bias) matrices/kernels with decay
    and vectors (biases, norm scales and shifts) without; with bias_lr_scale != 1, the norm shifts in
    a group of their own. Parameter order is the model's in each. `exclude`: ids of parameters another
    optimizer trains (optim.name=muon: the conv filters, muon.py)."""
    shifts = set()
    if bias_lr_scale != 1:
        norms = (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        shifts = {id(m.bias) for m in norms if m.bias is not None and m.bias.requires_grad} - set(exclude)
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in shifts and id(p) not in exclude]
    vector_decay = 0.0 if no_decay_norm_bias else weight_decay
    groups = [
        {"params": [p for p in params if p.ndim >= 2 or not no_decay_norm_bias], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2 and no_decay_norm_bias], "weight_decay": 0.0},
        {
            "params": [p for p in model.parameters() if id(p) in shifts],
            "weight_decay": vector_decay / bias_lr_scale,
            "lr_scale": bias_lr_scale,
        },
    ]
    return [{"lr_scale": 1.0, **g} for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim_cfg, lr: float, fused: bool) -> torch.optim.Optimizer:
    """fused: one kernel updates every parameter (PyTorch's default on the CPU is a Python loop over
    them): faster, the same maths, the rounding may differ in the last bit (docs/results.md,
    "Measurements behind the code")."""

    def groups_without(exclude=frozenset()):
        return param_groups(
            model, optim_cfg.weight_decay, optim_cfg.no_decay_norm_bias, optim_cfg.bias_lr_scale, exclude
        )

    if optim_cfg.name == "muon":  # conv filters: torch.optim.Muon; the rest: SGD or AdamW (muon.py)
        from .muon import build_muon_optimizer

        return build_muon_optimizer(model, optim_cfg, lr, fused, groups_without)
    groups = groups_without()
    if optim_cfg.name == "adamw":
        beta1, beta2 = optim_cfg.betas
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), fused=fused)
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov, fused=fused)
    raise ValueError(f"unknown optimizer {optim_cfg.name!r}")
