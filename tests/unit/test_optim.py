"""optim.name=sgd|adamw, optim.betas and optim.no_decay_norm_bias (cifar_dist/optim/optimizers.py): pure
functions of a model and the config, checked on the CPU with real torch optimizers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cifar_dist.config import resolve
from cifar_dist.errors import UserError
from cifar_dist.optim import build_optimizer, param_groups


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4 * 30 * 30), nn.Linear(3600, 3)
    )


def test_no_decay_norm_bias_splits_vectors_from_weights():
    net = small_net()
    (one,) = param_groups(net, 0.05, no_decay_norm_bias=False)
    assert one["weight_decay"] == 0.05 and len(one["params"]) == 8
    decay, no_decay = param_groups(net, 0.05, no_decay_norm_bias=True)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[4].weight)}
    assert len(no_decay["params"]) == 6  # conv/linear biases, BatchNorm and LayerNorm scales and shifts


def _one_step(cfg, weight_decay: float, grad: float = 1.0) -> torch.Tensor:
    torch.manual_seed(0)
    lin = nn.Linear(4, 4)
    cfg.optim.weight_decay = weight_decay
    opt = build_optimizer(lin, cfg.optim, lr=0.1, fused=False)
    before = lin.weight.detach().clone()
    lin.weight.grad = torch.full_like(lin.weight, grad)
    lin.bias.grad = torch.zeros_like(lin.bias)
    opt.step()
    return before, lin.weight.detach()


def test_adamw_decays_decoupled_from_the_gradient():
    cfg = resolve(overrides=["--optim.name=adamw", "--optim.betas=0.8,0.99"])
    assert cfg.optim.betas == [0.8, 0.99]
    opt = build_optimizer(nn.Linear(2, 2), cfg.optim, lr=0.1, fused=False)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.99)
    w0, without = _one_step(cfg, 0.0)
    _, with_decay = _one_step(cfg, 0.5)
    # Decoupled: the decay is w·lr·wd exactly, whatever Adam's normalised step is. (Adam with L2 in the
    # gradient would fold the decay into the normalisation: a constant gradient's step stays lr·sign.)
    assert torch.allclose(without - with_decay, w0 * 0.1 * 0.5, atol=1e-7)


def test_sgd_keeps_momentum_nesterov_and_l2():
    cfg = resolve(overrides=["--optim.momentum=0.9", "--optim.nesterov=true"])
    opt = build_optimizer(nn.Linear(2, 2), cfg.optim, lr=0.1, fused=False)
    assert isinstance(opt, torch.optim.SGD)
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["nesterov"]) == (0.9, True)
    w0, w1 = _one_step(resolve(), 0.5, grad=0.0)  # plain SGD, zero gradient: the L2 term alone
    assert torch.allclose(w0 - w1, w0 * 0.1 * 0.5)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--optim.name=adam"], "choose one of: sgd, adamw"),
        (["--optim.name=adamw", "--optim.momentum=0.9"], "optim.betas"),
        (["--optim.betas=0.9"], "optim.betas"),
        (["--optim.betas=0.9,1.5"], "optim.betas"),
        (["--optim.betas=a,b"], "list of numbers"),
    ],
)
def test_bad_optimizer_settings_are_one_line(args, fragment):
    with pytest.raises(UserError) as e:
        resolve(overrides=args)
    assert fragment in str(e.value) and "\n" not in str(e.value)
