"""The rules of a config that involve several keys, and the warnings for valid but unlikely settings.

    from cifar_dist.config.rules import validate   # resolve() and from_dict() call it for you

Each key's own type and bounds are checked by keys.check_keys from its declaration in config.py;
what is here cannot be said of one key alone. Split from config.py, which declares the keys.
"""

from __future__ import annotations

from ..errors import UserError
from ..optim.schedules import DEPRECATED as DEPRECATED_SCHEDULES
from .keys import check_keys


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Keys that mean something only under another key's choice: (the choosing key, whether its value uses
# them, the keys, what the keys are for, the choice that uses them). Under a choice that does not use
# them they must be at their default. In order: a key reset by one rule can choose in a later one.
DEPENDENT_KEYS = (
    (
        "optim.name",
        lambda c: c.optim.name == "sgd" or (c.optim.name == "muon" and c.optim.muon_companion == "sgd"),
        ("optim.momentum", "optim.nesterov"),
        "SGD's momentum (AdamW's is optim.betas)",
        "optim.name=sgd (or muon with optim.muon_companion=sgd)",
    ),
    ("optim.momentum", lambda c: c.optim.momentum > 0, ("optim.nesterov",), "a momentum variant", "optim.momentum > 0"),
    (
        "model.name",
        lambda c: c.model.name == "airbench",
        ("model.whiten", "model.dirac_init", "model.bn_learn_scale"),
        "the airbench network's switches",
        "model.name=airbench",
    ),
    (
        "data.loader",
        lambda c: c.data.loader == "tensor",
        ("data.augment",),
        "the tensor loader's",
        "data.loader=tensor",
    ),
    (
        "data.augment",
        lambda c: c.data.augment,
        ("data.alternate_flip",),
        "the order of augmentation's flips",
        "data.augment=true",
    ),
)


def _get(cfg, dotted: str):
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def give_way(cfg, user_set: dict[str, str] | None) -> None:
    """Reset keys the preset or the defaults left behind that the user's choice no longer uses
    (`--preset tutorial_fast --optim.name=adamw`: the preset's SGD momentum goes). A key the user set
    (`user_set`: dotted key -> where, e.g. "the command line") stays, and the config is refused with one
    line naming what to change. `user_set=None`: every key counts as set (a saved config)."""
    default = type(cfg)()
    for chooser, uses, keys, what, needs in DEPENDENT_KEYS:
        if uses(cfg):
            continue
        unused = [k for k in keys if _get(cfg, k) != _get(default, k)]
        mine = [k for k in unused if user_set is None or k in user_set]
        if mine:
            values = " and ".join(f"{k}={_value(_get(cfg, k))}" for k in mine)
            change = ", ".join(_flag(k, _get(cfg, k), user_set) for k in mine)
            choice = f"{chooser}={_value(_get(cfg, chooser))}"
            raise UserError(f"{values}: {what}, unused with {choice}; drop {change}, or set {needs}")
        for k in unused:
            section, name = k.split(".")
            setattr(getattr(cfg, section), name, _get(default, k))


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _flag(key: str, value, user_set: dict[str, str] | None) -> str:
    """How the user set `key`, as they would find it: the flag, or the key in their YAML file."""
    where = (user_set or {}).get(key)
    if where == "command line":
        return f"--{key}={_value(value)}"
    return f"{key} from {where}" if where else key


def validate(cfg, user_set: dict[str, str] | None = None):
    """Every key on its own (check_keys), then the rules between keys; keys the user's choices no longer
    use give way first (give_way)."""
    from ..models.registry import model_source

    check_keys(cfg)
    give_way(cfg, user_set)
    if model_source(cfg.model.name) == "builtin" and cfg.model.kwargs:
        raise UserError(
            f"model.kwargs is for torchvision:, timm: and your own models; {cfg.model.name} takes "
            f"model.dropout and model.width: drop --model.kwargs"
        )
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
    return cfg


ADAMW_LR_WARN = 0.03  # above it AdamW is almost surely running an SGD-tuned lr


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
    adamw = cfg.optim.name == "adamw" or (cfg.optim.name == "muon" and cfg.optim.muon_companion == "adamw")
    if adamw and cfg.optim.lr > ADAMW_LR_WARN:
        # The presets' lrs (0.1-1.66 per reference batch) are SGD's: AdamW's step is about lr per weight
        # whatever the gradient's scale, and at those lrs resnet_fast's test loss reached ~1e6 (issue 32).
        what = "optim.muon_companion=adamw" if cfg.optim.name == "muon" else "optim.name=adamw"
        out.append(
            f"warning: optim.lr={cfg.optim.lr:g} with {what}: AdamW moves each weight by about lr a step and "
            f"diverges at SGD-sized lrs (the presets' are tuned for SGD); set --optim.lr (AdamW: ~1e-3)"
        )
    return out
