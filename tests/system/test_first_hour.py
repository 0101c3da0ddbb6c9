"""The README's first commands as a new user types them, read from the README itself: after
`accelerate config default`, command 1 prints no launcher warning, fails offline in one line that
names the way out and leaves nothing behind, and every bad-input error stays one line under the
launcher (`accelerate launch -q`).

    python -m pytest tests/system/test_first_hour.py
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, base_env, run

pytestmark = pytest.mark.slow  # every test here starts training processes


def readme_command_1() -> str:
    """The `accelerate launch ...` part of command 1 (`pip install -e . && accelerate config default && ...`)."""
    text = (REPO / "README.md").read_text()
    [line] = [x for x in text.splitlines() if "accelerate config default && " in x and not x.startswith("#")]
    cmd = line.split("accelerate config default && ", 1)[1].strip()
    assert cmd.startswith("accelerate launch ") and cmd.endswith(" train.py"), cmd
    return cmd


def user_env(tmp_path: Path, **extra) -> dict:
    """A fresh user: own Accelerate config (HF_HOME), no OMP_NUM_THREADS, the venv's `accelerate` on PATH."""
    env = base_env(HF_HOME=str(tmp_path / "hf"), **extra)
    env.pop("OMP_NUM_THREADS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def configured(tmp_path: Path, **extra) -> dict:
    env = user_env(tmp_path, **extra)
    run([sys.executable, "-m", "accelerate.commands.accelerate_cli", "config", "default"], env=env, check=True)
    return env


def shell(command: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def as_typed(args: str = "") -> str:
    """Command 1 with train.py found from any folder, plus `args`."""
    return readme_command_1().replace(" train.py", f" {shlex.quote(str(REPO / 'train.py'))}") + " " + args


def offline(tmp_path: Path) -> dict:
    # A proxy nobody listens on: urllib fails at once, as on a machine without network.
    proxy = "http://127.0.0.1:9"
    return configured(tmp_path, http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy, HTTPS_PROXY=proxy, no_proxy="")


def test_command_1_prints_no_launcher_warning_without_omp_num_threads(tmp_path):
    """OMP_NUM_THREADS unset (a fresh shell): after `accelerate config default`, Accelerate still warns
    that it chose --num_cpu_threads_per_process on a CPU-only machine with more than one core, unless
    the command says it; command 1 says it."""
    env = configured(tmp_path)
    p = shell(as_typed("--print-config"), env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--num_cpu_threads_per_process" not in p.stderr and "accelerate config" not in p.stderr, p.stderr
    import psutil
    import torch

    if torch.cuda.is_available() or (psutil.cpu_count(logical=False) or 1) < 2:
        return  # Accelerate warns only on a CPU-only machine with 2+ physical cores: nothing to contrast
    bare = shell(f"accelerate launch -q {REPO / 'train.py'} --print-config", env, tmp_path)
    assert "--num_cpu_threads_per_process" in bare.stderr, bare.stderr  # what the flag in command 1 prevents


def test_command_1_offline_is_one_line_that_names_the_way_out_and_leaves_nothing(tmp_path):
    """No network, no CIFAR-10 archive: one line saying where the archive comes from and naming the
    image-folder route, no launcher traceback, a non-zero exit, and no data/ folder or lock file."""
    work = tmp_path / "work"
    work.mkdir()
    p = shell(as_typed(), offline(tmp_path), work)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "cifar-10-python.tar.gz" in lines[0] and "https://" in lines[0]
    assert "--data.name=imagefolder" in lines[0] and "--data.root=" in lines[0]
    assert p.stdout == "", p.stdout  # no config printed before the error
    assert sorted(work.rglob("*")) == [], sorted(work.rglob("*"))


@pytest.mark.parametrize(
    "args, pattern",
    [
        ("--optim.lrr=0.1", r"optim\.lrr"),
        ("--data.name=imagefolder --data.root={tmp}/missing", r"data\.root .*missing does not exist"),
        ("--preset nope", r"nope"),
    ],
    ids=["mistyped-key", "wrong-data-root", "unknown-preset"],
)
def test_bad_input_under_the_launcher_is_one_line(tmp_path, args, pattern):
    """The README's launch (`accelerate launch -q`) keeps our one line: no copy of it, no launcher
    traceback, non-zero exit; the config is not printed and no run folder is named or created."""
    work = tmp_path / "work"
    work.mkdir()
    p = shell(as_typed(args.format(tmp=tmp_path)), configured(tmp_path), work, timeout=180)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "runs/" not in p.stdout and "run: dir=" not in p.stdout, p.stdout
    assert sorted(work.rglob("*")) == [], sorted(work.rglob("*"))


def test_help_starts_with_the_most_used_keys_and_how_to_set_processes():
    """`python train.py --help`: the learning rate and the batch size within its first screen (they
    were lines 50 and 68), and how to set the number of processes, which is no config key."""
    p = run([sys.executable, str(REPO / "train.py"), "--help"], check=True)
    lines = p.stdout.splitlines()

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.strip().startswith(prefix))

    assert first("--optim.lr=") < 12 and first("--train.per_device_batch_size=") < 15, p.stdout[:2000]
    screen = "\n".join(lines[:25])
    assert "--num_processes" in screen and "cpu_ddp.yaml" in screen, screen
    assert sum(line.strip().startswith("--optim.lr=") for line in lines) == 2  # and again in the full list


@pytest.mark.timeout(1500)
def test_the_readme_commands_in_order_leave_the_quick_tier_green(tmp_path):
    """Command 1's configuration step, then command 2's quick tier, in one fresh user environment: a new
    HOME where `accelerate config default` writes its default config (use_cpu: true on this machine), and no
    variable pointing anywhere else. The suite isolates itself from it (conftest.py), so it stays green.
    Command 1's install is this venv's, and its 30-epoch training is left out: it changes no user state."""
    home = tmp_path / "home"
    home.mkdir()
    env = base_env(HOME=str(home))
    for name in ("HF_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "NETRC"):
        env.pop(name, None)  # what conftest set for this suite: the inner one must set its own
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    shell("accelerate config default", env, tmp_path, timeout=120)
    written = home / ".cache" / "huggingface" / "accelerate" / "default_config.yaml"
    assert '"use_cpu": true' in written.read_text() or "use_cpu: true" in written.read_text()
    quick = [sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider"]
    p = subprocess.run(
        [*quick, f"--basetemp={tmp_path / 'inner'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1400
    )
    summary = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    assert p.returncode == 0 and " passed" in summary and "failed" not in summary, p.stdout[-4000:] + p.stderr[-2000:]
