"""Exact resume, on the CPU with one process: a run stopped by real signals in the middle of an
epoch, twice (SIGUSR1, then SIGTERM), and resumed each time ends with weights, optimizer state,
per-epoch metrics and test metrics identical to one uninterrupted run with the same seed.

    python -m pytest tests/system/test_resume_exact.py

The stops are asynchronous, as in production: the test waits for visible progress (the periodic
state save at step 10; the first epoch's metrics line) and then signals the process, so the stop
lands somewhere after it; the test reads from the saved state where it landed and checks that it
really was mid-epoch. The tutorial CNN has dropout, so the RNG has to be restored exactly, not just the
weights and the data order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import MEDIUM, REPO, base_env, read_metrics, run, train_cmd, without_timing

pytestmark = pytest.mark.slow  # every test here starts training processes

STEPS_PER_EPOCH = 100  # 2,000 synthetic images -> 1,600 train; 1,600 / 16 per batch
# A hang guard only: each run here takes 10-40 s; reaching it fails the test.
GUARD_S = 300


def args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        *MEDIUM,
        f"--data.root={data_root}",
        "--train.epochs=2",
        "--train.checkpoint_every_steps=10",
        "--seed=7",
        "--run.progress=false",
        "--tracking.backend=none",
        f"--run.dir={run_dir}",
        *extra,
    ]


def saved_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "last" / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)


def metric_rows(run_dir: Path) -> list[dict]:
    return without_timing(read_metrics(run_dir / "metrics.jsonl"))


def stop_when(run_dir: Path, ready, sig: int, log: Path, extra: tuple = ()) -> tuple[int, str]:
    """Start a resumable run, wait until ready(run_dir) is true, send `sig`, wait for the exit."""
    with open(log, "w+") as out:
        p = subprocess.Popen(
            train_cmd(*args(run_dir.parent / "data", run_dir, "--train.resume=auto", *extra)),
            cwd=REPO,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            t0 = time.monotonic()
            while not ready(run_dir) and p.poll() is None and time.monotonic() - t0 < GUARD_S:
                time.sleep(0.02)
            if p.poll() is None:
                p.send_signal(sig)
            code = p.wait(timeout=GUARD_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out.seek(0)
        return code, out.read()


# The tutorial's SGD; and AdamW with a cosine schedule, decay exempting norms and biases, and an EMA of
# the weights and BatchNorm buffers (seed_cnn_bn: dropout and BatchNorm), whose state must come back too.
RECIPES = {
    "sgd": (),
    "adamw_cosine_ema": (
        "--model.name=seed_cnn_bn",
        "--optim.name=adamw",
        "--optim.lr=0.002",
        "--optim.weight_decay=0.05",
        "--optim.no_decay_norm_bias=true",
        "--optim.schedule=cosine",
        "--optim.warmup_epochs=0.5",
        "--train.ema_decay=0.95",
    ),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_stopped_twice_mid_epoch_resumes_bit_exact(tmp_path, data_root_medium, recipe):
    extra = RECIPES[recipe]
    (tmp_path / "data").symlink_to(data_root_medium)
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    run(train_cmd(*args(tmp_path / "data", full, *extra)), timeout=GUARD_S, check=True)

    # 1. SIGUSR1 (SLURM's warning) once the step-10 state exists: save at the next step, exit 0.
    code, out = stop_when(
        interrupted,
        lambda d: (d / "last" / "custom_checkpoint_0.pkl").exists(),
        signal.SIGUSR1,
        tmp_path / "leg1.log",
        extra,
    )
    assert code == 0, out[-3000:]
    assert "stop requested: full state saved" in out, out[-3000:]
    assert not (interrupted / "test_metrics.json").exists()
    s1 = saved_state(interrupted)
    assert s1["epoch"] == 0 and 0 < s1["step_in_epoch"] < STEPS_PER_EPOCH, s1
    assert s1["partial"]["seen"] == 16 * s1["step_in_epoch"]

    # 2. Resumed; SIGTERM (scancel) once epoch 1 is logged: save at the next step, exit 143.
    code, out = stop_when(
        interrupted, lambda d: (d / "metrics.jsonl").exists(), signal.SIGTERM, tmp_path / "leg2.log", extra
    )
    assert f"resumed {interrupted} at epoch 1, step {s1['step']}" in out, out[-3000:]
    assert code == 143, out[-3000:]
    assert "stop requested: full state saved" in out, out[-3000:]
    s2 = saved_state(interrupted)
    assert s2["epoch"] == 1 and 0 < s2["step_in_epoch"] < STEPS_PER_EPOCH, s2

    # 3. Resumed to the end.
    p = run(
        train_cmd(*args(tmp_path / "data", interrupted, "--train.resume=auto", *extra)), timeout=GUARD_S, check=True
    )
    assert f"at epoch 2, step {s2['step']}" in p.stdout

    from safetensors.torch import load_file

    a, b = load_file(full / "last" / "model.safetensors"), load_file(interrupted / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different}"
    oa = torch.load(full / "last" / "optimizer.bin", weights_only=False)
    ob = torch.load(interrupted / "last" / "optimizer.bin", weights_only=False)
    assert oa["param_groups"] == ob["param_groups"]
    assert all(torch.equal(x, y) for k in oa["state"] for x, y in zip(oa["state"][k].values(), ob["state"][k].values()))
    if "--train.ema_decay=0.95" in extra:  # the EMA: restored exactly, and what best.pt holds
        ea = torch.load(full / "last" / "custom_checkpoint_1.pkl", weights_only=False)["module"]
        eb = torch.load(interrupted / "last" / "custom_checkpoint_1.pkl", weights_only=False)["module"]
        assert all(torch.equal(ea[k], eb[k]) for k in ea)
        assert not all(torch.equal(ea[k], a[k]) for k in a)  # the average is not the last weights
    best_a = torch.load(full / "best.pt", weights_only=True)["model_state"]
    best_b = torch.load(interrupted / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert metric_rows(full) == metric_rows(interrupted)
    assert len(metric_rows(full)) == 2
    assert json.loads((full / "test_metrics.json").read_text()) == json.loads(
        (interrupted / "test_metrics.json").read_text()
    )
