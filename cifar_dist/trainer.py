"""The training loop: one function, the same code on a laptop CPU, one GPU, DDP and SLURM.

    accelerate launch train.py                                   # the tutorial run (preset seed)
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py --data.name=synthetic --train.epochs=2

It reads top to bottom in the order a run happens: accelerator, run folder, data, model,
optimizer, resume, epochs (train, validate, checkpoint, log), test with the best weights.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import Checkpointer, MetricsLog, TrainState, atomic_write_bytes, load_checkpoint
from .config import Config, config_warnings, format_config
from .data import load_data
from .distributed import (broadcast_module, broadcast_object, build_accelerator, mixed_precision_source, raise_if_any,
                          reduce_sum, seed_each_rank)
from .errors import UserError
from .evaluation import evaluate
from .faults import make_run_dir
from .loaders import build_train_loader
from .models import build_model, count_parameters
from .preemption import StopRequest
from .progress import TrainProgress
from .schedules import lr_at, scaled_lr
from .tracking import accelerator_log_with, build_tracker

# Config keys that must not change when a run resumes: they define the model and the data split.
# data.root only for imagefolder, where it names the images; CIFAR's root may move (node-local scratch).
RESUME_FIXED = [("seed",), ("data", "name"), ("data", "image_size"), ("data", "val_fraction"), ("data", "normalize"),
                ("data", "synthetic_train_size"), ("data", "synthetic_test_size"), ("model", "name"),
                ("model", "width"), ("train", "per_device_batch_size")]


def _get(tree: dict, path: tuple, default=None):
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return default
        tree = tree[p]
    return tree


def prepare_run_dir(cfg: Config, accelerator) -> tuple[Path, bool]:
    """Pick run.dir, decide whether this is a resume, and fail early (on every rank) when the
    folder holds another run, cannot be written, or was made with a different model/data config."""
    name = cfg.run.dir or f"runs/{cfg.data.name}-{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(broadcast_object(accelerator, name))
    cfg.run.dir = str(run_dir)
    error, resume = None, False
    if accelerator.is_main_process:
        has_state = any((run_dir / p / "custom_checkpoint_0.pkl").exists() for p in ("last", "last.old"))
        has_run = has_state or (run_dir / "best.pt").exists() or (run_dir / "metrics.jsonl").exists()
        if cfg.train.resume == "false" and has_run:
            error = (f"run.dir {run_dir} already holds a run; pass --resume to continue it "
                     f"or choose a new --run.dir (nothing was changed)")
        elif cfg.train.resume == "true" and not has_state:
            error = f"nothing to resume in {run_dir} (no last/ state); drop --resume to start a new run there"
        resume = has_state and cfg.train.resume != "false"
        if error is None and resume and (run_dir / "config.json").exists():
            saved = json.loads((run_dir / "config.json").read_text())
            fixed = RESUME_FIXED + [("data", "root")] * (cfg.data.name == "imagefolder")
            now, defaults = cfg.to_dict(), Config().to_dict()  # a key newer than the saved run: its default
            changed = [".".join(p) for p in fixed if _get(saved, p, _get(defaults, p)) != _get(now, p)]
            if changed:
                error = (f"cannot resume {run_dir}: {', '.join(changed)} differ from the saved run "
                         f"(see {run_dir}/config.json); resume with the same settings or start a new --run.dir")
        if error is None:
            try:  # only a probe: config.json is written with the first saved state (Checkpointer), so
                # a run that fails before then (bad data, a bad resume) leaves run.dir as it was, and a
                # folder made here is removed again (make_run_dir)
                make_run_dir(run_dir)
                atomic_write_bytes(run_dir / f".write-probe{os.getpid()}", b"")
                (run_dir / f".write-probe{os.getpid()}").unlink()
            except OSError as e:
                error = f"cannot write to run.dir {run_dir} ({e.strerror}); choose a writable --run.dir"
    raise_if_any(accelerator, error)
    return run_dir, broadcast_object(accelerator, resume)


def _restore_rng(state, rank: int) -> bool:
    """Put this rank's torch RNG back where the interrupted run saved it; returns False (nothing
    left to restore)."""
    torch.set_rng_state(state.rng_state[rank % len(state.rng_state)])
    if state.cuda_rng_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.cuda_rng_state[rank % len(state.cuda_rng_state)])
    return False


def train(cfg: Config, after_epoch=None) -> dict:
    """Train, validate, checkpoint; then test the best-validation weights. Returns the test summary.

    after_epoch(epoch, row, evaluate_split) -> bool, if given, runs on every rank at the end of every epoch
    (after its checkpoint): `row` is the epoch's metrics.jsonl row (its `epoch_seconds` is the training time
    alone), `evaluate_split("test")` or `("val")` evaluates the current weights with the run's eval settings
    (collective). Returning True ends training there, as if train.epochs had been reached. For benchmarks
    (benchmarks/time_to_accuracy.py: test accuracy after every epoch, stop at a target).
    """
    accelerator = build_accelerator(cfg, log_with=accelerator_log_with(cfg))
    # Handlers first: a stop request during start-up (data, model, resume) is kept and honoured at
    # the first step; under slurm/launch.sh USR1 is ignored until this line.
    stop = StopRequest(accelerator)
    run_dir, resume = prepare_run_dir(cfg, accelerator)
    accelerator.print(format_config(cfg))
    for line in config_warnings(cfg):
        accelerator.print(line, file=sys.stderr)

    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    data = load_data(cfg, accelerator)
    model = build_model(cfg.model.name, data.in_channels, data.image_size, data.num_classes,
                        dropout=cfg.model.dropout, width=cfg.model.width)
    seed_each_rank(accelerator, cfg.seed)
    accelerator.print(f"model {cfg.model.name}: {count_parameters(model):,} parameters; "
                      f"{data.name}: {len(data.train_labels):,} train / {len(data.val_labels):,} val / "
                      f"{len(data.test_labels):,} test; world size {accelerator.num_processes} on {accelerator.device}; "
                      f"mixed precision {accelerator.mixed_precision} ({mixed_precision_source(cfg, accelerator)})")
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_lr = scaled_lr(cfg, accelerator.num_processes)  # optim.reference_batch_size: lr given per that batch
    # fused: one kernel updates every parameter (PyTorch's default on the CPU is a Python loop over
    # them). Same maths; the rounding may differ in the last bit: 20 steps of resnet_fast (and a whole
    # 13-epoch `fast` run) end bit-identical to the loop, 20 steps of the seed CNN do not.
    # Measured (2 cores, torch 2.14.1, medians of 5) on the training step alone: seed CNN batch 64
    # 4,154 -> 4,426 images/s, batch 128 5,023 -> 5,133; resnet_fast +1 %.
    optimizer = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=cfg.optim.momentum,
                                nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay,
                                fused=accelerator.device.type in ("cpu", "cuda"))
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.train.compile:
        model = torch.compile(model)
    loader = build_train_loader(cfg, data, accelerator)
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = int(cfg.optim.warmup_epochs * steps_per_epoch)

    state = TrainState(config=cfg.to_dict())
    accelerator.register_for_checkpointing(state)
    meta = {"model": {"name": cfg.model.name, "in_channels": data.in_channels, "image_size": data.image_size,
                      "num_classes": data.num_classes, "dropout": cfg.model.dropout, "width": cfg.model.width},
            "classes": data.classes, "normalize": {"mean": list(data.mean), "std": list(data.std)}}
    checkpointer = Checkpointer(accelerator, run_dir, cfg, meta, state)
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", accelerator)
    if resume:
        checkpointer.load_state()
        metrics_log.load(epochs_completed=state.epoch)
        accelerator.print(f"resumed {run_dir} at epoch {state.epoch + 1}, step {state.step} "
                          f"(best validation loss so far {state.best_val_loss:.6f})")
    tracker = build_tracker(cfg, accelerator, run_dir, state)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)
    eval_kw = dict(accelerator=accelerator, classes=data.classes, batch_size=cfg.eval.per_device_batch_size,
                   tta=cfg.eval.tta, channels_last=cfg.train.channels_last,
                   tta_translate=cfg.eval.tta_translate)

    def evaluate_split(split: str):
        images, labels = (data.test_images, data.test_labels) if split == "test" else (data.val_images, data.val_labels)
        return evaluate(model, images, labels, data.mean, data.std, **eval_kw)

    def check_finite(loss_sum: float) -> None:
        if not math.isfinite(loss_sum):
            raise UserError(f"training loss became {loss_sum} by step {state.step} (epoch {state.epoch + 1}); lower "
                            f"--optim.lr or check the data; the last good state is kept in {run_dir}/last")

    def keep_partial(loss_sum, correct, seen) -> None:
        """Before a mid-epoch save: the epoch's running train sums, totalled over ranks (Accelerate saves
        TrainState from rank 0 only, so per-rank sums would lose the other ranks' share)."""
        s, c, n = reduce_sum(accelerator, [loss_sum, correct, seen])
        check_finite(s)
        state.partial = {"loss_sum": s, "correct": int(c), "seen": int(n)}

    with TrainProgress(accelerator.is_main_process and cfg.run.progress, steps_per_epoch, cfg.train.epochs,
                       accelerator.num_processes) as progress:
        while state.epoch < cfg.train.epochs and not (cfg.train.max_steps and state.step >= cfg.train.max_steps):
            epoch = state.epoch
            loader.set_epoch(epoch)
            model.train()
            progress.start_epoch(epoch + 1, done=state.step_in_epoch)
            batches = loader.iterate(skip=state.step_in_epoch)
            # Mid-epoch resume: the dropout RNG is set back once the loader has started, not before: the
            # DataLoader draws its base seed from the global RNG when its iterator starts (lazily, at the
            # first batch), which the interrupted run did before it saved (measured: restoring earlier
            # shifted every later dropout mask).
            restore_rng = bool(state.step_in_epoch) and state.rng_state is not None
            partial = state.partial or {}
            carry = partial if accelerator.is_main_process else {}  # totals over ranks: rank 0 carries them
            loss_sum = torch.tensor(carry.get("loss_sum", 0.0), dtype=torch.float64, device=accelerator.device)
            correct = torch.tensor(carry.get("correct", 0), dtype=torch.int64, device=accelerator.device)
            seen = carry.get("seen", 0)
            t0, seen_at_t0 = time.perf_counter(), seen
            for x, y in batches:
                if restore_rng:
                    restore_rng = _restore_rng(state, accelerator.process_index)
                lr = lr_at(state.step, total_steps, base_lr, cfg.optim.schedule, warmup_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with accelerator.autocast():
                    logits = model(x)
                    loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                # Sums on the device, no host sync per step; the tutorial's loss.item() * batch size.
                loss_sum += loss.detach().double() * y.shape[0]
                correct += (logits.detach().argmax(1) == y).sum()
                seen += y.shape[0]
                state.step += 1
                state.step_in_epoch += 1
                if state.step % cfg.train.log_every_steps == 0:
                    s, n = reduce_sum(accelerator, [loss_sum, seen])
                    check_finite(s)
                    elapsed = time.perf_counter() - t0
                    ips = (seen - seen_at_t0) * accelerator.num_processes / max(elapsed, 1e-9)
                    tracker.log({"train/loss": s / max(n, 1), "train/lr": lr, "train/images_per_sec": ips}, state.step)
                    if not cfg.run.progress:  # run.progress=false: this line every log_every_steps instead
                        accelerator.print(f"step {state.step} epoch {epoch + 1} loss {s / max(n, 1):.4f} "
                                          f"lr {lr:.4g} {ips:.0f} img/s")
                progress.step(loss_sum, seen)
                if checkpointer.every and state.step % checkpointer.every == 0:
                    keep_partial(loss_sum, correct, seen)
                    checkpointer.save_state()
                if stop.requested(state.step):
                    keep_partial(loss_sum, correct, seen)
                    checkpointer.save_state()
                    accelerator.print(f"stop requested: full state saved at step {state.step} in {run_dir}/last; "
                                      f"continue with --resume")
                    tracker.finish(preempted=True)
                    raise SystemExit(stop.exit_code())
                if cfg.train.max_steps and state.step >= cfg.train.max_steps:
                    break
            if restore_rng:  # resumed after the epoch's last step: no batch left, the RNG still goes back
                _restore_rng(state, accelerator.process_index)
            # Sums over ranks, then divide. The reduction copies to the host, so it also waits for the
            # GPU's queued work: only after it does the clock show the epoch's real training time.
            s, c, n = reduce_sum(accelerator, [loss_sum, correct, seen])
            train_seconds = time.perf_counter() - t0
            progress.end_epoch()
            check_finite(s)
            state.epoch += 1
            state.step_in_epoch = 0
            state.partial = {}
            row = {"epoch": state.epoch, "step": state.step, "train_loss": s / max(n, 1), "train_accuracy": c / max(n, 1),
                   "lr": lr_at(max(state.step - 1, 0), total_steps, base_lr, cfg.optim.schedule, warmup_steps),
                   "images_per_sec": (n - partial.get("seen", 0)) / max(train_seconds, 1e-9),
                   "epoch_seconds": train_seconds, "world_size": accelerator.num_processes, "train_samples": int(n)}
            if state.epoch % cfg.train.eval_every_epochs == 0 or state.epoch == cfg.train.epochs:
                val_metrics = None  # data.val_fraction=0: a final fit, nothing to validate on
                if len(data.val_labels):
                    val = evaluate(model, data.val_images, data.val_labels, data.mean, data.std, **eval_kw)
                    row.update({"val_loss": val.loss, "val_accuracy": val.accuracy, "val_samples": val.num_samples})
                    val_metrics = {"val_loss": val.loss, "val_accuracy": val.accuracy}
                accelerator.print(f"Epoch: {state.epoch} \tTraining Loss: {row['train_loss']:.6f} \t" + (
                    f"Validation Loss: {val.loss:.6f} \t(val acc {val.accuracy:.4f}, " if val_metrics else "(")
                    + f"{row['images_per_sec']:.0f} img/s)")
                row["best"] = checkpointer.maybe_save_best(model, state.epoch, val_metrics)
            metrics_log.append(row)
            tracker.log({f"epoch/{k}": v for k, v in row.items()}, state.step)
            checkpointer.save_state()
            if after_epoch is not None and after_epoch(state.epoch, row, evaluate_split):
                break

    # The tutorial tests the best-validation model, not the last one (with data.val_fraction=0, the last).
    # Only the main process reads best.pt and sends the weights to the others: the file may live on a
    # disk the other machines of a multi-node job do not see.
    accelerator.wait_for_everyone()
    # best.pt holds the bare module's keys; with train.compile the unwrapped model would still be
    # the compile wrapper (its keys start with _orig_mod.), so unwrap that too.
    net = accelerator.unwrap_model(model, keep_torch_compile=False)
    if broadcast_object(accelerator, checkpointer.best_path.exists()):
        if accelerator.is_main_process:
            net.load_state_dict(load_checkpoint(checkpointer.best_path)["model_state"])
        broadcast_module(accelerator, net)
    test = evaluate(model, data.test_images, data.test_labels, data.mean, data.std, **eval_kw)
    accelerator.print(f"Test Loss: {test.loss:.6f}\n")
    for line in test.tutorial_lines():
        accelerator.print(line)
    summary = {**test.to_json(), "best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss_or_none,
               "epochs": state.epoch, "steps": state.step, "world_size": accelerator.num_processes}
    if accelerator.is_main_process:
        atomic_write_bytes(run_dir / "test_metrics.json", json.dumps(summary, indent=2).encode())
    tracker.log_test(test, data, run_dir, checkpointer.best_path)
    tracker.finish()
    accelerator.end_training()
    return summary
