"""Stop requests: SIGUSR1 (SLURM's warning before the time limit), SIGTERM (scancel, node drain).

The handler only sets a flag; the loop asks `requested(step)` at every step boundary. With several
ranks the answer is a collective OR (so all ranks stop at the same step), taken every
CHECK_EVERY_STEPS steps only: it costs a host sync, which a GPU step should not pay each time,
and a stop a few steps later is well inside SLURM's warning time (seconds to minutes). The run
saves the full state on every rank, then exits: 0 after USR1 (a resumable stop, not a failure),
143 after SIGTERM. By hand:

    python train.py --run.dir=runs/x          # meanwhile, elsewhere: kill -USR1 <its pid>
    python train.py --run.dir=runs/x --resume # continues at the exact step, bit-exact on one process

Under SLURM (slurm/job.sh) the batch shell gets the warning, passes USR1 to every training process,
and after their clean exit requeues the job, which resumes with --train.resume=auto.
"""

from __future__ import annotations

import contextlib
import signal

from .collectives import any_rank

CHECK_EVERY_STEPS = 10  # multi-process runs only; one process checks its own flag at every step


class _Flag:
    """The installed handler. The signal module keeps it until StopRequest.close() (or the process
    exits; train() returns after a stop request without closing), so it holds
    nothing but the flag (a bound method of StopRequest would keep the accelerator, and with it the
    model, optimizer and loaders, alive into interpreter shutdown)."""

    signum: int | None = None

    def __call__(self, signum, frame) -> None:
        self.signum = signum


class StopRequest:
    def __init__(self, accelerator, every: int = CHECK_EVERY_STEPS):
        """every: steps between the collective checks of a multi-process run (the trainer passes its logging
        interval when it is shorter, so the check's host sync falls on a step that reads the loss anyway)."""
        self.accelerator = accelerator
        self.every = max(1, every)
        self._flag = _Flag()
        self._previous = {}
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._flag)

    def close(self) -> None:
        """Training is over: put the previous handlers back, so a process that goes on after train()
        (a benchmark, a notebook) can be stopped again (without it, SIGTERM is swallowed for the rest of
        the process; docs/results.md). A request that came after the last step (during
        the test) stays ignored, as before: the run has finished and written everything."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @property
    def signum(self) -> int | None:
        return self._flag.signum

    def requested(self, step: int) -> bool:
        """Collective when several ranks: every rank must call it with the same step."""
        if self.accelerator.num_processes == 1:
            return self.signum is not None
        if step % self.every:
            return False
        return any_rank(self.accelerator, self.signum is not None)

    def exit_code(self) -> int:
        # SIGTERM: 128 + 15, what a killed job reports; SIGUSR1 (or a peer's signal): resumable stop
        return 143 if self.signum == signal.SIGTERM else 0
