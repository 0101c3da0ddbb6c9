"""Where a run is (TrainState, saved inside `last/` through Accelerate) and the check that its loss
is still a number.

    state = TrainState(config=cfg.to_dict()); accelerator.register_for_checkpointing(state)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from ..distributed.collectives import gather_per_rank
from ..errors import UserError


@dataclass
class TrainState:
    """Where the run is. Registered with Accelerate, so it travels inside `last/`."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed in total
    step_in_epoch: int = 0  # steps completed in the current epoch (mid-epoch saves)
    best_val_loss: float = float("inf")  # the best epoch's validation loss (whichever train.best_metric picks it)
    best_val_accuracy: float = -1.0  # and its validation accuracy
    best_epoch: int = -1
    validations_since_best: int = 0  # for train.early_stop_patience
    stopped_early: bool = False  # train.early_stop_patience ended the run: a --resume does not train on
    tracker_run_id: str = ""
    config: dict = field(default_factory=dict)  # the resolved config, so last/ is self-describing too
    rng_state: list | None = None  # per rank: torch CPU RNG at the save point (restored after the loader skips)
    cuda_rng_state: list | None = None
    partial: dict = field(default_factory=dict)  # running train sums of a partly done epoch

    def epochs_left(self, cfg) -> bool:
        """Train another epoch? Not after train.epochs, train.max_steps or an early stop."""
        return (
            self.epoch < cfg.train.epochs
            and not (cfg.train.max_steps and self.step >= cfg.train.max_steps)
            and not self.stopped_early
        )

    @property
    def best_val_loss_or_none(self) -> float | None:
        """For JSON and W&B: None when nothing was validated (data.val_fraction=0), not Infinity."""
        return self.best_val_loss if math.isfinite(self.best_val_loss) else None

    # -- mid-epoch resume: what a partly done epoch carries over a save, in one place ------------------
    def carried(self, is_main_process: bool) -> dict:
        """The running train sums a resumed epoch goes on from ({} at an epoch start); rank 0 carries
        the totals over ranks, the other ranks start from zero."""
        return (self.partial or {}) if is_main_process else {}

    def keep_partial(self, loss_sum: float, correct, seen) -> None:
        """A mid-epoch save: the epoch's running sums, already totalled over ranks."""
        self.partial = {"loss_sum": loss_sum, "correct": int(correct), "seen": int(seen)}

    def rng_to_restore(self) -> bool:
        """A mid-epoch resume sets the RNG back (restore_rng) once the loader has started."""
        return bool(self.step_in_epoch) and self.rng_state is not None

    def end_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.partial = {}

    def capture_rng(self, accelerator) -> None:
        """Collective, before a save: every rank's RNG (each draws its own dropout masks); TrainState is
        written by rank 0 only, so the states are gathered into it, one per rank."""
        self.rng_state = gather_per_rank(accelerator, torch.get_rng_state())
        self.cuda_rng_state = (
            gather_per_rank(accelerator, torch.cuda.get_rng_state()) if torch.cuda.is_available() else None
        )

    def restore_rng(self, rank: int) -> None:
        """Put this rank's torch RNG back where the interrupted run saved it."""
        torch.set_rng_state(self.rng_state[rank % len(self.rng_state)])
        if self.cuda_rng_state is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(self.cuda_rng_state[rank % len(self.cuda_rng_state)])

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            if hasattr(self, k):
                setattr(self, k, v)


def check_finite(loss_sum: float, state: TrainState, last_state) -> None:
    """Stop in one line when the training loss is no longer a number; `last_state` is where the last
    good state is kept (run.dir/last)."""
    if not math.isfinite(loss_sum):
        raise UserError(
            f"training loss became {loss_sum} by step {state.step} (epoch {state.epoch + 1}); lower "
            f"--optim.lr or check the data; the last good state is kept in {last_state}"
        )
