"""One config object, resolved once: defaults < --preset < --config FILE.yaml < --section.key=value.

    python -m cifar_dist --preset tutorial_fast --config my.yaml --optim.lr=0.05 --train.epochs=3

Each key is declared once, below: its type (a `Literal` when it has fixed choices; a registry's
names for data.name and model.name), default, bounds and one line of help. `--help`, the type
conversion and the per-key checks are generated from those declarations; `validate` adds the rules
that involve several keys. Unknown keys, wrong types and out-of-range values raise ``UserError``
before any work starts. The resolved config is printed at start, logged to the tracker and saved
in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Literal

from ..errors import UserError
from ..optim.schedules import DEPRECATED as DEPRECATED_SCHEDULES
from .keys import (
    coerce,
    config_sections,
    key,
    keys_help,
    literal_choices,
    parse_overrides,
    read_yaml,
)
from .presets import PRESET_ALIASES, PRESET_DATASET_OVERRIDES, PRESETS
from .rules import validate


def dataset_names() -> tuple[str, ...]:
    """data.name's choices: the dataset registry's names (imported when a config is checked)."""
    from ..data.datasets import DATASETS

    return tuple(DATASETS)


def check_betas(betas: list) -> None:
    if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
        raise UserError(f"optim.betas={betas!r} must be two numbers in [0, 1), e.g. 0.9,0.999")


def check_model_name(name: str) -> None:
    """model.name: a registry name, torchvision:NAME, timm:NAME or package.module:factory (models.model_source
    raises the one-line error otherwise)."""
    from ..models.registry import model_source

    model_source(name)


@dataclass
class DataConfig:
    name: str = key(
        "cifar10",
        "dataset (synthetic: a small learnable set, for tests; imagefolder: your folders)",
        choices=dataset_names,
    )
    root: str = key("./data", "dataset folder; imagefolder: train/<class>/ + test/<class>/, or a .tar(.gz/.xz) of it")
    cache_dir: str = key("./data/cache", "imagefolder: decoded arrays and unpacked archives (never inside data.root)")
    image_size: int = key(
        0,
        "imagefolder: resize every image to N×N while caching; 0 keeps the files' size",
        ge=0,
        le=4096,
        note=" (0: keep the files' size)",
    )
    val_fraction: float = key(0.2, "share of the training images held out for validation; 0 trains on all", ge=0, lt=1)
    loader: Literal["torch", "tensor"] = key(
        "torch", "torch: the tutorial's per-sample DataLoader; tensor: uint8 tensors and batch ops"
    )
    normalize: Literal["half", "dataset"] = key(
        "half", "half: the tutorial's mean = std = 0.5; dataset: the dataset's own mean and std"
    )
    augment: bool = key(False, "random crop (data.crop_pad) and horizontal flip in training; needs loader=tensor")
    crop_pad: int = key(
        4, "pixels of reflect padding for the random crop (shifts up to ±crop_pad); 0 = flip only", ge=0, le=8
    )
    alternate_flip: bool = key(False, "airbench: mirror each image in every other epoch (at random in the first)")
    download: bool = key(True, "download the dataset when its files are missing")
    num_workers: int = key(0, "DataLoader worker processes per training process (data.loader=torch)", ge=0)
    synthetic_train_size: int = key(5000, "images generated for data.name=synthetic's train + validation split", ge=10)
    synthetic_test_size: int = key(1000, "images generated for data.name=synthetic's test split", ge=1)


@dataclass
class ModelConfig:
    name: str = key(
        "tutorial_cnn",
        "network: tutorial_cnn (the tutorial's CNN), tutorial_cnn_bn (it with batch norm), resnet_fast (ResNet-9), "
        "airbench, torchvision:NAME, timm:NAME or package.module:factory (your own code)",
        check=check_model_name,
    )
    dropout: float = key(0.3, "dropout probability around the tutorial CNNs' first linear layer", ge=0, lt=1)
    width: int = key(64, "base width in channels: resnet_fast (64 = ResNet-9), airbench (64 = airbench94)", ge=1)
    kwargs: dict = key({}, "torchvision:, timm: and your own models: keyword arguments (a YAML mapping)")
    whiten: bool = key(False, "airbench: first layer = frozen 2×2 patch-whitening filters from 5,000 train images")
    dirac_init: bool = key(False, "airbench: each 3×3 conv starts as the identity on its input channels")
    bn_learn_scale: bool = key(True, "airbench: false = BatchNorm with a fixed scale of 1 (a learned shift only)")


@dataclass
class OptimConfig:
    lr: float = key(0.01, "learning rate (for optim.reference_batch_size images when that is > 0)", gt=0)
    name: Literal["sgd", "adamw", "muon"] = key(
        "sgd",
        "optimizer (cifar_dist/optim/optimizers.py); muon: conv filters by Muon, the rest by optim.muon_companion",
    )
    momentum: float = key(0.0, "SGD momentum; 0 = plain SGD", ge=0, lt=1)
    nesterov: bool = key(False, "Nesterov momentum (needs optim.momentum > 0)")
    betas: list = key([0.9, 0.999], "AdamW's (beta1, beta2): decay rates of its gradient averages", check=check_betas)
    weight_decay: float = key(0.0, "weight decay: sgd as L2 in the gradient, adamw decoupled from it", ge=0)
    no_decay_norm_bias: bool = key(False, "no weight decay on biases and norm scales/shifts (parameters < 2-D)")
    label_smoothing: float = key(0.0, "label smoothing of the cross-entropy loss; 0 = none", ge=0, lt=1)
    # formulas: cifar_dist/optim/schedules.py; onecycle: a deprecated alias (config_warnings says so)
    schedule: Literal["constant", "linear", "linear_to_1pct", "cosine"] = key(
        "constant", "lr over the steps (docs/config.md)", aliases=DEPRECATED_SCHEDULES
    )
    warmup_epochs: float = key(0.0, "epochs of linear lr warm-up at the start (all but constant)", ge=0)
    reference_batch_size: int = key(
        0, "images; > 0: lr is for this global batch, scaled to the real one; 0: as is", ge=0, note=" (0: lr as given)"
    )
    bias_lr_scale: float = key(1.0, "norm biases train at lr × this and weight decay ÷ this (airbench: 64)", gt=0)
    lookahead: bool = key(False, "Lookahead every optim.lookahead_every_steps steps; slow weights at the end")
    lookahead_every_steps: int = key(5, "steps between Lookahead syncs (optim.lookahead=true)", ge=1)
    # optim.name=muon (cifar_dist/muon.py): torch.optim.Muon on the conv filters
    muon_companion: Literal["sgd", "adamw"] = key("sgd", "optim.name=muon: what trains the rest (norms, biases, head)")
    muon_lr: float = key(0.02, "optim.name=muon: Muon's lr (not scaled with the batch), times the schedule", gt=0)
    muon_momentum: float = key(0.95, "optim.name=muon: Muon's (Nesterov) momentum", ge=0, lt=1)
    muon_weight_decay: float = key(0.0, "optim.name=muon: Muon's decoupled weight decay (w ← w − lr·wd·w)", ge=0)
    muon_ns_steps: int = key(5, "optim.name=muon: Newton-Schulz iterations per step (airbench94_muon: 3)", ge=1, lt=100)
    muon_normalize_weights: bool = key(
        False, "optim.name=muon: each filter rescaled to norm sqrt(out channels) before its step (airbench94_muon)"
    )


@dataclass
class TrainConfig:
    epochs: int = key(30, "epochs to train", ge=1)
    per_device_batch_size: int = key(
        16, "images per step on each process (global batch = this × processes); 0 with global_batch_size", ge=0
    )
    global_batch_size: int = key(
        0, "images per optimizer step over all processes (each takes its share); 0: per_device_batch_size rules", ge=0
    )
    max_per_device_batch_size: int = key(
        0, "largest micro-batch per process; a larger share is split and its gradients accumulated; 0: no limit", ge=0
    )
    # auto: continue if run.dir/last exists, else start fresh
    resume: Literal["false", "true", "auto"] = key(
        "false", "false: a new run; true: continue run.dir's state; auto: continue if there is one"
    )
    checkpoint_every_steps: int = key(
        0, "also save the full state every N optimizer steps; 0: at epoch ends only", ge=0
    )
    checkpoint_every_epochs: int = key(
        0, "save the full state every N epochs (the end and a stop always save); 0: auto, saves ≤ 5% of the time", ge=0
    )
    eval_every_epochs: int = key(1, "validate (and maybe save best.pt) every N epochs and after the last", ge=1)
    log_every_steps: int = key(50, "log the running training loss to the tracker every N steps", ge=1)
    # launcher: what `accelerate launch` was given (--mixed_precision, its config file, `accelerate config`);
    # auto: bf16 on a CUDA GPU or CPU that multiplies bf16 in hardware, else no. Details: distributed.py.
    mixed_precision: Literal["launcher", "no", "bf16", "fp16", "auto"] = key(
        "launcher", "launcher (accelerate's setting, else no), no, bf16, fp16 (CUDA) or auto"
    )
    channels_last: bool = key(False, "NHWC memory format for the model and batches (faster convolutions)")
    compile: bool = key(False, "torch.compile the model (measured slower for training on a CPU)")
    device: Literal["auto", "cpu", "cuda"] = key("auto", "where to train (auto: CUDA when visible)")
    threads_per_process: int = key(
        0, "torch threads per process; 0: OMP_NUM_THREADS, else cores / local processes", ge=0
    )
    dist_timeout_s: int = key(1800, "seconds a collective waits for a silent rank before the job stops", ge=1)
    max_steps: int = key(0, "stop after N optimizer steps in all (that epoch counts as done); 0: no limit", ge=0)
    deterministic: bool = key(
        False, "PyTorch's deterministic algorithms (bit-exact reruns on a GPU, slower); false: cudnn.benchmark on GPUs"
    )
    best_metric: Literal["val_loss", "val_accuracy"] = key("val_loss", "what picks best.pt (and early stopping)")
    early_stop_patience: int = key(0, "stop after N validations in a row without a better best_metric; 0: off", ge=0)
    ema_decay: float = key(0.0, "0: off; else EMA of weights + BN buffers (e.g. 0.999) for val/test", ge=0, lt=1)
    sync_batchnorm: bool = key(
        False, "several processes: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA); false: per rank"
    )


@dataclass
class EvalConfig:
    per_device_batch_size: int = key(500, "images per evaluation batch on each process", ge=1)
    tta: bool = key(False, "flip test-time augmentation: average each image's logits with its mirror image's")
    tta_translate: int = key(
        0, "with eval.tta: also views shifted ±N pixels (6 views in all); 0 = flip only", ge=0, le=4
    )


@dataclass
class RunConfig:
    dir: str = key("", "the run folder; empty: runs/<data>-<model>-<time>")
    progress: bool = key(True, "in-epoch progress (bar or a line every 10%); false: a line every log_every_steps")


@dataclass
class TrackingConfig:
    backend: Literal["none", "wandb", "tensorboard", "mlflow"] = key(
        "wandb", "wandb (offline by itself without a key or server), tensorboard, mlflow (both into run.dir) or none"
    )
    project: str = key("cifar-dist", "W&B project (WANDB_PROJECT wins over this default)")
    entity: str = key("", "W&B team or user; empty: your default entity")
    run_name: str = key("", "W&B run name; empty: the run folder's name")
    tags: list = key([], "W&B tags (a,b,c on the command line)")
    mode: Literal["auto", "online", "offline", "disabled"] = key(
        "auto", "auto (online only with a key and a reachable server), online, offline or disabled"
    )


@dataclass
class Config:
    seed: int = key(0, "random seed: initial weights, validation split, data order, dropout")
    preset: str = key("tutorial", "the named recipe this config started from (--preset)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = config_sections(Config)


def apply_tree(cfg: Config, tree: dict, source: str) -> None:
    """Set the keys of a nested dict ({"optim": {"lr": 0.1}, "seed": 1}) on cfg, converted to each
    key's type; `source` names where they came from in the one-line error about a bad one. A model's
    old name (tutorial_cnn) is set as today's (tutorial_cnn)."""
    tree = canonical_names(tree)
    for name, value in tree.items():
        if name in SECTIONS:
            cls = SECTIONS[name]
            keys = [f.name for f in fields(cls)]
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{name}' is a section; set keys like {name}.{keys[0]}")
            sub = getattr(cfg, name)
            for k, v in value.items():
                if k not in keys:
                    raise UserError(f"{source}: unknown key '{name}.{k}'; valid keys in '{name}': {', '.join(keys)}")
                setattr(sub, k, coerce(f"{name}.{k}", v, getattr(sub, k), literal_choices(cls, k)))
        elif name == "seed":
            cfg.seed = coerce("seed", value, cfg.seed)
        else:
            valid = ["seed", *SECTIONS]
            raise UserError(f"{source}: unknown key '{name}'; valid top-level keys: {', '.join(valid)}")


def apply_overrides(
    cfg: Config, argv: list[str], sections: tuple[str, ...] | None = None, who: str = "this command"
) -> Config:
    """Apply --section.key=value arguments to cfg (train.py and evaluate.py); `sections` limits which
    sections may be set (evaluate.py: data, eval, train). Does not validate: call validate() after."""
    tree = parse_overrides(argv)
    if sections is not None and set(tree) - set(sections):
        allowed = ", ".join(f"--{s}.*" for s in sections)
        raise UserError(f"{who} takes only {allowed} overrides, got {' '.join(argv)}")
    apply_tree(cfg, tree, "command line")
    return cfg


def dataset_overrides(preset: str, data_name: str) -> dict:
    """The preset's per-dataset layer (PRESET_DATASET_OVERRIDES) for this data.name, or {}."""
    return PRESET_DATASET_OVERRIDES.get(preset, {}).get(data_name, {})


def resolve(preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> Config:
    """defaults < preset < the preset's layer for the run's data.name < YAML file < overrides, validated."""
    tree = read_yaml(config_file) if config_file else {}
    yaml_preset = tree.pop("preset", None)  # --print-config writes it: the preset when --preset names none
    preset = preset or yaml_preset or "tutorial"
    preset = PRESET_ALIASES.get(preset, preset)  # an old name (seed, seed_fast) runs as today's
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    layers = [(PRESETS[preset], f"preset {preset}")]
    if config_file:
        layers.append((tree, config_file))
    layers.append((parse_overrides(overrides or []), "command line"))

    # data.name may come from any layer (the last that sets it wins); its per-dataset layer goes right
    # after the preset's, so the YAML file and the command line still override it.
    name = Config().data.name
    for tree, _ in layers:
        if isinstance(tree.get("data"), dict) and "name" in tree["data"]:
            name = str(tree["data"]["name"])
    extra = dataset_overrides(preset, name)
    if extra:
        layers.insert(1, (extra, f"preset {preset} for data.name={name}"))
    cfg = Config()
    cfg.preset = preset
    user_set: dict[str, str] = {}  # dotted key -> where the user set it: their choices win over the preset's
    for tree, source in layers:
        apply_tree(cfg, tree, source)
        _batch_layer(cfg, tree)
        if source == config_file or source == "command line":
            user_set.update(dict.fromkeys(_dotted_keys(tree), source))
    return validate(cfg, user_set)


def _dotted_keys(tree: dict) -> list[str]:
    return [f"{s}.{k}" for s, keys in tree.items() if isinstance(keys, dict) for k in keys]


def canonical_names(tree: dict) -> dict:
    """A config dict (a checkpoint's, a run's config.json) with names renamed since (a model, a
    preset) read as today's, so an old run resumes and loads under the new names."""
    tree = {k: dict(v) if isinstance(v, dict) else v for k, v in tree.items()}
    if isinstance(tree.get("model"), dict) and isinstance(tree["model"].get("name"), str):
        from ..models.registry import MODEL_ALIASES

        tree["model"]["name"] = MODEL_ALIASES.get(tree["model"]["name"], tree["model"]["name"])
    if "preset" in tree:
        tree["preset"] = PRESET_ALIASES.get(tree["preset"], tree["preset"])
    return tree


def _batch_layer(cfg: Config, tree: dict) -> None:
    """A layer that sets one of train.per_device_batch_size / train.global_batch_size switches the other off:
    `--preset fast --train.per_device_batch_size=64` means 64 per process, not a contradiction."""
    train = tree.get("train")
    if not isinstance(train, dict):
        return
    per, glob = "per_device_batch_size" in train, "global_batch_size" in train
    if per and not glob:
        cfg.train.global_batch_size = 0
    elif glob and not per:
        cfg.train.per_device_batch_size = 0


def from_dict(tree: dict) -> Config:
    """Rebuild a Config saved in a checkpoint (keys added since are defaulted)."""
    cfg = Config()
    tree = dict(tree)
    tree = canonical_names(tree)
    cfg.preset = tree.pop("preset", "tutorial")
    apply_tree(cfg, tree, "checkpoint config")
    return cfg


def config_yaml(cfg: Config) -> str:
    """The whole config as YAML (--print-config): `--config` reads it back to the identical config. A
    first comment line names the preset's per-dataset layer when one applied."""
    import yaml

    extra = dataset_overrides(cfg.preset, cfg.data.name)
    shown = ", ".join(f"{section}.{k}={v}" for section, keys in extra.items() for k, v in keys.items())
    head = f"# preset {cfg.preset} with its {cfg.data.name} layer: {shown}\n" if extra else ""
    return head + yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def config_help(sections: tuple[str, ...] | None = None) -> str:
    """--help's list of config keys (of `sections`, or all), generated from the declarations above."""
    return keys_help(Config, sections)


def format_config(cfg: Config) -> str:
    extra = dataset_overrides(cfg.preset, cfg.data.name)
    shown = ", ".join(f"{section}.{k}={v}" for section, keys in extra.items() for k, v in keys.items())
    lines = [
        f"preset: {cfg.preset}" + (f" (with its {cfg.data.name} layer: {shown})" if extra else ""),
        f"seed: {cfg.seed}",
    ]
    for name, section in cfg.to_dict().items():
        if isinstance(section, dict):
            lines.append(f"{name}: " + ", ".join(f"{k}={v}" for k, v in section.items()))
    return "\n".join(lines)
