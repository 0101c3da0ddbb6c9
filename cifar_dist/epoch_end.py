"""The end of an epoch in train(): validate when due, log, save the full state when due, each phase timed into
the epoch's metrics.jsonl row (validate_seconds, log_seconds, save_seconds), so a benchmark sees the costs of a
loop besides training (issue 34: an airbench epoch on a GPU is a fraction of a second; a full save per epoch
could cost as much)."""

from __future__ import annotations

import time


def end_epoch(job, state, row: dict, checkpointer, metrics_log, tracker, after_epoch, validate) -> bool:
    """Collective: after an epoch's training, validate when due (keeping the best model), log, save the full state
    when due (train.checkpoint_every_epochs; the end of training always saves). Each phase's seconds go in the
    epoch's row: validation (with best.pt) now, the metrics and tracker and the full state's save after it was
    written (they reach metrics.jsonl with the next row, or the loop's final flush). `validate`: the trainer's.
    Returns whether training ends."""
    cfg, stopping, t = job.cfg, False, time.perf_counter()
    if state.epoch % cfg.train.eval_every_epochs == 0 or state.epoch == cfg.train.epochs:
        val_metrics = validate(job, row)
        row["best"] = checkpointer.maybe_save_best(job.eval_model, state.epoch, val_metrics)
        row["early_stop"] = stopping = checkpointer.should_stop_early()  # collective
    row["validate_seconds"], t = time.perf_counter() - t, time.perf_counter()
    metrics_log.append(row)
    tracker.log({f"epoch/{k}": v for k, v in row.items()}, state.step)
    row["log_seconds"], t = time.perf_counter() - t, time.perf_counter()
    saved = checkpointer.maybe_save(epoch_end=True, final=stopping or not state.epochs_left(cfg))
    row["save_seconds"] = time.perf_counter() - t
    if stopping or (after_epoch is not None and after_epoch(state.epoch, row, job.evaluate_split)):
        if not saved:  # the end of training always saves
            checkpointer.maybe_save(final=True)
        return True
    return False
