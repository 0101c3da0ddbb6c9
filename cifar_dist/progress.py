"""Progress that reads well anywhere: a rich bar on a terminal, plain lines in a log file.

    with TrainProgress(enabled, steps_per_epoch, epochs, world_size) as progress:
        progress.start_epoch(epoch, done=0)
        for ...: progress.step(loss_sum, seen)     # every step; reads the loss only when it reports
                 progress.show_loss(loss)           # at the loop's logging steps: the bar's loss
        progress.end_epoch()

    with bar("evaluating", total=len(batches), enabled=is_main) as advance:
        for ...: advance()

Why two forms: rich's bar prints nothing when stdout is not a terminal (measured: a training
log written by SLURM to a file had no in-epoch line), so there `TrainProgress` prints one plain
line at every PLAIN_FRACTION of the epoch instead:

    epoch 2/18 step 130/391 (33%) loss 1.2345 5120 img/s ETA 0:00:12

`loss` is the epoch's running mean training loss as this process (the main one) summed it, and
ETA the rest of this epoch at the epoch's pace so far. Evaluation, TTA and the figures use `bar`:
a transient bar on a terminal, silence elsewhere (their results are printed anyway). Only one rich
display can be live at a time, so a `bar` opened while the training bar shows joins it as a row.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from datetime import timedelta

PLAIN_FRACTION = 0.1  # a plain line every 10% of an epoch

_live = None  # the rich Progress now on screen, if any


def is_terminal() -> bool:
    """rich's own rule for whether a bar can show (a TTY, or FORCE_COLOR/TTY_INTERACTIVE set)."""
    from rich import get_console

    return get_console().is_terminal


def _new_progress():
    from rich import progress as p

    return p.Progress(
        p.TextColumn("[bold]{task.description}"),
        p.BarColumn(),
        p.MofNCompleteColumn(),
        p.TimeElapsedColumn(),
        p.TimeRemainingColumn(),
        transient=True,
    )


@contextmanager
def _row(description: str, total: int):
    """A row on the live display (a new one unless one is already showing); yields the task id."""
    global _live
    if _live is not None:
        task = _live.add_task(description, total=total)
        try:
            yield _live, task
        finally:
            _live.remove_task(task)
        return
    with _new_progress() as progress:
        _live = progress
        try:
            task = progress.add_task(description, total=total)
            yield progress, task
        finally:
            _live = None


@contextmanager
def bar(description: str, total: int, enabled: bool = True):
    """Yields advance(n=1). A transient bar on a terminal when enabled; otherwise nothing is shown."""
    if not enabled or not is_terminal() or total <= 0:
        yield lambda n=1: None
        return
    with _row(description, total) as (progress, task):
        yield lambda n=1: progress.advance(task, n)


class TrainProgress:
    """The training loop's progress for one process (pass enabled=False on the others)."""

    def __init__(self, enabled: bool, steps_per_epoch: int, epochs: int, world_size: int = 1, out=None):
        self.enabled, self.total, self.epochs, self.world = enabled, steps_per_epoch, epochs, world_size
        self.terminal = enabled and is_terminal()
        self.out = out
        self._row = None
        self.first = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.end_epoch()

    def start_epoch(self, epoch: int, done: int = 0) -> None:
        """epoch counts from 1; done: steps of it already completed (a mid-epoch resume)."""
        self.epoch, self.done, self.start_done = epoch, done, done
        self.t0, self.first = time.perf_counter(), None
        self.every = max(1, round(self.total * PLAIN_FRACTION))
        if self.terminal:
            self._row = _row(self._label(float("nan")), self.total)
            self.progress, self.task = self._row.__enter__()
            self.progress.update(self.task, completed=done)

    def step(self, loss_sum, seen: int) -> None:
        """After each optimizer step: loss_sum (a tensor or number) and seen images of this epoch."""
        if not self.enabled:
            return
        self.done += 1
        if self.first is None:  # throughput counts from the end of the first step (after the loader's start)
            self.first = (time.perf_counter(), seen)
        if self.terminal:
            # The bar advances without reading the device: its loss is the one the loop already read at its
            # logging steps (show_loss), and the epoch's mean at its last step. A read every 1% of an epoch
            # was a host sync at every step of a short GPU epoch (issue 34).
            self.progress.advance(self.task)
            if self.done == self.total:
                self.show_loss(float(loss_sum) / max(seen, 1))
            return
        if self.done % self.every and self.done != self.total:
            return
        loss = float(loss_sum) / max(seen, 1)
        now = time.perf_counter()
        t_first, seen_first = self.first
        ips = (seen - seen_first) * self.world / (now - t_first) if seen > seen_first else float("nan")
        eta = timedelta(seconds=round((now - self.t0) / (self.done - self.start_done) * (self.total - self.done)))
        print(
            f"epoch {self.epoch}/{self.epochs} step {self.done}/{self.total} ({100 * self.done // self.total}%) "
            f"loss {loss:.4f} {ips:.0f} img/s ETA {eta}",
            file=self.out or sys.stdout,
            flush=True,
        )

    def show_loss(self, loss: float) -> None:
        """A running mean loss already on the host (the loop's logging steps read it anyway): the bar's label."""
        if self.terminal and self._row is not None:
            self.progress.update(self.task, description=self._label(loss))

    def end_epoch(self) -> None:
        if self._row is not None:
            row, self._row = self._row, None
            row.__exit__(None, None, None)

    def _label(self, loss: float) -> str:
        return f"epoch {self.epoch}/{self.epochs} loss {loss:.4f}"
