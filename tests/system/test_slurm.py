"""The SLURM templates on a real SLURM cluster: Debian's slurm-wlm (22.05) and munge, started for
this session by slurm/dev_cluster.sh (one node, this machine) and stopped afterwards.

    sudo python -m pytest tests/system/test_slurm.py       # root: slurmd runs as root

Jobs are submitted from a scratch folder (logs/ and runs/ land there) with CIFAR_DIST_DIR pointing
at this checkout. All three training jobs run the same 2-process CPU job (seed 0, 2 epochs of 50
steps), so they must agree exactly: an uninterrupted cpu.sbatch job, one that gets SLURM's warning
signal mid-run and requeues itself, and multinode.sbatch on one node. Without SLURM (not installed,
not root) the tests skip and say why; under CI=true that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import MEDIUM, REPO, base_env, read_metrics, require, without_timing

SLURM_DIR = REPO / "slurm"
TEMPLATES = sorted(SLURM_DIR.glob("*.sbatch"))
DEV_CLUSTER = SLURM_DIR / "dev_cluster.sh"
# Hang guards only (a job takes 25-90 s here); reaching one fails the test.
JOB_GUARD_S = 600
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def train_args(data_root: Path, *extra: str) -> list[str]:
    return [
        *MEDIUM,
        f"--data.root={data_root}",
        "--train.epochs=2",
        "--train.checkpoint_every_steps=10",
        "--tracking.backend=none",
        *extra,
    ]


# ----------------------------------------------------------------------------------------- no cluster


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [*TEMPLATES, SLURM_DIR / "job.sh", SLURM_DIR / "launch.sh", DEV_CLUSTER], ids=lambda p: p.name
)
def test_bash_accepts_every_script(path):
    p = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_template_header_and_directives(path):
    text = path.read_text()
    directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert any(re.fullmatch(r"#SBATCH --signal=B:USR1@\d+", d) for d in directives)
    assert "#SBATCH --output=logs/%x-%j.out" in directives and "#SBATCH --requeue" in directives
    assert f"sbatch slurm/{path.name} --" in text  # the header shows how to submit it, with overrides
    # every argument after the script goes to train.py (sweep.sbatch: to the sweep worker)
    assert 'cifar_job "$@"' in text or (path.name == "sweep.sbatch" and 'sweep_job "$@"' in text)


# --------------------------------------------------------------------------------------- the cluster


class Cluster:
    def __init__(self, conf: Path):
        self.conf = conf

    def env(self, **extra) -> dict:
        # `accelerate`/`python` inside the job come from this interpreter's environment (sbatch exports ours)
        return base_env(
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            SLURM_CONF=str(self.conf),
            CIFAR_DIST_DIR=str(REPO),
            **extra,
        )

    def cmd(self, argv: list[str], cwd: Path | None = None, timeout: float = 60, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, cwd=cwd or REPO, env=self.env(**env), capture_output=True, text=True, timeout=timeout
        )

    def submit(self, submit_dir: Path, template: str, sbatch_opts: list[str], args: list[str], **env) -> int:
        (submit_dir / "logs").mkdir(parents=True, exist_ok=True)
        p = self.cmd(["sbatch", "--parsable", *sbatch_opts, str(SLURM_DIR / template), *args], cwd=submit_dir, **env)
        assert p.returncode == 0, p.stderr
        return int(p.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict:
        p = self.cmd(["scontrol", "show", "job", "-o", str(job_id)])
        assert p.returncode == 0, p.stderr
        return dict(tok.split("=", 1) for tok in p.stdout.split() if "=" in tok)

    def wait(self, job_id: int, log: Path) -> dict:
        t0 = time.monotonic()
        while time.monotonic() - t0 < JOB_GUARD_S:
            info = self.job(job_id)
            if info["JobState"] in FINISHED:
                return info
            time.sleep(0.5)
        self.cmd(["scancel", str(job_id)])
        raise AssertionError(f"job {job_id} still {info['JobState']} after {JOB_GUARD_S} s\n{tail(log)}")

    def wait_for_save(self, job_id: int, run_dir: Path, log: Path) -> float:
        """Until the job's run has saved once (`last/`: training is under way); returns when the wait began."""
        t0 = time.monotonic()
        while not (run_dir / "last").exists():
            assert self.job(job_id)["JobState"] in ("PENDING", "RUNNING"), tail(log)
            assert time.monotonic() - t0 < JOB_GUARD_S, tail(log)
            time.sleep(0.2)
        return t0

    def preempt(self, job_id: int, submit_dir: Path, log: Path, t0: float) -> dict:
        """A job in the 'high' partition that needs the node preempts `job_id` (the 'low' partition,
        PreemptMode=REQUEUE); waits until `job_id` has ended after a restart and returns its record.
        PREEMPTED/REQUEUED/PENDING are on the way back, not the end."""
        p = self.cmd(
            ["sbatch", "--parsable", "--partition=high", "--cpus-per-task=2", "-o", "logs/high-%j.out"]
            + ["--wrap=sleep 2"],
            cwd=submit_dir,
        )
        assert p.returncode == 0, p.stderr
        while True:
            info = self.job(job_id)
            if info["JobState"] in FINISHED - {"PREEMPTED"} and info["Restarts"] != "0":
                return info
            assert time.monotonic() - t0 < JOB_GUARD_S, f"{info['JobState']}\n{tail(log)}"
            time.sleep(0.5)


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text()[-n:] if log.exists() else f"(no log at {log})"


def free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld, slurmd), so a system SLURM on 6817/6818 is left alone."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                continue
    return 6817


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    missing = [
        b
        for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol")
        if not shutil.which(b) and not Path("/usr/sbin", b).exists()
    ]
    require(
        not missing, f"SLURM cannot be started: {', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    )
    require(os.geteuid() == 0, "SLURM cannot be started: the dev cluster runs slurmd as root (run the tests as root)")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_DEV_DIR=str(state), SLURM_DEV_PORT=str(free_port_pair()))
    up = subprocess.run(["bash", str(DEV_CLUSTER), "up"], env=env, capture_output=True, text=True, timeout=120)
    try:
        if up.returncode != 0:
            why = (up.stderr.strip().splitlines() or ["no output"])[-1]
            require(False, f"SLURM cannot be started: slurm/dev_cluster.sh up failed: {why}")
        yield Cluster(state / "slurm.conf")
    finally:
        subprocess.run(["bash", str(DEV_CLUSTER), "down"], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def baseline(cluster, data_root_medium, tmp_path_factory) -> Path:
    """`sbatch --wait slurm/cpu.sbatch`: 2 processes, 2 epochs, uninterrupted. Returns its run.dir."""
    submit_dir = tmp_path_factory.mktemp("baseline")
    (submit_dir / "logs").mkdir()
    p = cluster.cmd(
        ["sbatch", "--wait", "--parsable", str(SLURM_DIR / "cpu.sbatch"), *train_args(data_root_medium)],
        cwd=submit_dir,
        timeout=JOB_GUARD_S,
    )
    job_id = int(p.stdout.strip().split()[0].split(";")[0]) if p.stdout.strip() else None
    log = submit_dir / "logs" / f"cifar-cpu-{job_id}.out"
    assert p.returncode == 0, f"sbatch --wait exited {p.returncode}: {p.stderr}\n{tail(log)}"
    run_dir = submit_dir / "runs" / f"cifar-cpu-{job_id}"  # the template's default: <job name>-<job id>
    assert run_dir.is_dir(), tail(log)
    return run_dir


def metric_rows(run_dir: Path) -> list[dict]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    return without_timing(rows)


def assert_same_run(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "last" / "model.safetensors"), load_file(b / "last" / "model.safetensors")
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    assert metric_rows(a) == metric_rows(b)
    assert json.loads((a / "test_metrics.json").read_text()) == json.loads((b / "test_metrics.json").read_text())


@pytest.mark.slow
def test_sbatch_test_only_accepts_every_template(cluster, tmp_path):
    # The node has 2 CPUs and 8 counted GPUs: the GPU templates ask for 32/64 CPUs per task and
    # multinode for 2 nodes, so those two numbers are brought down to this node; the rest as written.
    fits = {
        "cpu.sbatch": [],
        "train.sbatch": ["--cpus-per-task=2"],
        "multinode.sbatch": ["--nodes=1", "--cpus-per-task=2"],
        "sweep.sbatch": ["--cpus-per-task=2"],
    }
    assert sorted(fits) == sorted(t.name for t in TEMPLATES)
    (tmp_path / "logs").mkdir()
    for name, opts in fits.items():
        p = cluster.cmd(["sbatch", "--test-only", *opts, str(SLURM_DIR / name), "--train.epochs=1"], cwd=tmp_path)
        assert p.returncode == 0 and "to start at" in p.stderr, f"{name}: {p.stderr}"


@pytest.mark.slow
def test_cpu_sbatch_two_processes_leaves_one_best_checkpoint(baseline):
    log = baseline.parent.parent / "logs" / f"{baseline.name}.out"  # logs/<job name>-<job id>.out
    text = log.read_text()
    assert "world size 2 on cpu" in text and "processes=2" in text, text[-3000:]
    assert sorted(p.name for p in baseline.rglob("*.pt")) == ["best.pt"]
    rows = metric_rows(baseline)
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["world_size"] == 2 for r in rows)
    best = torch.load(baseline / "best.pt", weights_only=True)
    assert best["world_size"] == 2 and best["epoch"] == max(r["epoch"] for r in rows if r.get("best"))
    assert json.loads((baseline / "test_metrics.json").read_text())["num_samples"] == 101


@pytest.mark.slow
def test_warning_signal_requeues_and_resumes_exactly(cluster, baseline, data_root_medium, tmp_path):
    """SLURM's warning (USR1 to the batch shell, as --signal=B:USR1@N sends it) in the middle of the
    run: all ranks save, the job requeues itself, its restart resumes in the same run.dir and the
    same W&B run, and ends exactly where the uninterrupted job ended."""
    job_id = cluster.submit(
        tmp_path, "cpu.sbatch", [], train_args(data_root_medium, "--tracking.backend=wandb"), WANDB_MODE="offline"
    )
    log = tmp_path / "logs" / f"cifar-cpu-{job_id}.out"
    run_dir = tmp_path / "runs" / f"cifar-cpu-{job_id}"
    cluster.wait_for_save(job_id, run_dir, log)  # the step-10 save
    p = cluster.cmd(["scancel", "--batch", "--signal=USR1", str(job_id)])
    assert p.returncode == 0, p.stderr
    info = cluster.wait(job_id, log)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (
        f"{info['JobState']} {info['ExitCode']}\n{text[-4000:]}"
    )
    assert info["Restarts"] == "1", text[-4000:]

    saved = re.findall(r"stop requested: full state saved at step (\d+)", text)
    assert len(saved) == 1, text[-4000:]
    step = int(saved[0])
    # 1,600 training images / (2 processes × 16) = 50 steps an epoch: read from the uninterrupted run
    # rather than assumed, so a signal that lands in the second epoch is checked right too.
    steps_per_epoch = read_metrics(baseline / "metrics.jsonl")[0]["step"]
    assert 10 <= step < 2 * steps_per_epoch, text[-4000:]  # mid-run
    assert "requeueing" in text and "restart 1" in text and "resume=auto" in text
    assert f"resumed {run_dir} at epoch {step // steps_per_epoch + 1}, step {step}" in text, text[-4000:]
    runs = re.findall(r"W&B: run (\S+) is offline", text)
    assert len(runs) == 2 and runs[0] == runs[1], runs  # the restart continued the same W&B run
    assert_same_run(baseline, run_dir)


@pytest.mark.slow
def test_multinode_template_on_one_node(cluster, baseline, data_root_medium, tmp_path):
    job_id = cluster.submit(
        tmp_path,
        "multinode.sbatch",
        ["--nodes=1", "--cpus-per-task=2"],
        train_args(data_root_medium),
        USE_CPU="1",
        PROCESSES_PER_NODE="2",
    )
    log = tmp_path / "logs" / f"cifar-mn-{job_id}.out"
    info = cluster.wait(job_id, log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", tail(log)
    assert "machine_rank=0/1 processes=2" in log.read_text(), tail(log)
    assert_same_run(baseline, tmp_path / "runs" / f"cifar-mn-{job_id}")


@pytest.mark.slow
def test_gpu_template_with_fake_gres_launches_two_then_stops_in_one_line(cluster, tmp_path):
    """`sbatch --gres=gpu:2 slurm/train.sbatch` on the dev cluster's counted GPUs: the command-line
    --gres replaces the template's, launch.sh starts one process per granted GPU, and each stops at
    once with devices.py's one line (torch sees no GPU here), before any run folder exists."""
    job_id = cluster.submit(
        tmp_path,
        "train.sbatch",
        ["--gres=gpu:2", "--cpus-per-task=2"],  # the template's 32 CPUs per task do not fit this node
        ["--data.name=synthetic", "--train.epochs=1", "--tracking.backend=none"],
    )
    log = tmp_path / "logs" / f"cifar-{job_id}.out"
    info = cluster.wait(job_id, log)
    text = log.read_text()
    assert info["JobState"] == "FAILED", f"{info['JobState']}\n{tail(log)}"
    assert re.search(r"TresPerNode=gres:gpu:2\b", cluster.cmd(["scontrol", "show", "job", str(job_id)]).stdout)
    assert "machine_rank=0/1 processes=2 " in text, tail(log)
    errors = {s for s in text.splitlines() if s.startswith("error: ")}
    assert len(errors) == 1, errors  # the same line from both processes
    [error] = errors
    assert "SLURM (SLURM_GPUS_ON_NODE=2)" in error and "asked for 2 GPU(s)" in error and "sees 0" in error, error
    assert not (tmp_path / "runs" / f"cifar-{job_id}").exists()


@pytest.mark.slow
def test_preemption_with_preempt_mode_requeue_resumes_exactly(cluster, baseline, data_root_medium, tmp_path):
    """docs/slurm.md's claim: a job that SLURM preempts with PreemptMode=REQUEUE (the dev cluster's
    'low' partition, preempted by a job in 'high' that needs the node) gets SIGTERM, saves, is put
    back in the queue by SLURM itself with the same id, and its restart resumes in the same run.dir
    and ends exactly where the uninterrupted job ended."""
    job_id = cluster.submit(tmp_path, "cpu.sbatch", ["--partition=low"], train_args(data_root_medium))
    log = tmp_path / "logs" / f"cifar-cpu-{job_id}.out"
    run_dir = tmp_path / "runs" / f"cifar-cpu-{job_id}"
    t0 = cluster.wait_for_save(job_id, run_dir, log)  # the step-10 save
    info = cluster.preempt(job_id, tmp_path, log, t0)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "1", text[-4000:]
    assert "DUE TO PREEMPTION" in text, text[-4000:]  # slurmstepd's own line: SLURM preempted it
    assert "requeueing" not in text  # SLURM requeued it, not the template
    saved = re.findall(r"stop requested: full state saved at step (\d+)", text)
    assert len(saved) == 1, text[-4000:]
    step = int(saved[0])
    assert "restart 1" in text and "resume=auto" in text
    assert re.search(rf"resumed {re.escape(str(run_dir))} at epoch \d+, step {step}\b", text), text[-4000:]
    assert_same_run(baseline, run_dir)
