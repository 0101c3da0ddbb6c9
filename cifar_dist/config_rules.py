"""The rules of a config that involve several keys, and the warnings for valid but unlikely settings.

    from cifar_dist.config_rules import validate   # resolve() and from_dict() call it for you

Each key's own type and bounds are checked by keys.check_keys from its declaration in config.py;
what is here cannot be said of one key alone. Split from config.py, which declares the keys.
"""

from __future__ import annotations

from .errors import UserError
from .keys import check_keys
from .schedules import DEPRECATED as DEPRECATED_SCHEDULES


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate(cfg):
    """Every key on its own (check_keys), then the rules between keys."""
    from .models import model_source

    check_keys(cfg)
    if model_source(cfg.model.name) == "builtin" and cfg.model.kwargs:
        raise UserError(
            f"model.kwargs is for torchvision:, timm: and your own models; {cfg.model.name} takes "
            f"model.dropout and model.width: drop --model.kwargs"
        )
    sgd_used = cfg.optim.name == "sgd" or (cfg.optim.name == "muon" and cfg.optim.muon_companion == "sgd")
    if not sgd_used and (cfg.optim.momentum or cfg.optim.nesterov):
        raise UserError(
            f"optim.momentum and optim.nesterov are SGD's; optim.name={cfg.optim.name} uses optim.betas: drop them"
        )
    airbench_only = [k for k in ("whiten", "dirac_init") if getattr(cfg.model, k)]
    if not cfg.model.bn_learn_scale:
        airbench_only.append("bn_learn_scale")
    if airbench_only and cfg.model.name != "airbench":
        keys = ", ".join(f"model.{k}" for k in airbench_only)
        raise UserError(f"{keys} apply to model.name=airbench only, not {cfg.model.name}; set --model.name=airbench")
    if cfg.data.alternate_flip and not cfg.data.augment:
        raise UserError("data.alternate_flip=true needs data.augment=true (it orders the training flips)")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise UserError("optim.nesterov=true needs optim.momentum > 0")
    if cfg.train.mixed_precision == "fp16" and (cfg.train.device == "cpu" or not _cuda_available()):
        # Accelerator(cpu=True, mixed_precision="fp16") autocasts nothing: it would train in fp32 unsaid.
        raise UserError(
            "train.mixed_precision=fp16 needs a CUDA GPU (on the CPU Accelerate would silently train "
            "in fp32); use --train.mixed_precision=bf16, auto, no or launcher"
        )
    if (cfg.train.per_device_batch_size > 0) == (cfg.train.global_batch_size > 0):
        raise UserError(
            f"train.per_device_batch_size={cfg.train.per_device_batch_size} and train.global_batch_size="
            f"{cfg.train.global_batch_size}: set exactly one of them above 0 (the other 0)"
        )
    if cfg.data.augment and cfg.data.loader != "tensor":
        raise UserError("data.augment=true needs data.loader=tensor (the tutorial loader has no augmentation)")
    return cfg


def config_warnings(cfg) -> list[str]:
    """Settings that are valid but almost certainly not meant, as whole `warning: ...` lines for stderr
    (train, evaluate and --print-config print them as they are); never fatal."""
    out = []
    if cfg.optim.schedule in DEPRECATED_SCHEDULES:
        new = DEPRECATED_SCHEDULES[cfg.optim.schedule]
        out.append(
            f"warning: optim.schedule={cfg.optim.schedule} is deprecated (it is a linear warm-up and a linear "
            f"decay to lr/100, not PyTorch's OneCycleLR); it runs as {new}: use --optim.schedule={new}"
        )
    if cfg.eval.tta and not cfg.data.augment:
        # A model that never saw a mirrored image scores lower on one (docs/results.md).
        out.append(
            "warning: eval.tta=true averages each image's logits with its mirror image's, but data.augment=false: "
            "this model never sees mirrored images in training, so TTA usually lowers accuracy; "
            "set --data.augment=true (needs data.loader=tensor) or --eval.tta=false"
        )
    return out
