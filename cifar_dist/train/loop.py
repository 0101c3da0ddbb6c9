"""The training loop: the same code on a laptop CPU, one GPU, DDP and SLURM.

    accelerate launch train.py                                   # the tutorial run (preset tutorial)
    accelerate launch --config_file accelerate_configs/cpu_ddp.yaml train.py --data.name=synthetic --train.epochs=2

`train()` reads top to bottom in the order a run happens: accelerator, data, run folder, build
(model, optimizer, loader: job.py), start or resume, then per epoch train, validate, checkpoint, log;
finally the test with the best weights. The phases are the functions below it, in the same order.
What the loop works with travels in two objects: the `Job` (what is trained, job.py) and the
`RunContext` (where the run is and who records it: state, run folder, checkpointer, best and early
stop, metrics log, tracker, stop request, progress).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from ..artifacts.export import add_test_results, load_checkpoint, model_metadata
from ..artifacts.metrics import MetricsLog
from ..artifacts.run_dir import RunDir, prepare_run_dir
from ..config.rules import config_warnings
from ..config.schema import Config, format_config
from ..data.datasets import load_data
from ..distributed.accelerator import bare_module, build_accelerator
from ..distributed.collectives import broadcast_module, broadcast_object, reduce_sum
from ..distributed.preemption import CHECK_EVERY_STEPS, StopRequest
from ..evaluate.evaluation import print_report
from ..files import atomic_write_bytes
from ..progress import TrainProgress
from ..provenance import collect as collect_provenance
from ..tracking.tracker import accelerator_tracking, build_tracker
from .best import Best
from .checkpoint import Checkpointer
from .job import Job, build
from .state import TrainState, check_finite


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
    folder, resume = prepare_run_dir(cfg, accelerator)
    accelerator.print(format_config(cfg))
    for line in config_warnings(cfg):
        accelerator.print(line, file=sys.stderr)

    # Build: model, optimizer, loader (in this order: each draws from the seeded RNG); then the run's
    # state and recorders, resumed from last/ with --resume.
    job = build(cfg, accelerator, data)
    run = start(job, folder, stop, resume)

    # Epochs: train, validate when due, keep the best model, log, save the full state.
    with TrainProgress(
        accelerator.is_main_process and cfg.run.progress, len(job.loader), cfg.train.epochs, accelerator.num_processes
    ) as run.progress:
        while run.state.epochs_left(cfg):
            row = train_epoch(job, run)
            if row is None:  # a stop request: the full state is saved, --resume continues there
                return {"stopped_at_step": run.state.step, "exit_code": stop.exit_code()}
            if end_epoch(job, run, row, after_epoch):
                break
        run.metrics.flush()

    # Test: the tutorial tests the best-validation model, not the last one.
    summary, test = test_best(job, run)
    run.tracker.log_test(test, job.data, folder.path, folder.best, compute=job.compute(run.state.step))
    run.tracker.finish()
    accelerator.end_training()
    # On success only: after an error the flag stays installed, since cli's exit path asks it whether
    # the launcher's SIGTERM already came (distributed.wait_for_launcher_stop).
    stop.close()
    return summary


@dataclass
class RunContext:
    """Where the run is and who records it: what the loop's phases take together with the Job."""

    state: TrainState  # epoch, step, best so far, a partly done epoch: saved in last/
    folder: RunDir  # every name in the run folder
    checkpointer: Checkpointer  # best.pt, model/ and last/
    best: Best  # which epoch is best; early stopping
    metrics: MetricsLog  # metrics.jsonl
    tracker: object  # W&B, TensorBoard, MLflow or nothing (tracking/)
    stop: StopRequest  # SIGUSR1/SIGTERM, asked at step boundaries
    progress: TrainProgress | None = None  # set while the epochs run


def start(job: Job, folder: RunDir, stop: StopRequest, resume: bool) -> RunContext:
    """The run's state and recorders; with --resume, model, optimizer, RNGs, TrainState and the metrics
    of the completed epochs come back from last/."""
    cfg, accelerator = job.cfg, job.accelerator
    state = TrainState(config=cfg.to_dict())
    accelerator.register_for_checkpointing(state, *job.extra_state())  # last/custom_checkpoint_<i>.pkl
    provenance = broadcast_object(accelerator, collect_provenance())  # one record, the same everywhere
    checkpointer = Checkpointer(accelerator, folder, cfg, {**model_metadata(cfg, job.data), **provenance}, state)
    metrics = MetricsLog(folder.metrics, accelerator)
    if resume:
        checkpointer.load_state()
        metrics.load(epochs_completed=state.epoch)
        accelerator.print(
            f"resumed {folder.path} at epoch {state.epoch + 1}, step {state.step} "
            f"(best validation loss so far {state.best_val_loss:.6f})"
        )
    tracker = build_tracker(cfg, accelerator, folder.path, state, provenance)
    return RunContext(state, folder, checkpointer, Best(accelerator, cfg, state), metrics, tracker, stop)


class RunningSums:
    """An epoch's running train sums on the device (no host sync per step): the tutorial's loss.item() *
    batch size, correct predictions, images seen; a resumed epoch goes on from the saved ones."""

    def __init__(self, carried: dict, device):
        self.loss = torch.tensor(carried.get("loss_sum", 0.0), dtype=torch.float64, device=device)
        self.correct = torch.tensor(carried.get("correct", 0), dtype=torch.int64, device=device)
        self.seen = carried.get("seen", 0)

    def add(self, logits: torch.Tensor, loss: torch.Tensor, y: torch.Tensor) -> None:
        # One kernel for the loss (add_ with alpha, in float64), three for the hits.
        self.loss.add_(loss.detach(), alpha=y.shape[0])
        self.correct.add_((logits.detach().argmax(1) == y).sum())
        self.seen += y.shape[0]


def train_epoch(job: Job, run: RunContext) -> dict | None:
    """One epoch (or what is left of it after a mid-epoch resume); returns its metrics row, or None
    when a stop request ended it (the full state saved, the tracker's run marked as preempted)."""
    cfg, accelerator, state = job.cfg, job.accelerator, run.state
    job.loader.set_epoch(state.epoch)
    job.model.train()
    run.progress.start_epoch(state.epoch + 1, done=state.step_in_epoch)
    batches = job.loader.iterate(skip=state.step_in_epoch)
    # Mid-epoch resume: the dropout RNG is set back once the loader has started, not before: the
    # DataLoader draws its base seed from the global RNG when its iterator starts (lazily, at the
    # first batch), which the interrupted run did before it saved (restoring earlier shifts every
    # later dropout mask).
    restore_rng = state.rng_to_restore()
    resumed_seen = (state.partial or {}).get("seen", 0)  # images this epoch trained before a resume
    sums = RunningSums(state.carried(accelerator.is_main_process), accelerator.device)  # rank 0 carries totals
    t0, seen_at_t0 = time.perf_counter(), sums.seen
    for micro, (x, y) in enumerate(batches, start=1):
        if restore_rng:
            state.restore_rng(accelerator.process_index)
            restore_rng = False
        lr = job.lr(state.step)
        logits, loss = train_step(job, x, y, lr)
        sums.add(logits, loss, y)
        if micro % job.plan.accumulation:  # gradients accumulate; the optimizer steps after the last micro-batch
            continue
        state.step += 1
        state.step_in_epoch += 1
        if job.lookahead is not None:
            job.lookahead.after_step(state.step)
        if state.step % cfg.train.log_every_steps == 0:
            ips = (sums.seen - seen_at_t0) * accelerator.num_processes / max(time.perf_counter() - t0, 1e-9)
            run.progress.show_loss(log_step(job, run, sums, lr, ips))
        run.progress.step(sums.loss, sums.seen)
        if stopped(job, run, sums):
            return None
        if cfg.train.max_steps and state.step >= cfg.train.max_steps:
            break
    if restore_rng:  # resumed after the epoch's last step: no batch left, the RNG still goes back
        state.restore_rng(accelerator.process_index)
    return epoch_row(job, run, sums, t0, resumed_seen)


def stopped(job: Job, run: RunContext, sums: RunningSums) -> bool:
    """Collective, after every optimizer step: save the full state when due (every
    train.checkpoint_every_steps, or on a stop request); True when a stop request ends the run here."""
    stopping = run.stop.requested(run.state.step)
    run.checkpointer.maybe_save(running=(sums.loss, sums.correct, sums.seen), stop=stopping)
    if stopping:
        job.accelerator.print(
            f"stop requested: full state saved at step {run.state.step} in {run.folder.last}; continue with --resume"
        )
        run.tracker.finish(preempted=True)
    return stopping


def epoch_row(job: Job, run: RunContext, sums: RunningSums, t0: float, resumed_seen: int) -> dict:
    """Collective: the epoch's metrics row (metrics.jsonl, the tracker's epoch/* keys), built here once;
    validation adds its keys. Sums over ranks, then divide. The reduction copies to the host, so it also
    waits for the GPU's queued work: only after it does the clock show the epoch's real training time."""
    accelerator, state = job.accelerator, run.state
    s, c, n = reduce_sum(accelerator, [sums.loss, sums.correct, sums.seen])
    train_seconds = time.perf_counter() - t0
    run.progress.end_epoch()
    check_finite(s, state, run.folder.last)
    state.end_epoch()
    return {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": s / max(n, 1),
        "train_accuracy": c / max(n, 1),
        "lr": job.lr(max(state.step - 1, 0)),
        "images_per_sec": (n - resumed_seen) / max(train_seconds, 1e-9),
        "epoch_seconds": train_seconds,
        "world_size": accelerator.num_processes,
        "train_samples": int(n),
        **job.compute(state.step),
    }


def end_epoch(job: Job, run: RunContext, row: dict, after_epoch=None) -> bool:
    """Collective, after an epoch: validate when due and keep the best model, log the row, save the full
    state when due (train.checkpoint_every_epochs; the end of training always saves), each phase's seconds in
    the row (validate_seconds, log_seconds, save_seconds: the loop's costs besides training, which an H100
    epoch of a fraction of a second would feel). The last two reach metrics.jsonl with the next row or the
    loop's final flush. True when early stopping or `after_epoch` ends the run here."""
    cfg, state, t = job.cfg, run.state, time.perf_counter()
    stopping = False
    if state.epoch % cfg.train.eval_every_epochs == 0 or state.epoch == cfg.train.epochs:
        val_metrics = validate(job, row)
        row["best"] = run.best.judge(state.epoch, val_metrics)
        if row["best"]:
            run.checkpointer.save_best(job.eval_model, state.epoch, val_metrics)
        row["early_stop"] = stopping = run.best.should_stop_early()  # collective
    row["validate_seconds"], t = time.perf_counter() - t, time.perf_counter()
    run.metrics.append(row)
    run.tracker.log({f"epoch/{k}": v for k, v in row.items()}, state.step)
    row["log_seconds"], t = time.perf_counter() - t, time.perf_counter()
    saved = run.checkpointer.maybe_save(epoch_end=True, final=stopping or not state.epochs_left(cfg))
    row["save_seconds"] = time.perf_counter() - t
    if stopping or (after_epoch is not None and after_epoch(state.epoch, row, job.evaluate_split)):
        if not saved:  # the end of training always saves
            run.checkpointer.maybe_save(final=True)
        return True
    return False


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


def log_step(job: Job, run: RunContext, sums: RunningSums, lr: float, ips: float) -> float:
    """Collective: the running train loss over all ranks, to the tracker (and, with run.progress=false,
    a plain line); returns it (the progress bar shows it: no read of its own)."""
    state = run.state
    s, n = reduce_sum(job.accelerator, [sums.loss, sums.seen])
    check_finite(s, state, run.folder.last)
    run.tracker.log({"train/loss": s / max(n, 1), "train/lr": lr, "train/images_per_sec": ips}, state.step)
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


def test_best(job: Job, run: RunContext) -> tuple[dict, object]:
    """Collective: load best.pt (with data.val_fraction=0, the newest weights), test, write
    test_metrics.json and the model card's test results; returns (summary, EvalResult)."""
    accelerator, state, folder = job.accelerator, run.state, run.folder
    # Only the main process reads best.pt and sends the weights to the others: the file may live on
    # a disk the other machines of a multi-node job do not see.
    accelerator.wait_for_everyone()
    # best.pt holds the bare module's keys; with train.compile the unwrapped model would still be
    # the compile wrapper (its keys start with _orig_mod.), so unwrap that too.
    net = bare_module(accelerator, job.eval_model)
    if broadcast_object(accelerator, folder.best.exists()):
        if accelerator.is_main_process:
            net.load_state_dict(load_checkpoint(folder.best)["model_state"])
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
        atomic_write_bytes(folder.test_metrics, json.dumps(summary, indent=2).encode())
        add_test_results(folder, summary)
    return summary, test
