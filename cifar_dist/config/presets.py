"""The named recipes behind --preset: partial configs layered over the defaults (config.py), and
their per-dataset layers.

    python train.py --preset tutorial_fast --print-config      # a preset, resolved, as YAML
"""

from __future__ import annotations

# Presets are partial dicts layered over the defaults. `tutorial` is the PyTorch CIFAR-10 tutorial, exactly.
PRESET_ALIASES = {"seed": "tutorial", "seed_fast": "tutorial_fast"}  # old names: old commands keep working


def _airbench_recipe(width: int, epochs: int, final_fit: bool = False) -> dict:
    """airbench94's methods on its network, trained for `epochs` (presets airbench and fast); final_fit: on
    every training image (data.val_fraction=0: no validation split, the last weights tested)."""
    data = {"loader": "tensor", "normalize": "dataset", "augment": True, "crop_pad": 2, "alternate_flip": True}
    return {
        "data": {**data, "val_fraction": 0.0} if final_fit else data,
        "model": {"name": "airbench", "width": width, "whiten": True, "dirac_init": True, "bn_learn_scale": False},
        "optim": {
            "lr": 1.5,
            "momentum": 0.85,
            "nesterov": True,
            "weight_decay": 1.33e-3,
            "reference_batch_size": 1024,
            "schedule": "linear",
            "warmup_epochs": 2.0,
            "label_smoothing": 0.2,
            "bias_lr_scale": 64.0,
            "lookahead": True,
        },
        "train": {
            "epochs": epochs,
            "global_batch_size": 512,
            "channels_last": True,
            "mixed_precision": "auto",
            "eval_every_epochs": epochs,
        },
        "eval": {"tta": True, "tta_translate": 1},
    }


def _deep_merge(base: dict, over: dict) -> dict:
    """base with over's keys layered in, section by section (one level deep: the config's sections)."""
    return {k: {**base.get(k, {}), **over.get(k, {})} for k in {**base, **over}}


PRESETS: dict[str, dict] = {
    "tutorial": {},
    # The tutorial's CNN with a modern recipe, tuned on Fashion-MNIST (docs/results.md, tuning history).
    "tutorial_fast": {
        "data": {"loader": "tensor", "normalize": "dataset", "augment": True, "crop_pad": 0},
        "model": {"name": "tutorial_cnn", "dropout": 0.0},
        "optim": {
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "reference_batch_size": 128,
            "schedule": "linear_to_1pct",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.1,
        },
        "train": {
            "epochs": 18,
            "global_batch_size": 128,  # whatever the process count (cifar_dist/train/batching.py)
            "channels_last": True,
            "mixed_precision": "auto",
            "eval_every_epochs": 3,
        },
        "eval": {"tta": True},
    },
    # The previous `fast`: resnet_fast at width 16 with parts of airbench's recipe, sized for 2 CPU cores in
    # fp32 (docs/results.md, tuning history). CIFAR-10 on a GPU: --model.width=64 --data.crop_pad=4 (ResNet-9).
    "resnet_fast": {
        "data": {"loader": "tensor", "normalize": "dataset", "augment": True, "crop_pad": 1},
        "model": {"name": "resnet_fast", "width": 16},
        "optim": {
            "lr": 0.2,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "reference_batch_size": 256,
            "schedule": "linear",
            "warmup_epochs": 1.0,
            "label_smoothing": 0.1,
        },
        "train": {
            "epochs": 13,
            "global_batch_size": 256,
            "channels_last": True,
            "mixed_precision": "auto",
            "eval_every_epochs": 13,
        },
        "eval": {"tta": True},
    },
    # fast: the airbench recipe below for 26 epochs on all 50,000 CIFAR-10 training images (airbench's final
    # fit), what fits 600 s on 2 cores of a CPU that multiplies bf16 (`auto` picks bf16 there): 24 epochs took
    # 516-540 s for test 0.8995 / 0.8984 (seeds 1, 0); on the usual 40,000 they validated at 0.8962.
    # On 2 Zen 4 cores (avx512_bf16, no AMX) it takes 1,119 s (test 0.9008, seed 0). Tune with
    # --data.val_fraction=0.2. Measurements: docs/results.md.
    "fast": _airbench_recipe(width=32, epochs=26, final_fit=True),
    # airbench94's methods (Jordan 2024) on its network at width 64 (64/256/256, airbench94's): patch
    # whitening, identity init, shift-only BatchNorm with norm biases at 64× the lr, Lookahead, label smoothing
    # 0.2, alternating flips, crop pad 2, 6-view TTA. lr, momentum and decay are airbench94's in this config's
    # units: 11.5 per 1024 images with its loss summed and lr divided by 1024·(1 + 1/(1 - 0.85)) is 1.5 on the
    # mean loss; its decay per step, 0.0153 · 1024 / 7851 = 0.0020, is weight_decay 0.0020 / 1.5 = 1.33e-3.
    # 10 epochs on all 50,000 training images, as airbench94 trains: 0.35 PFLOP (airbench94: 0.36). On 2 CPU
    # cores with bf16 units: median test 0.9068 in 531 s (seeds 0-2); width 32 on 40,000: 0.8770. docs/results.md.
    "airbench": _airbench_recipe(width=64, epochs=10, final_fit=True),
    # airbench_muon: airbench94_muon's recipe (Jordan, airbench's 94% record in 0.29 PFLOP) on the same network:
    # the conv filters train with torch.optim.Muon (lr 0.24, momentum 0.6, 3 Newton-Schulz steps, each filter
    # renormalised before its step), the rest with Nesterov SGD (momentum 0.85); batch 2000, 8 epochs on all
    # 50,000 images (0.28 PFLOP), linear decay to 0 without warm-up, no Lookahead. Its SGD lrs in this config's
    # units (mean loss; head scaled by 1/9, not 1/256 with unit-std init): head 0.67 · 2000 · 81/65536 = 1.66,
    # norm biases 0.053 · 2000 = 106 = 1.66 · 64; decay per step 2e-6 · 2000 = 0.004 = 1.66 · 2.4e-3. Left out:
    # the whitening bias's own lr and its freeze after 3 epochs. On 2 Zen 4 cores (avx512_bf16): median test
    # 0.9084 in 884 s (seeds 0-2; airbench94's own code on this JPEG copy: 0.9059 at 0.36). docs/results.md.
    "airbench_muon": _deep_merge(
        _airbench_recipe(width=64, epochs=8, final_fit=True),
        {
            "optim": {
                "name": "muon",
                "lr": 1.66,
                "weight_decay": 2.4e-3,
                "reference_batch_size": 2000,
                "warmup_epochs": 0.0,
                "lookahead": False,
                "muon_lr": 0.24,
                "muon_momentum": 0.6,
                "muon_ns_steps": 3,
                "muon_normalize_weights": True,
            },
            "train": {"global_batch_size": 2000, "max_per_device_batch_size": 500},
        },
    ),
}


# Per-dataset layers over a preset, applied when the run's data.name matches (after the preset, before
# YAML and the command line; --print-config shows them). The presets above were tuned on Fashion-MNIST
# (28×28 grey, centred objects); colour photos want more translation and longer training. Tuned on
# CIFAR-10's validation split (JPEG q75 copy; docs/results.md "CIFAR-10 tuning (JPEG q75 copy)"). A user's
# own image folders are photos too, so imagefolder gets the CIFAR-10 layer.
# tutorial_fast: crop pad 2 (flip alone overfits; pads 2-4 validate alike, 2 is the cheapest), 30 epochs
# (what fits 180 s on 2 quiet cores), validated once at the end, 6-view flip+translate TTA.
_TUTORIAL_FAST_PHOTOS = {
    "data": {"crop_pad": 2},
    "train": {"epochs": 30, "eval_every_epochs": 30},
    "eval": {"tta_translate": 1},
}
# The figures behind both layers: docs/results.md, "Measurements behind the code".
# resnet_fast: crop pad 2 (validation 0.8771 with flip TTA, train 0.913; pad 4: 0.8721), 6-view TTA (0.8818), and
# 26 epochs, what fits 600 s on 2 quiet cores (13 took 286 s, validation 0.8779; 26: 564 s, 0.8887, seed 0).
_RESNET_FAST_PHOTOS = {
    "data": {"crop_pad": 2},
    "train": {"epochs": 26, "eval_every_epochs": 26},
    "eval": {"tta_translate": 1},
}
PRESET_DATASET_OVERRIDES: dict[str, dict[str, dict]] = {
    "tutorial_fast": {name: _TUTORIAL_FAST_PHOTOS for name in ("cifar10", "cifar100", "imagefolder")},
    "resnet_fast": {name: _RESNET_FAST_PHOTOS for name in ("cifar10", "cifar100", "imagefolder")},
}
