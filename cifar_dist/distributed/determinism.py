"""Which aten ops a model's forward calls that have no deterministic CUDA backward: the module scan in
devices.py sees `nn.AdaptiveMaxPool2d`, not `F.adaptive_max_pool2d` called inside a forward (`airbench`'s head),
so with train.deterministic=true such a model crashed at its first backward instead of the one-line refusal.

    nondeterministic_ops(model, channels, size)   # ['adaptive_max_pool2d'] for airbench

One forward of a copy of the model on the meta device (shapes only, no memory, no arithmetic) under a
TorchDispatchMode that records the ops as dispatched, so a composite op that lowers to a deterministic one (an
adaptive average pool to 1×1 becomes a mean) is not refused. A model that cannot run on the meta device
(custom code) is judged by the module scan alone.
"""

from __future__ import annotations

import copy

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Forward ops whose backward raises under torch.use_deterministic_algorithms(True) on CUDA (the list in that
# function's documentation, torch 2.x, by the forward op's name).
NONDETERMINISTIC_CUDA_BACKWARD_OPS = frozenset(
    {
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "_adaptive_avg_pool2d",
        "_adaptive_avg_pool3d",
        "max_pool3d_with_indices",
        "fractional_max_pool2d",
        "fractional_max_pool3d",
        "upsample_linear1d",
        "upsample_bilinear2d",
        "upsample_bicubic2d",
        "upsample_trilinear3d",
        "_upsample_bilinear2d_aa",
        "_upsample_bicubic2d_aa",
        "reflection_pad1d",
        "reflection_pad2d",
        "reflection_pad3d",
        "replication_pad1d",
        "replication_pad2d",
        "replication_pad3d",
        "_embedding_bag",
        "_ctc_loss",
        "nll_loss2d_forward",
    }
)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def forward_ops(model: torch.nn.Module, channels: int, size: int) -> list[str] | None:
    """The aten ops of one training-mode forward of a batch of 2, in order (None: it cannot run on meta)."""
    try:
        net = copy.deepcopy(model).to("meta").train()
        x = torch.empty(2, channels, size, size, device="meta")
        mode = _Ops()
        with mode:
            net(x)
        return mode.names
    except Exception:  # noqa: BLE001 - custom code that needs real tensors: the module scan decides
        return None


def nondeterministic_ops(model: torch.nn.Module, channels: int, size: int) -> list[str]:
    """The distinct ops of the model's forward without a deterministic CUDA backward, in order of first use."""
    ops = forward_ops(model, channels, size) or []
    return list(dict.fromkeys(op for op in ops if op in NONDETERMINISTIC_CUDA_BACKWARD_OPS))
