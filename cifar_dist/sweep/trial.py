"""One trial: a normal training run. Its parameters are `--section.key=value` overrides on the preset
and the space's fixed keys; it starts through the launcher a single run uses (`accelerate launch`, or
slurm/launch.sh under SLURM: one trial may be several processes or GPUs), in its own run folder under
the study, and is read back from what every run writes (metrics.jsonl, test_metrics.json)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .pruning import ENV
from .space import Space
from .study import Heartbeat, StudyDir, root_number

DEFAULT_LAUNCHER = "accelerate launch -q -m cifar_dist"


def suggest(trial, space: Space) -> dict:
    """The trial's value of every searched key (a retried or requeued trial gets its own again)."""
    out = {}
    for p in space.params:
        if p.kind == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            out[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
    return out


@dataclass
class Outcome:
    state: str  # COMPLETE, PRUNED, FAIL, or STOPPED (a stop request: saved, to be resumed)
    value: float | None = None
    epochs: int | None = None
    error: str = ""
    seconds: float = 0.0


class TrialRun:
    """Runs one trial's training process; `signal(sig)` passes a stop on to it (its own process group)."""

    def __init__(self, space: Space, sd: StudyDir, launcher: str, heartbeat_s: float):
        self.space, self.sd, self.launcher, self.heartbeat_s = space, sd, launcher, heartbeat_s
        self.proc: subprocess.Popen | None = None

    def command(self, params: dict) -> list[str]:
        """What reproduces the trial by hand (the sweep adds its run folder, resume and W&B names)."""
        return [*shlex.split(self.launcher), *self.space.overrides(params)]

    def run(self, trial, params: dict) -> Outcome:
        root = root_number(trial.study, trial.number)
        run_dir = self.sd.run_dir(root)
        marker = run_dir.parent / f"{root:04d}.pruned.json"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        argv = self.command(params) + [
            f"--run.dir={run_dir}",
            "--train.resume=auto",  # a retry or a requeued trial continues from last/
            "--run.progress=false",
            f"--tracking.run_name={self.sd.name}-trial-{trial.number}",
        ]
        env = dict(os.environ, WANDB_RUN_GROUP=self.sd.name)
        env[ENV] = json.dumps(self._spec(trial.number, params, marker))
        beat = Heartbeat(self.sd.heartbeat(trial.number), self.heartbeat_s)
        t0 = time.monotonic()
        log_path = run_dir.parent / f"{root:04d}.log"
        with open(log_path, "a") as log:
            log.write(f"\n### trial {trial.number}: {shlex.join(argv)}\n")
            log.flush()
            start = log.tell()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            beat.start(self.proc.pid)
            try:
                rc = self.proc.wait()
            finally:
                beat.stop()
                self.proc = None
        out = read_outcome(rc, run_dir, marker, self.space.objective, _attempt_log(log_path, start))
        out.seconds = time.monotonic() - t0
        return out

    def _spec(self, number: int, params: dict, marker: Path) -> dict:
        return {
            "journal": str(self.sd.journal.resolve()),
            "study": self.sd.name,
            "trial": number,
            "objective": self.space.objective,
            "pruner": self.space.pruner,
            "params": params,
            "marker": str(marker.resolve()),
        }

    def signal(self, sig: int) -> None:
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)


STOP_LINE = "stop requested: full state saved"  # trainer.train_epoch's line after a stop request
DIVERGED = "error: training loss became "  # train_state.check_finite: nan or inf, the run stopped


def _attempt_log(log_path: Path, start: int) -> tuple[str, bool]:
    """(the last `error: ...` line this attempt wrote, else its last line; whether it saved on a stop request)."""
    with open(log_path, errors="replace") as f:
        f.seek(start)
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300], any(line.startswith(STOP_LINE) for line in lines)


def read_outcome(rc: int, run_dir: Path, marker: Path, objective: str, log: tuple[str, bool] = ("", False)) -> Outcome:
    """What the run's files say: finished (test_metrics.json) and pruned (the marker) or complete;
    stopped on request (saved, not finished: the training exits 0 after USR1, 143 after TERM, which
    `accelerate launch -q` reports as 1); or failed."""
    error, saved_on_stop = log
    test_path = run_dir / "test_metrics.json"
    if not test_path.exists():
        stopped = (rc in (0, 128 + signal.SIGTERM) or saved_on_stop) and (run_dir / "last").exists()
        if stopped:
            return Outcome("STOPPED")
        # A diverged run is the least promising trial there is: PRUNED, so TPE learns to avoid its region
        # (it ignores FAIL trials: on CIFAR-10 it went on proposing lr ~2 after five NaN failures, measured).
        return Outcome("PRUNED" if error.startswith(DIVERGED) else "FAIL", error=error or f"exit status {rc}")
    test = json.loads(test_path.read_text())
    epochs = test.get("epochs")
    if marker.exists():
        return Outcome("PRUNED", json.loads(marker.read_text())["value"], epochs)
    if objective == "test_accuracy":
        return Outcome("COMPLETE", test["accuracy"], epochs)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    values = [r[objective] for r in rows if objective in r]
    if not values:
        return Outcome("FAIL", error=f"no {objective} in {run_dir}/metrics.jsonl", epochs=epochs)
    best = max(values) if objective == "val_accuracy" else min(values)
    return Outcome("COMPLETE", best, epochs)
