"""What one run trains with: the model, optimizer, loader, learning-rate schedule and the rest, built
once by `build` in the order each draws from the seeded RNG (model, optimizer, loader).

    job = build(cfg, accelerator, data); job.lr(step); job.evaluate_split("val")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.schema import Config
from ..data.datasets import DataBundle, normalize_batch
from ..distributed.accelerator import bare_module, mixed_precision_source
from ..distributed.collectives import seed_each_rank
from ..distributed.devices import check_deterministic_model
from ..distributed.sync_bn import sync_batchnorm
from ..distributed.wait_policy import describe_wait_policy
from ..evaluate.evaluation import EvalSettings, evaluate_split
from ..models.flops import pflops, train_flops_per_image
from ..models.registry import build_model, count_parameters
from ..models.whitening import WHITEN_IMAGES, whiten_from_data
from ..optim.ema import EMA
from ..optim.lookahead import Lookahead
from ..optim.muon import prepare as prepare_optimizer
from ..optim.optimizers import build_optimizer
from ..optim.schedules import lr_at, scaled_lr
from .batching import BatchPlan, plan_batches
from .loaders import build_train_loader


@dataclass
class Job:
    """What one run trains with, built once by `build`."""

    cfg: Config
    accelerator: object
    data: DataBundle
    plan: BatchPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: object
    criterion: torch.nn.Module
    base_lr: float
    total_steps: int
    warmup_steps: int
    flops_per_image: float  # training FLOPs (forward + backward) per image: flops.py
    lookahead: object = None  # optim/lookahead.py's Lookahead when optim.lookahead
    ema: EMA | None = None  # train.ema_decay > 0

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, best.pt, the test and the export use: the EMA network when it is on; with
        train.compile the uncompiled module (TTA's views would recompile the training graph)."""
        return self.ema.module if self.ema is not None else self.uncompiled

    @property
    def uncompiled(self) -> torch.nn.Module:
        """The trained model without torch.compile's wrapper (compiled before prepare: the bare module)."""
        return bare_module(self.accelerator, self.model) if self.cfg.train.compile else self.model

    def extra_state(self) -> list:
        """What travels in last/ besides TrainState, so resume is exact: Lookahead's slow weights
        (optim.lookahead), then the EMA (train.ema_decay; custom_checkpoint_1.pkl without Lookahead)."""
        return [obj for obj in (self.lookahead, self.ema) if obj is not None]

    def images_trained(self, steps: int) -> int:
        """Every step trains a whole global batch (both loaders drop the last partial one)."""
        return steps * self.plan.global_batch

    def compute(self, steps: int) -> dict:
        """The compute spent after `steps` optimizer steps (metrics.jsonl, W&B, test_metrics.json)."""
        return {
            "train_flops_per_image": self.flops_per_image,
            "train_pflops": pflops(self.flops_per_image, self.images_trained(steps)),
        }

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.base_lr, self.cfg.optim.schedule, self.warmup_steps)

    def evaluate_split(self, split: str, model: torch.nn.Module | None = None):
        """Collective: the current weights (eval_model's, or `model`'s) on a whole split ("val" or "test"),
        with the run's eval settings."""
        net = self.eval_model if model is None else model
        return evaluate_split(net, self.data, split, self.accelerator, EvalSettings.from_config(self.cfg))


def build(cfg: Config, accelerator, data: DataBundle) -> Job:
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    model = build_model(
        cfg.model.name,
        data.in_channels,
        data.image_size,
        data.num_classes,
        kwargs=cfg.model.kwargs,
        trust_code=True,  # the user named this code on their own command line
        dropout=cfg.model.dropout,  # built-in models only; the others take model.kwargs
        width=cfg.model.width,
        bn_learn_scale=cfg.model.bn_learn_scale,
        dirac_init=cfg.model.dirac_init,
    )
    if cfg.model.whiten:
        whiten_from_data(model, normalize_batch(data.train_images[:WHITEN_IMAGES], data.mean, data.std))
    flops_per_image = train_flops_per_image(model, data.in_channels, data.image_size)
    check_deterministic_model(cfg, model, accelerator.device, (data.in_channels, data.image_size))
    seed_each_rank(accelerator, cfg.seed)
    accelerator.print(start_line(cfg, accelerator, data, model, flops_per_image))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    plan = plan_batches(cfg, accelerator.num_processes)
    base_lr = scaled_lr(cfg, plan.global_batch)  # optim.reference_batch_size: lr given per that batch
    accelerator.gradient_accumulation_steps = plan.accumulation
    accelerator.print(f"{plan.describe()}, lr {base_lr:g}")
    model = sync_batchnorm(cfg, model, accelerator)
    optimizer = build_optimizer(model, cfg.optim, base_lr, fused=accelerator.device.type in ("cpu", "cuda"))
    if cfg.train.compile:  # the bare module, before prepare: DDP stays outermost (its no_sync works)
        model = torch.compile(model)
    model, optimizer = prepare_optimizer(accelerator, model, optimizer)  # optim.name=muon: two optimizers
    # The EMA starts from the initial weights, on the training device, without the compile wrapper.
    ema = EMA(bare_module(accelerator, model), cfg.train.ema_decay, accelerator) if cfg.train.ema_decay else None
    loader = build_train_loader(cfg, data, accelerator, plan)
    steps_per_epoch = len(loader)  # optimizer steps
    lookahead = None
    if cfg.optim.lookahead:
        lookahead = Lookahead(
            bare_module(accelerator, model), steps_per_epoch * cfg.train.epochs, cfg.optim.lookahead_every_steps
        )
    return Job(
        cfg,
        accelerator,
        data,
        plan,
        model,
        optimizer,
        loader,
        criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
        base_lr=base_lr,
        total_steps=steps_per_epoch * cfg.train.epochs,
        warmup_steps=int(cfg.optim.warmup_epochs * steps_per_epoch),
        flops_per_image=flops_per_image,
        lookahead=lookahead,
        ema=ema,
    )


def start_line(cfg: Config, accelerator, data: DataBundle, model: torch.nn.Module, flops_per_image: float) -> str:
    """The run's start line: model, data, processes, precision, threads and compute per image."""
    return (
        f"model {cfg.model.name}: {count_parameters(model):,} parameters; "
        f"{data.name}: {len(data.train_labels):,} train / {len(data.val_labels):,} val / "
        f"{len(data.test_labels):,} test; world size {accelerator.num_processes} on {accelerator.device}; "
        f"mixed precision {accelerator.mixed_precision} ({mixed_precision_source(cfg, accelerator)}); "
        f"{torch.get_num_threads()} threads, {describe_wait_policy()}; "
        f"training compute {flops_per_image / 1e9:.4g} GFLOP per image (forward + backward)"
        + (f"; EMA of the weights, decay {cfg.train.ema_decay}" if cfg.train.ema_decay else "")
    )
