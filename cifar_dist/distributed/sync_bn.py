"""train.sync_batchnorm: BatchNorm statistics over the global batch instead of each rank's share.

Without it (the default, and PyTorch's) each of W processes normalises with the mean and variance of its own
B/W images: the same global batch trains differently at another world size (per-rank batch statistics are
noisier, and the running statistics are rank 0's). With it, every BatchNorm layer computes the batch
statistics over all ranks, so W processes of B/W train like one process of B (tests/test_issue34_gpu_loop.py).
It costs one all-reduce per BatchNorm layer in forward and another in backward.

    accelerate launch --multi_gpu --num_processes 8 train.py --preset airbench --train.sync_batchnorm=true

On CUDA: torch.nn.SyncBatchNorm. On the CPU (gloo), which SyncBatchNorm refuses: GlobalBatchNorm below, the
same arithmetic in plain ops (sums and sums of squares in float64, one autograd-aware all-reduce). One process:
nothing changes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over every rank's batch, for any device (the CPU's gloo included); in eval mode, or alone, the
    usual BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xd = x.double()
        count = torch.full((1,), x.numel() // c, dtype=torch.float64, device=x.device)
        stats = all_reduce(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]))  # sums over ranks; backward too
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xd - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert(module: nn.Module, cls) -> nn.Module:
    """Every BatchNorm in `module` replaced by `cls` with the same parameters, buffers and settings."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert(child, cls))
    return out


def sync_batchnorm(cfg, model: nn.Module, accelerator) -> nn.Module:
    """The model with global-batch BatchNorm when train.sync_batchnorm and several processes; else as it is."""
    if not cfg.train.sync_batchnorm or accelerator.num_processes == 1:
        return model
    if accelerator.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return convert(model, GlobalBatchNorm)
