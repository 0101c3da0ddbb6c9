"""When an epoch's end saves the full training state (`last/`): train.checkpoint_every_epochs.

    N > 0   every N epochs;
    0       auto (the default): when the seconds since the last save ended are at least SAVE_SHARE_FACTOR times
            what that save took, so saving costs at most 1 / SAVE_SHARE_FACTOR (5%) of the run. On a CPU, where
            an epoch takes tens of seconds and a save a fraction of one, that is every epoch; on a GPU, where an
            airbench epoch takes under a second, every few epochs.

The first epoch end always saves (there is no measurement yet), and so do the end of training and a stop
request (Checkpointer.maybe_save's final/stop), whatever the cadence. A crash loses at most the epochs since the
last save; --resume repeats them exactly. The decision is the main process's, broadcast, so every rank saves
together (the save is collective).
"""

from __future__ import annotations

import time

SAVE_SHARE_FACTOR = 20  # auto: the time between saves is at least 20× a save's own time (saves ≤ 5%)


class SaveCadence:
    def __init__(self, every_epochs: int, factor: float = SAVE_SHARE_FACTOR, clock=time.perf_counter):
        self.every, self.factor, self.clock = every_epochs, factor, clock
        self.last_end: float | None = None  # when the last save ended
        self.last_seconds: float | None = None  # what it took

    def due(self, epoch: int) -> bool:
        """Whether the end of `epoch` (counted from 1) saves, by the cadence alone (this process's view)."""
        if self.every > 0:
            return epoch % self.every == 0
        if self.last_end is None:
            return True
        return self.clock() - self.last_end >= self.factor * self.last_seconds

    def saved(self, seconds: float) -> None:
        self.last_seconds, self.last_end = seconds, self.clock()
