"""Which epoch is best, and when to stop waiting for a better one (train.best_metric,
train.early_stop_patience). Beside the Checkpointer, which only writes what this decides:

    best = Best(accelerator, cfg, state)
    if best.judge(epoch, val_metrics): checkpointer.save_best(model, epoch, val_metrics)
    if best.should_stop_early(): ...   # collective
"""

from __future__ import annotations

from ..distributed.collectives import broadcast_object
from .state import TrainState


class Best:
    def __init__(self, accelerator, cfg, state: TrainState):
        self.accelerator = accelerator
        self.cfg = cfg
        self.state = state  # the verdicts live in TrainState, so they travel in last/ and resume exactly

    def judge(self, epoch: int, val_metrics: dict | None) -> bool:
        """Is `epoch`'s model the one best.pt keeps? The same answer on every rank (validation metrics are
        exact and identical everywhere). val_metrics None: the run has no validation split
        (data.val_fraction=0, a final fit on every training image): the newest weights are kept."""
        if val_metrics is None:
            self.state.best_epoch = epoch
            self.accelerator.print(f"No validation split (data.val_fraction=0): saving the epoch {epoch} model ...")
            return True
        if not self.improved(val_metrics):
            self.state.validations_since_best += 1
            return False
        what = self.cfg.train.best_metric
        previous = self.state.best_val_loss if what == "val_loss" else self.state.best_val_accuracy
        self.state.best_val_loss = val_metrics["val_loss"]
        self.state.best_val_accuracy = val_metrics["val_accuracy"]
        self.state.best_epoch = epoch
        self.state.validations_since_best = 0
        self.accelerator.print(
            f"Validation loss decreased ({previous:.6f} --> {val_metrics['val_loss']:.6f}).  Saving model ..."
            if what == "val_loss"
            else f"Validation accuracy increased ({max(previous, 0):.4f} --> {val_metrics['val_accuracy']:.4f}).  "
            "Saving model ..."
        )
        return True

    def improved(self, val_metrics: dict) -> bool:
        """train.best_metric: a lower validation loss (the tutorial's rule) or a higher accuracy."""
        if self.cfg.train.best_metric == "val_accuracy":
            return val_metrics["val_accuracy"] > self.state.best_val_accuracy
        return val_metrics["val_loss"] < self.state.best_val_loss

    def should_stop_early(self) -> bool:
        """train.early_stop_patience validations in a row without improving train.best_metric. The same
        answer on every rank: validation metrics are reduced over ranks exactly, and the main process's
        answer is broadcast anyway, so no rank leaves the loop while another waits in a collective."""
        patience = self.cfg.train.early_stop_patience
        stop = broadcast_object(self.accelerator, bool(patience) and self.state.validations_since_best >= patience)
        if stop:
            self.state.stopped_early = True
            best = (
                f"validation loss {self.state.best_val_loss:.6f}"
                if self.cfg.train.best_metric == "val_loss"
                else f"validation accuracy {self.state.best_val_accuracy:.4f}"
            )
            self.accelerator.print(
                f"Early stop: {self.cfg.train.best_metric} has not improved for {patience} validation(s) "
                f"(best {best} at epoch {self.state.best_epoch})"
            )
        return stop
