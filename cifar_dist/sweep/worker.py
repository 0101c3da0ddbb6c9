"""A sweep worker: takes trials from the study until it has its count, runs each, tells the study.
Any number of workers (processes, machines, SLURM array tasks) share one study folder.

    count and take the next trial    under STUDY/sweep.lock, so workers never overshoot the count
    run it                           trial.TrialRun (heartbeat while it runs)
    tell the study                   COMPLETE / PRUNED / FAIL; a stopped trial goes back to WAITING

Stops: SIGTERM or Ctrl-C is passed on to the trial (it saves its full state and exits), the trial
goes back to the queue as WAITING (any worker resumes it from its last/), and the worker exits 143
(130 after Ctrl-C). SIGUSR1 is ignored by the worker and the launcher (under SLURM it reaches the
training processes directly): the trial saves and exits 0, and the worker exits STOPPED_EXIT (75)
so the batch script requeues the task.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from .space import Space
from .study import StudyDir, fail_stale, open_study, save_space, tally, trial_id
from .trial import Outcome, TrialRun, suggest

STOPPED_EXIT = 75  # EX_TEMPFAIL: the trial is saved and queued again; requeue this worker


@dataclass
class Options:
    launcher: str
    worker: int = 0
    heartbeat_s: float = 10.0
    stale_after: int = 6  # heartbeats missed before a RUNNING trial counts as dead

    @property
    def grace_s(self) -> float:
        return self.heartbeat_s * self.stale_after


class Worker:
    def __init__(self, space: Space, sd: StudyDir, opts: Options):
        from filelock import FileLock

        self.space, self.sd, self.opts = space, sd, opts
        save_space(space, sd)
        self.lock = FileLock(str(sd.lock))
        with self.lock:  # two workers starting together create the study once
            self.study, self.storage = open_study(space, sd, opts.worker)
        self.runner = TrialRun(space, sd, opts.launcher, opts.heartbeat_s)
        self.stop_signal: int | None = None

    def run(self) -> int:
        """Trials until the study has its count; the exit status (0, 75, 130 or 143)."""
        self._install_signals()
        while self.stop_signal is None:
            trial = self._next_trial()
            if trial is None:
                break
            if trial == "wait":  # the count is reached by running trials: wait, one of them may die
                time.sleep(self.opts.heartbeat_s)
                continue
            code = self._run_one(trial)
            if code is not None:
                return code
        return {None: 0, signal.SIGINT: 130}.get(self.stop_signal, 143)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by the launcher; the training sets its own
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)

    def _on_stop(self, signum, frame) -> None:
        self.stop_signal = signum
        self.runner.signal(signal.SIGTERM)  # the trial saves its full state at the next step

    def _next_trial(self):
        with self.lock:
            for line in fail_stale(self.study, self.storage, self.sd, self.opts.grace_s):
                print(f"[sweep {self.sd.name}] {line}", flush=True)
            t = tally(self.study)
            if t.done >= self.space.trials:
                return None
            if not t.waiting and t.done + t.running >= self.space.trials:
                return "wait"
            trial = self.study.ask()
            self.sd.heartbeat(trial.number).parent.mkdir(parents=True, exist_ok=True)
            self.sd.heartbeat(trial.number).touch()  # alive from the moment it is taken
            return trial

    def _run_one(self, trial) -> int | None:
        params = suggest(trial, self.space)
        trial.set_user_attr("command", " ".join(self.runner.command(params)))
        print(f"[sweep {self.sd.name}] trial {trial.number} starts: {_params_text(params)}", flush=True)
        out = self.runner.run(trial, params)
        if self.stop_signal is not None or out.state == "STOPPED":
            self._requeue(trial, out)
            return STOPPED_EXIT if self.stop_signal is None else None
        self._tell(trial, out)
        print(self._progress_line(trial.number, params, out), flush=True)
        return None

    def _requeue(self, trial, out: Outcome) -> None:
        """A stop request, not a failure: back to WAITING with the same number and parameters."""
        from optuna.trial import TrialState

        self.storage.set_trial_state_values(trial_id(self.study, self.storage, trial.number), TrialState.WAITING)
        print(
            f"[sweep {self.sd.name}] trial {trial.number} stopped on request after {out.seconds:.0f} s "
            "(its full state saved); queued again, it resumes from its last/",
            flush=True,
        )

    def _tell(self, trial, out: Outcome) -> None:
        from optuna.trial import TrialState

        if out.epochs is not None:
            trial.set_user_attr("epochs", out.epochs)
        trial.set_user_attr("seconds", round(out.seconds, 1))
        if out.error:
            trial.set_user_attr("error", out.error)
        try:
            if out.state == "COMPLETE":
                self.study.tell(trial, out.value)
            else:
                self.study.tell(trial, state=TrialState.PRUNED if out.state == "PRUNED" else TrialState.FAIL)
        except Exception as e:  # noqa: BLE001 - e.g. failed meanwhile as stale by another worker
            print(f"[sweep {self.sd.name}] trial {trial.number}: cannot record {out.state} ({e})", file=sys.stderr)

    def _progress_line(self, number: int, params: dict, out: Outcome) -> str:
        t = tally(self.study)
        try:
            best = self.study.best_trial
            best_text = f"best {best.value:.4f} (trial {best.number})"
        except ValueError:
            best_text = "no complete trial yet"
        value = f"{self.space.objective} {out.value:.4f}" if out.value is not None else out.error
        epochs = f", {out.epochs} epochs" if out.epochs is not None else ""
        return (
            f"[sweep {self.sd.name}] trial {number} {out.state}: {value} | {_params_text(params)} | "
            f"{out.seconds:.0f} s{epochs} | {t.done}/{self.space.trials} finished, {best_text}"
        )


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
