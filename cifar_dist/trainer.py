"""The training loop: the same code on a laptop CPU, one GPU, DDP and SLURM.

    accelerate launch train.py                                   # the tutorial run (preset tutorial)
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py --data.name=synthetic --train.epochs=2

`train()` reads top to bottom in the order a run happens: accelerator, data, run folder, build
(model, optimizer, loader), resume, then per epoch train, validate, checkpoint, log; finally the
test with the best weights. The phases are the functions below it, in the same order.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from .airbench import Lookahead, whiten_from_data
from .batching import BatchPlan, plan_batches
from .checkpoint import Checkpointer
from .collectives import broadcast_module, broadcast_object, reduce_sum, seed_each_rank
from .config import Config, format_config
from .config_rules import config_warnings
from .data import DataBundle, load_data
from .devices import check_deterministic_model
from .distributed import bare_module, build_accelerator, mixed_precision_source
from .ema import EMA
from .epoch_end import end_epoch
from .evaluation import EvalSettings, evaluate_split, print_report
from .export import add_test_results, load_checkpoint, model_metadata
from .files import atomic_write_bytes
from .flops import pflops, train_flops_per_image
from .loaders import build_train_loader
from .metrics import MetricsLog
from .models import build_model, count_parameters
from .optim import build_optimizer
from .preemption import CHECK_EVERY_STEPS, StopRequest
from .progress import TrainProgress
from .provenance import collect as collect_provenance
from .run_dir import RunDir, prepare_run_dir
from .schedules import lr_at, scaled_lr
from .sync_bn import sync_batchnorm
from .tracking import accelerator_tracking, build_tracker
from .train_state import TrainState, check_finite
from .wait_policy import describe_wait_policy


def train(cfg: Config, after_epoch=None) -> dict:
    """Train, validate, checkpoint; then test the best-validation weights. Returns the test summary,
    or, when a stop request (SIGUSR1, SIGTERM) ended the run early with its state saved,
    {"stopped_at_step": step, "exit_code": 0 after USR1 or 143 after TERM}: the caller leaves the
    process (cli), a benchmark may go on.

    after_epoch(epoch, row, evaluate_split) -> bool, if given, runs on every rank at the end of every epoch
    (after its checkpoint): `row` is the epoch's metrics.jsonl row (its `epoch_seconds` is the training time
    alone), `evaluate_split("test")` or `("val")` evaluates the current weights with the run's eval settings
    (collective). Returning True ends training there, as if train.epochs had been reached. For benchmarks
    (benchmarks/time_to_accuracy.py: test accuracy after every epoch, stop at a target).
    """
    accelerator = build_accelerator(cfg, **accelerator_tracking(cfg))
    # Handlers first: a stop request during start-up (data, model, resume) is kept and honoured at
    # the first step; under slurm/launch.sh USR1 is ignored until this line.
    stop = StopRequest(accelerator, every=min(cfg.train.log_every_steps, CHECK_EVERY_STEPS))  # syncs as logging does
    # Data before anything is printed or created: a wrong data.root (or CIFAR-10 missing offline)
    # ends in its one line, without the config above it or a run folder it names.
    data = load_data(cfg, accelerator)
    run, resume = prepare_run_dir(cfg, accelerator)
    accelerator.print(format_config(cfg))
    for line in config_warnings(cfg):
        accelerator.print(line, file=sys.stderr)

    # Build: model, optimizer, loader (in this order: each draws from the seeded RNG).
    job = build(cfg, accelerator, data)
    state = TrainState(config=cfg.to_dict())
    accelerator.register_for_checkpointing(state, *job.extra_state())  # last/custom_checkpoint_<i>.pkl
    provenance = broadcast_object(accelerator, collect_provenance())  # one record, the same everywhere
    checkpointer = Checkpointer(accelerator, run, cfg, {**model_metadata(cfg, job.data), **provenance}, state)
    metrics_log = MetricsLog(run.metrics, accelerator)

    # Resume: model, optimizer, RNGs, TrainState and the metrics of the completed epochs.
    if resume:
        checkpointer.load_state()
        metrics_log.load(epochs_completed=state.epoch)
        accelerator.print(
            f"resumed {run.path} at epoch {state.epoch + 1}, step {state.step} "
            f"(best validation loss so far {state.best_val_loss:.6f})"
        )
    tracker = build_tracker(cfg, accelerator, run.path, state, provenance)

    # Epochs: train, validate when due, keep the best model, log, save the full state.
    with TrainProgress(
        accelerator.is_main_process and cfg.run.progress, len(job.loader), cfg.train.epochs, accelerator.num_processes
    ) as progress:
        while state.epochs_left(cfg):
            row = train_epoch(job, state, run, checkpointer, stop, tracker, progress)
            if row is None:  # a stop request: the full state is saved, --resume continues there
                return {"stopped_at_step": state.step, "exit_code": stop.exit_code()}
            if end_epoch(job, state, row, checkpointer, metrics_log, tracker, after_epoch, validate):
                break
        metrics_log.flush()

    # Test: the tutorial tests the best-validation model, not the last one.
    summary, test = test_best(job, state, run)
    tracker.log_test(test, job.data, run.path, run.best, compute=job.compute(state.step))
    tracker.finish()
    accelerator.end_training()
    # On success only: after an error the flag stays installed, since cli's exit path asks it whether
    # the launcher's SIGTERM already came (distributed.wait_for_launcher_stop).
    stop.close()
    return summary


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
    lookahead: object = None  # airbench.Lookahead when optim.lookahead
    ema: EMA | None = None  # train.ema_decay > 0

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation, best.pt, the test and the export use: the EMA network when it is on; with
        train.compile the uncompiled module (TTA's views would recompile the training graph)."""
        return self.ema.module if self.ema is not None else self.uncompiled

    @property
    def uncompiled(self) -> torch.nn.Module:
        """The trained model without torch.compile's wrapper (compiled before prepare: the bare module)."""
        compiled = self.cfg.train.compile
        return bare_module(self.accelerator, self.model) if compiled else self.model

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
        whiten_from_data(model, data.train_images, data.mean, data.std)
    flops_per_image = train_flops_per_image(model, data.in_channels, data.image_size)
    check_deterministic_model(cfg, model, accelerator.device, (data.in_channels, data.image_size))
    seed_each_rank(accelerator, cfg.seed)
    accelerator.print(
        f"model {cfg.model.name}: {count_parameters(model):,} parameters; "
        f"{data.name}: {len(data.train_labels):,} train / {len(data.val_labels):,} val / "
        f"{len(data.test_labels):,} test; world size {accelerator.num_processes} on {accelerator.device}; "
        f"mixed precision {accelerator.mixed_precision} ({mixed_precision_source(cfg, accelerator)}); "
        f"{torch.get_num_threads()} threads, {describe_wait_policy()}; "
        f"training compute {flops_per_image / 1e9:.4g} GFLOP per image (forward + backward)"
        + (f"; EMA of the weights, decay {cfg.train.ema_decay}" if cfg.train.ema_decay else "")
    )
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
    model, optimizer = accelerator.prepare(model, optimizer)
    # The EMA starts from the initial weights, on the training device, without the compile wrapper.
    bare = bare_module(accelerator, model)
    ema = EMA(bare, cfg.train.ema_decay, accelerator) if cfg.train.ema_decay else None
    loader = build_train_loader(cfg, data, accelerator, plan)
    steps_per_epoch = len(loader)  # optimizer steps
    lookahead = None
    if cfg.optim.lookahead:
        net = bare_module(accelerator, model)
        lookahead = Lookahead(net, steps_per_epoch * cfg.train.epochs, cfg.optim.lookahead_every_steps)
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


def train_epoch(job: Job, state: TrainState, run: RunDir, checkpointer, stop, tracker, progress) -> dict:
    """One epoch (or what is left of it after a mid-epoch resume); returns its metrics row, or None
    when a stop request ended it (the full state saved, the tracker's run marked as preempted)."""
    cfg, accelerator = job.cfg, job.accelerator
    job.loader.set_epoch(state.epoch)
    job.model.train()
    progress.start_epoch(state.epoch + 1, done=state.step_in_epoch)
    batches = job.loader.iterate(skip=state.step_in_epoch)
    # Mid-epoch resume: the dropout RNG is set back once the loader has started, not before: the
    # DataLoader draws its base seed from the global RNG when its iterator starts (lazily, at the
    # first batch), which the interrupted run did before it saved (restoring earlier shifts every
    # later dropout mask).
    restore_rng = bool(state.step_in_epoch) and state.rng_state is not None
    partial = state.partial or {}
    carry = partial if accelerator.is_main_process else {}  # totals over ranks: rank 0 carries them
    loss_sum = torch.tensor(carry.get("loss_sum", 0.0), dtype=torch.float64, device=accelerator.device)
    correct = torch.tensor(carry.get("correct", 0), dtype=torch.int64, device=accelerator.device)
    seen = carry.get("seen", 0)
    t0, seen_at_t0 = time.perf_counter(), seen
    accumulation = job.plan.accumulation
    for micro, (x, y) in enumerate(batches, start=1):
        if restore_rng:
            state.restore_rng(accelerator.process_index)
            restore_rng = False
        lr = job.lr(state.step)
        logits, loss = train_step(job, x, y, lr)
        # Sums on the device, no host sync per step; the tutorial's loss.item() * batch size. One kernel for the
        # loss (add_ with alpha, in float64), three for the hits.
        loss_sum.add_(loss.detach(), alpha=y.shape[0])
        correct.add_((logits.detach().argmax(1) == y).sum())
        seen += y.shape[0]
        if micro % accumulation:  # gradients accumulate; the optimizer steps after the last micro-batch
            continue
        state.step += 1
        state.step_in_epoch += 1
        if job.lookahead is not None:
            job.lookahead.after_step(state.step)
        if state.step % cfg.train.log_every_steps == 0:
            ips = (seen - seen_at_t0) * accelerator.num_processes / max(time.perf_counter() - t0, 1e-9)
            progress.show_loss(log_step(job, state, run, tracker, (loss_sum, seen), lr, ips))
        progress.step(loss_sum, seen)
        stopping = stop.requested(state.step)
        checkpointer.maybe_save(running=(loss_sum, correct, seen), stop=stopping)
        if stopping:
            accelerator.print(
                f"stop requested: full state saved at step {state.step} in {run.last}; continue with --resume"
            )
            tracker.finish(preempted=True)
            return None
        if cfg.train.max_steps and state.step >= cfg.train.max_steps:
            break
    if restore_rng:  # resumed after the epoch's last step: no batch left, the RNG still goes back
        state.restore_rng(accelerator.process_index)
    # Sums over ranks, then divide. The reduction copies to the host, so it also waits for the
    # GPU's queued work: only after it does the clock show the epoch's real training time.
    s, c, n = reduce_sum(accelerator, [loss_sum, correct, seen])
    train_seconds = time.perf_counter() - t0
    progress.end_epoch()
    check_finite(s, state, run.last)
    state.epoch += 1
    state.step_in_epoch = 0
    state.partial = {}
    return {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": s / max(n, 1),
        "train_accuracy": c / max(n, 1),
        "lr": job.lr(max(state.step - 1, 0)),
        "images_per_sec": (n - partial.get("seen", 0)) / max(train_seconds, 1e-9),
        "epoch_seconds": train_seconds,
        "world_size": accelerator.num_processes,
        "train_samples": int(n),
        **job.compute(state.step),
    }


def train_step(job: Job, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch at learning rate `lr`: forward and backward, and with the step's last micro-batch the
    optimizer step (Accelerate's accumulate: the loss is divided by the accumulation steps; DDP's all-reduce
    and the prepared optimizer's step and zero_grad run only then). Returns (logits, loss), not synchronised.
    With one micro-batch per step this is the plain step; gradients are zeroed after it, not before."""
    for group in job.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    if job.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with job.accelerator.accumulate(job.model):
        with job.accelerator.autocast():
            logits = job.model(x)
            loss = job.criterion(logits, y)
        if job.plan.accumulation == 1 and job.accelerator.scaler is None:
            loss.backward()  # what accelerator.backward does here, without its division by 1 (a kernel per step)
        else:
            job.accelerator.backward(loss)
        job.optimizer.step()
        job.optimizer.zero_grad(set_to_none=True)
    if job.ema is not None and job.accelerator.sync_gradients:  # after a real optimizer step only
        job.ema.update(bare_module(job.accelerator, job.model))
    return logits, loss


def log_step(job: Job, state: TrainState, run: RunDir, tracker, running, lr: float, ips: float) -> float:
    """Collective: the running train loss over all ranks, to the tracker (and, with run.progress=false,
    a plain line); returns it (the progress bar shows it: no read of its own)."""
    s, n = reduce_sum(job.accelerator, list(running))
    check_finite(s, state, run.last)
    tracker.log({"train/loss": s / max(n, 1), "train/lr": lr, "train/images_per_sec": ips}, state.step)
    if not job.cfg.run.progress:  # run.progress=false: this line every log_every_steps instead
        job.accelerator.print(
            f"step {state.step} epoch {state.epoch + 1} loss {s / max(n, 1):.4f} lr {lr:.4g} {ips:.0f} img/s"
        )
    return s / max(n, 1)


def validate(job: Job, row: dict) -> dict | None:
    """Collective: validation metrics into `row`, the tutorial's epoch line; None when the run has no
    validation split (data.val_fraction=0: a final fit, nothing to validate on)."""
    val = job.evaluate_split("val") if len(job.data.val_labels) else None
    raw = None
    if val is not None:
        row.update({"val_loss": val.loss, "val_accuracy": val.accuracy, "val_samples": val.num_samples})
        if job.ema is not None:  # the trained weights too: EMA's gain read off one run, one trajectory
            raw = job.evaluate_split("val", model=job.uncompiled)
            row.update({"val_loss_raw": raw.loss, "val_accuracy_raw": raw.accuracy})
    job.accelerator.print(
        f"Epoch: {row['epoch']} \tTraining Loss: {row['train_loss']:.6f} \t"
        + (f"Validation Loss: {val.loss:.6f} \t(val acc {val.accuracy:.4f}, " if val else "(")
        + (f"without EMA {raw.accuracy:.4f}, " if raw is not None else "")
        + f"{row['images_per_sec']:.0f} img/s)"
    )
    return {"val_loss": val.loss, "val_accuracy": val.accuracy} if val else None


def test_best(job: Job, state: TrainState, run: RunDir) -> tuple[dict, object]:
    """Collective: load best.pt (with data.val_fraction=0, the newest weights), test, write
    test_metrics.json and the model card's test results; returns (summary, EvalResult)."""
    accelerator = job.accelerator
    # Only the main process reads best.pt and sends the weights to the others: the file may live on
    # a disk the other machines of a multi-node job do not see.
    accelerator.wait_for_everyone()
    # best.pt holds the bare module's keys; with train.compile the unwrapped model would still be
    # the compile wrapper (its keys start with _orig_mod.), so unwrap that too.
    net = bare_module(accelerator, job.eval_model)
    if broadcast_object(accelerator, run.best.exists()):
        if accelerator.is_main_process:
            net.load_state_dict(load_checkpoint(run.best)["model_state"])
        broadcast_module(accelerator, net)
    test = job.evaluate_split("test")
    print_report(test, "test", accelerator)
    summary = {
        **test.to_json(),
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss_or_none,
        "best_metric": job.cfg.train.best_metric,
        "stopped_early": state.stopped_early,
        "epochs": state.epoch,
        "steps": state.step,
        "world_size": accelerator.num_processes,
        **job.compute(state.step),
    }
    if accelerator.is_main_process:
        atomic_write_bytes(run.test_metrics, json.dumps(summary, indent=2).encode())
        add_test_results(run, summary)
    return summary, test
