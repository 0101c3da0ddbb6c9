"""benchmarks/gpu_check.sh on the GPU machine's own stack, without a GPU (issue 34).

The lent GPU machine runs its preinstalled python3: Python 3.12, torch 2.11.0, torchvision 0.26.0, accelerate
1.15.0, numpy, rich, matplotlib, pytest, and no wandb; nothing can be installed there. It receives the
repository's working tree (tracked files and untracked ones git does not ignore) plus the ignored paths a call
carries (.device/, made by benchmarks/prepare_device.sh), and not ../shared. This test builds that stack in a
virtual environment (once: cached under $CIFAR_DIST_GPU_STACK_DIR, default /tmp/cifar-dist-venvs, keyed by the
versions; the first build downloads about 3 GB from PyPI), lays the tree out as the machine receives it (a
.device/ holding a tiny archive in place of the 18.6 MB CIFAR-10 copy, so the CPU's smoke pass takes minutes),
and runs `bash benchmarks/gpu_check.sh OUT --smoke` there: every configuration one step, on the CPU.

Python 3.12 comes from $CIFAR_DIST_PY312, else pyenv's /root/.pyenv/versions/3.12.1/bin/python, else
`python3.12` on PATH; without one (or without PyPI) the test skips, and fails under CI=true.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

STACK = {"torch": "2.11.0", "torchvision": "0.26.0", "accelerate": "1.15.0"}
ALSO = ["numpy", "rich", "matplotlib", "pytest"]  # the rest of the GPU machine's documented set-up (no wandb)
BUILD_DEADLINE_S = 1800


def python312() -> str | None:
    for candidate in (os.environ.get("CIFAR_DIST_PY312"), "/root/.pyenv/versions/3.12.1/bin/python"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("python3.12")


def stack_venv(python: str) -> Path:
    """The cached virtual environment of the GPU machine's stack; built under a lock when missing."""
    root = Path(os.environ.get("CIFAR_DIST_GPU_STACK_DIR", "/tmp/cifar-dist-venvs"))
    root.mkdir(parents=True, exist_ok=True)
    venv = root / ("gpu-stack-py3.12-" + "-".join(f"{k}{v}" for k, v in STACK.items()))
    venv = venv.with_name(venv.name.replace("torchvision", "tv").replace("accelerate", "acc"))
    if (venv / "bin" / "python").exists():
        return venv
    with open(root / (venv.name + ".lock"), "w") as lock:
        deadline = time.monotonic() + BUILD_DEADLINE_S
        while True:  # another session may be building it: wait for its lock, with a deadline
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another process held {lock.name} for {BUILD_DEADLINE_S} s")
                time.sleep(5)
        if (venv / "bin" / "python").exists():
            return venv
        building = venv.with_name(venv.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([python, "-m", "venv", str(building)], check=True, timeout=120)
        pins = [f"{k}=={v}" for k, v in STACK.items()]
        p = subprocess.run(
            [str(building / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *pins, *ALSO],
            capture_output=True,
            text=True,
            timeout=BUILD_DEADLINE_S,
        )
        require(p.returncode == 0, f"pip could not install the GPU machine's stack: {p.stderr.strip()[-300:]}")
        building.rename(venv)  # only a complete environment gets the cached name
    return venv


def device_tree(dest: Path) -> Path:
    """The working tree as the device machine receives it: tracked files and untracked ones git does not
    ignore, plus a carried .device/ (here with a tiny archive); no ../shared beside it."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():  # a file deleted but not yet committed is listed and absent
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())
    from imagetree import write_tar, write_tree

    (dest / ".device").mkdir()
    write_tar(write_tree(dest.parent / "tree", n_train=12, n_test=4, size=32), dest / ".device" / "cifar10-jpeg.tar.xz")
    return dest


def test_gpu_check_smoke_runs_on_the_gpu_machines_stack_from_the_tree_it_receives(tmp_path):
    python = python312()
    require(python is not None, "no Python 3.12 here (set CIFAR_DIST_PY312 to one)")
    venv = stack_venv(python)
    versions = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys, torch, torchvision, accelerate; "
         "print(sys.version_info[:2], torch.__version__, torchvision.__version__, accelerate.__version__)"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "(3, 12)" in versions and all(v in versions for v in STACK.values()), versions
    no_wandb = subprocess.run([str(venv / "bin" / "python"), "-c", "import wandb"], capture_output=True, timeout=60)
    assert no_wandb.returncode != 0, "wandb is importable in the GPU stack's venv: it must not be"

    machine = tmp_path / "device"
    tree = device_tree(machine / "repo")
    assert not (machine / "shared").exists() and not (tree / ".venv").exists()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",  # python3 is the venv's, as the machine's python3 is its own
        "HOME": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "CUDA_VISIBLE_DEVICES": "",
        "TMPDIR": str(tmp_path),
    }
    out = tmp_path / "out"
    p = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(out), "--smoke"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["torch"].startswith("2.11.0"), report["environment"]
    assert report["environment"]["python"].startswith("3.12"), report["environment"]
    parts = report["parts"]
    throughput = {
        (r["model"], r["width"], r["mixed_precision"], r["compile"]) for r in parts if r["part"] == "throughput"
    }
    models = [("airbench", 64), ("airbench", 32), ("resnet_fast", 16), ("tutorial_cnn", None)]
    assert throughput == {(*m, prec, comp) for m in models for prec in ("no", "bf16") for comp in (False, True)}
    trained = {r["preset"]: r for r in parts if r["part"] == "train"}
    assert set(trained) == {"airbench", "fast"}
    for r in trained.values():
        assert r["curve"] and 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] > 0, r
        assert all(k in r for k in ("seconds_to_0.90", "seconds_to_0.93", "save_seconds", "validate_seconds"))
    assert [r["part"] for r in parts].count("overhead") == 1
    assert not [r for r in parts if "error" in r]
    last = p.stdout.strip().splitlines()[-2:]
    assert "94.01%" in last[0] and "3.83 s" in last[0] and "A100" in last[0] and "0.36 PFLOP" in last[0], last
    assert last[1].startswith("ours: airbench preset") and "JPEG q75" in last[1], last


def test_gpu_check_stops_in_seconds_with_one_line_without_the_archive(tmp_path):
    """No .device/ (prepare_device.sh not run, or .device not carried): one line, exit 2, within seconds."""
    tree = tmp_path / "repo"
    shutil.copytree(REPO / "benchmarks", tree / "benchmarks")
    t = time.monotonic()
    p = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")],
        cwd=tree,
        env={"PATH": os.environ["PATH"], "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and time.monotonic() - t < 30
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "prepare_device.sh" in lines[0] and ".device" in lines[0], p.stdout
