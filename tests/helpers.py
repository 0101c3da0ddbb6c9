"""Shared test helpers: real subprocesses (`python train.py`, `accelerate launch`), the synthetic data
sets' command-line flags, the metrics reader, and `require()`, which skips a system test with a reason
on a developer's machine but fails it under CI=true. The fixtures built from them are in conftest.py.

    from helpers import SMALL, run, train_cmd
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# The suite is meant for the CPU and must pass on a GPU machine too: hide the GPUs from this process (before
# torch initialises CUDA) and from every subprocess (base_env). Tests that need a GPU use
# `requires_gpu`, which looks with the GPUs shown again (CIFAR_DIST_TEST_GPUS keeps the original value).
# Here, not in conftest.py: conftest imports this module first, and so does any script that uses it.
os.environ.setdefault("CIFAR_DIST_TEST_GPUS", os.environ.get("CUDA_VISIBLE_DEVICES", "all"))
os.environ["CUDA_VISIBLE_DEVICES"] = ""

from cifar_dist.artifacts.metrics import read_metrics  # noqa: E402, F401 - the one metrics.jsonl reader, for tests too

REPO = Path(__file__).resolve().parents[1]
CPU_DDP = REPO / "accelerate_configs" / "cpu_ddp.yaml"
# Small on purpose: 400 train / 100 val / 101 test. 101 does not divide by 2 processes × any batch.
SMALL = ["--data.name=synthetic", "--data.synthetic_train_size=500", "--data.synthetic_test_size=101"]
# 2,000 images (1,600 train at the default split): enough steps per epoch to stop a run in the middle of one.
MEDIUM = ["--data.name=synthetic", "--data.synthetic_train_size=2000", "--data.synthetic_test_size=101"]


# metrics.jsonl keys that measure time, not results: a resumed run's rows equal an uninterrupted one's without them.
TIMING_KEYS = frozenset({"images_per_sec", "epoch_seconds", "validate_seconds", "log_seconds", "save_seconds"})


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def base_env(**extra) -> dict:
    # WANDB_MODE=disabled: tracking is on by default (tracking.backend=wandb) and would add a
    # run.dir/wandb/ folder and ~6 s per run here; tests/system/test_wandb.py sets its own W&B environment.
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "WANDB_MODE": "disabled",
            "WANDB_SILENT": "true",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
    )
    env.pop("ACCELERATE_USE_CPU", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    """A TCP port nobody listens on now: each 2-process launch gets its own, so two suites (or two
    worktrees) on one machine do not both rendezvous on Accelerate's default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cmd(config: Path = CPU_DDP) -> list[str]:
    return [
        *[sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)],
        *["--main_process_port", str(free_port())],
    ]


def run(
    cmd: list[str], timeout: float = 300, env: dict | None = None, cwd: Path | str = REPO, check: bool = False
) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env or base_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {p.returncode}\nSTDOUT:\n{p.stdout[-4000:]}\nSTDERR:\n{p.stderr[-6000:]}"
        )
    return p


def train_cmd(*args: str, launch: list[str] | None = None) -> list[str]:
    return [*(launch or [sys.executable]), str(REPO / "train.py"), *args]


def eval_cmd(*args: str, launch: list[str] | None = None) -> list[str]:
    return [*(launch or [sys.executable]), str(REPO / "evaluate.py"), *args]


def gpu_count() -> int:
    """GPUs on this machine, counted in a subprocess that sees what the suite hides."""
    env = dict(os.environ)
    shown = env.pop("CIFAR_DIST_TEST_GPUS", "all")
    if shown != "all":
        env["CUDA_VISIBLE_DEVICES"] = shown
    else:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(p.stdout.strip() or 0) if p.returncode == 0 else 0


def gpu_env(**extra) -> dict:
    """base_env with the machine's GPUs visible again (for tests that need one)."""
    env = base_env(**extra)
    shown = os.environ.get("CIFAR_DIST_TEST_GPUS", "all")
    if shown == "all":
        env.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        env["CUDA_VISIBLE_DEVICES"] = shown
    return env


def requires_gpu(n: int = 1) -> None:
    """Skip a test that needs n CUDA GPUs where there are fewer (also under CI: CI has no GPU)."""
    have = gpu_count()
    if have < n:
        pytest.skip(f"needs {n} CUDA GPU(s); this machine has {have}")


def require(condition: bool, reason: str) -> None:
    """Skip when a system dependency is missing, except in CI, where that is a failure."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def cifar10_jpeg_archive() -> Path:
    """The real CIFAR-10 as JPEG files (../shared/data/ beside the repository, or $CIFAR10_JPEG_ARCHIVE);
    skips without it, fails under CI=true. Never copied into the repository."""
    path = Path(os.environ.get("CIFAR10_JPEG_ARCHIVE") or REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz")
    require(path.is_file(), f"the CIFAR-10 JPEG archive is not at {path} (set CIFAR10_JPEG_ARCHIVE to its path)")
    return path


def synthetic_root(tmp_path_factory, train_size: int, test_size: int) -> Path:
    """A fresh data root holding synthetic CIFAR-10 files of these sizes (written by the toolkit
    itself, in CIFAR-10's on-disk format), for --data.name=synthetic with the same sizes."""
    from cifar_dist.data.synthetic import write_synthetic_cifar10

    root = tmp_path_factory.mktemp(f"data{train_size}")
    write_synthetic_cifar10(root / f"synthetic_{train_size}_{test_size}", train_size, test_size)
    return root


class LineReader:
    """A child's stdout read in a daemon thread, so that every wait on it has a deadline: a child that
    hangs fails its test in bounded time instead of stalling the suite (a bare `for line in p.stdout`
    waits forever). The thread keeps draining the pipe, so the child never blocks on a full one.

        reader = LineReader(proc)
        reader.wait_for(lambda line: line.startswith("Epoch: 2"), timeout=120)
    """

    def __init__(self, proc: subprocess.Popen, stream=None):
        self.proc = proc
        self.stream = proc.stdout if stream is None else stream  # or proc.stderr
        self.lines: list[str] = []
        self._new: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.stream:
            self.lines.append(line)
            self._new.put(line)
        self._new.put(None)  # end of output

    def wait_for(self, predicate, timeout: float) -> str:
        """The first new line for which predicate holds; AssertionError after `timeout` s or at the end of output."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended (exit {self.proc.poll()}) before the line:\n{self.text()[-3000:]}")
            if predicate(line):
                return line
        raise AssertionError(f"no such line within {timeout:g} s:\n{self.text()[-3000:]}")

    def text(self, timeout: float = 0) -> str:
        """Everything read so far; with `timeout`, first wait up to that long for the end of output."""
        self._thread.join(timeout)
        return "".join(self.lines)


def child_processes(pid: int) -> dict[int, str]:
    """{pid: command name} of the processes whose parent is `pid`, from /proc."""
    out = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out[int(entry)] = stat.split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, ValueError, IndexError):
            continue
    return out


def on_a_terminal(cmd: list[str], columns: int = 120, timeout: float = 300) -> str:
    """cmd with stdout and stderr on a pseudo-terminal (rich draws its bars there); everything it wrote, control
    codes removed. Every read waits at most `timeout` s for output, and the child must exit 0."""
    import pty
    import re
    import select

    master, slave = pty.openpty()
    env = base_env(TERM="xterm", COLUMNS=str(columns))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"no output for {timeout} s: {out.decode(errors='replace')[-2000:]}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))
