"""Ctrl-C and scancel always end a tracked run, promptly, whatever state wandb's service is in.

A terminal's Ctrl-C reaches the whole process group, wandb's service included, and SLURM's scancel
SIGTERMs every process of the step: the service can die before, with or after the training process
gets its signal. wandb's teardown then could wait forever on its asyncio thread (issue #32: a process
alive 4.5 minutes after one Ctrl-C). Each scenario below must end within DEADLINE_S with the right
exit code and no traceback; tests/soak.sh repeats them under a CPU load.

    python -m pytest tests/system/test_ctrl_c.py -m slow
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO, SMALL, LineReader, base_env, child_processes, train_cmd

DEADLINE_S = 15.0  # from the signal to the process's exit
REPEATS = 7  # per point at which the service dies: 3 × 7 = 21 Ctrl-C runs


def _signal_a_tracked_run(tmp_path, data_root, service_dies: str, sig: int, seed: int, twice: bool = False):
    """Start a W&B-tracked run (offline), wait until it trains, then deliver `sig` with the wandb-core
    service killed `before` the signal, `with` it (the signal to the whole group, as a terminal or
    scancel sends it), or `after` it (a random 0-1 s later, while the run is closing). `twice`: the
    signal again 0-0.5 s after the first (a user pressing Ctrl-C twice).
    -> (exit code, seconds from the signal to the exit, stderr)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in base_env().items() if not k.startswith("WANDB_")}
    env.update({"HOME": str(home), "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    cmd = train_cmd(
        *SMALL,
        f"--data.root={data_root}",
        "--train.epochs=500",
        f"--run.dir={tmp_path / 'run'}",
        "--run.progress=false",
        "--tracking.backend=wandb",
    )
    # stderr into a file: a service that outlives the run keeps a pipe open, and reading it would wait
    err = (tmp_path / "stderr").open("w+")
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        LineReader(p).wait_for(lambda line: line.startswith("Epoch: 2"), timeout=180)  # trains, run started
        [core] = [pid for pid, name in child_processes(p.pid).items() if name.startswith("wandb-core")]
        if service_dies == "before":
            os.kill(core, signal.SIGKILL)
            time.sleep(0.2)
        t0 = time.monotonic()
        if service_dies == "with":
            os.killpg(p.pid, sig)
        else:
            os.kill(p.pid, sig)
        if twice:
            time.sleep(random.Random(seed).uniform(0, 0.5))
            os.killpg(p.pid, sig)
        if service_dies == "after":
            time.sleep(random.Random(seed).uniform(0, 1))
            with contextlib.suppress(ProcessLookupError):  # the run may have closed it already
                os.kill(core, signal.SIGKILL)
        try:
            code = p.wait(timeout=DEADLINE_S * 2)
        except subprocess.TimeoutExpired:
            code = None
        seconds = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)  # the group: a service left behind goes too
        p.wait(timeout=30)
        err.seek(0)
        stderr = err.read()
        err.close()
    return code, seconds, stderr


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(REPEATS))
@pytest.mark.parametrize("service_dies", ["before", "with", "after"])
def test_ctrl_c_ends_the_run_whatever_wandbs_service_does(tmp_path, data_root, service_dies, repeat):
    code, seconds, stderr = _signal_a_tracked_run(tmp_path, data_root, service_dies, signal.SIGINT, repeat)
    assert code == 130 and seconds <= DEADLINE_S, f"exit {code} after {seconds:.1f} s\n{stderr[-3000:]}"
    assert stderr.strip().splitlines() == ["interrupted"], stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(3))
def test_a_second_ctrl_c_ends_the_run_too(tmp_path, data_root, repeat):
    code, seconds, stderr = _signal_a_tracked_run(tmp_path, data_root, "with", signal.SIGINT, repeat, twice=True)
    assert code == 130 and seconds <= DEADLINE_S, f"exit {code} after {seconds:.1f} s\n{stderr[-3000:]}"
    # A second Ctrl-C that lands before the line is printed leaves at once, without it
    assert stderr.strip().splitlines() in ([], ["interrupted"]), stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("service_dies", ["before", "with", "after"])
def test_sigterm_ends_the_run_whatever_wandbs_service_does(tmp_path, data_root, service_dies):
    """scancel: the stop request saves the full state, then the run closes (bounded) and exits 143."""
    code, seconds, stderr = _signal_a_tracked_run(tmp_path, data_root, service_dies, signal.SIGTERM, 0)
    assert code == 143 and seconds <= DEADLINE_S, f"exit {code} after {seconds:.1f} s\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert (tmp_path / "run" / "last").is_dir()


def test_a_call_past_its_deadline_is_given_up_and_remembered():
    """The mechanism, without wandb: a call that never returns costs its deadline, no more."""
    code = (
        "import threading, time\n"
        "from cifar_dist.tracking.deadline import abandoned, finished_within\n"
        "assert finished_within(lambda: 1 / 0, 5, 'raises') and not abandoned()\n"
        "t0 = time.monotonic()\n"
        "assert not finished_within(threading.Event().wait, 0.5, 'never returns')\n"
        "assert 0.5 <= time.monotonic() - t0 < 3 and abandoned() == ['never returns']\n"
        "print('ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "ok\n", p.stderr[-2000:]
