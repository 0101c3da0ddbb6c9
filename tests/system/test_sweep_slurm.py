"""slurm/sweep.sbatch on the one-machine SLURM cluster (slurm/dev_cluster.sh, as tests/system/test_slurm.py):
an array of two workers completes a 4-trial study, and a worker preempted mid-trial (PreemptMode=REQUEUE)
comes back, its trial resumes from last/ and ends with the same weights as the trial's own command run
uninterrupted.

    sudo python -m pytest tests/system/test_sweep_slurm.py       # root: slurmd runs as root
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, base_env
from test_slurm import JOB_GUARD_S, SLURM_DIR, cluster  # noqa: F401 - cluster: the fixture

pytest.importorskip("optuna")


def space(tmp_path: Path, trials: int, lrs: str, size: int) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        f"""
preset: tutorial_fast
objective: val_loss
trials: {trials}
sampler: grid
pruner: none
fixed:
  data.name: synthetic
  data.root: {tmp_path / "data"}
  data.synthetic_train_size: {size}
  data.synthetic_test_size: 101
  train.epochs: 2
  train.eval_every_epochs: 1
  train.threads_per_process: 1
  train.checkpoint_every_steps: 5
  tracking.backend: none
params:
  optim.lr: {lrs}
  optim.weight_decay: [0.0, 0.0005]
"""
    )
    return path


def trials_of(study: Path) -> list:
    from cifar_dist.sweep.study import StudyDir, load

    return load(StudyDir(study)).get_trials()


@pytest.mark.slow
def test_sweep_array_of_two_workers_completes_a_four_trial_study(cluster, tmp_path):  # noqa: F811
    (tmp_path / "logs").mkdir()
    study = tmp_path / "study"
    p = cluster.cmd(
        ["sbatch", "--wait", "--parsable", "--array=0-1", "--cpus-per-task=1", str(SLURM_DIR / "sweep.sbatch")]
        + ["--study", str(study), str(space(tmp_path, 4, "[0.05, 0.1]", 500))],
        cwd=tmp_path,
        timeout=JOB_GUARD_S,
        USE_CPU="1",
    )
    logs = "".join(f.read_text() for f in sorted((tmp_path / "logs").glob("*.out")))
    assert p.returncode == 0, f"{p.stderr}\n{logs[-5000:]}"
    trials = trials_of(study)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, logs[-5000:]
    assert len({tuple(t.params.values()) for t in trials}) == 4
    assert len(re.findall(r"sweep worker (\d) start", logs)) == 2 and "4/4 finished" in logs, logs[-5000:]
    assert "launch.sh: host" in (study / "trials" / "0000.log").read_text()  # started as a single run is
    assert (study / "report.md").exists() and (study / "figures" / "slice.png").exists()


@pytest.mark.slow
def test_preempted_sweep_worker_requeues_and_its_trial_resumes_exactly(cluster, tmp_path):  # noqa: F811
    (tmp_path / "logs").mkdir()
    study = tmp_path / "study"
    space_file = space(tmp_path, 1, "[0.05]", 2000)
    job = cluster.submit(
        tmp_path,
        "sweep.sbatch",
        ["--partition=low", "--cpus-per-task=2"],
        ["--study", str(study), str(space_file)],
        USE_CPU="1",
    )
    log = tmp_path / "logs" / f"cifar-sweep-{job}.out"
    run_dir = study / "trials" / "0000"
    t0 = cluster.wait_for_save(job, run_dir, log)  # the trial is training
    info = cluster.preempt(job, tmp_path, log, t0)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-5000:]
    assert "stopped on request" in text and "queued again" in text, text[-5000:]
    [trial] = trials_of(study)
    assert trial.state.name == "COMPLETE", text[-5000:]
    trial_log = (study / "trials" / "0000.log").read_text()
    assert trial_log.count("### trial 0") == 2 and re.search(r"resumed \S+ at epoch \d+, step \d+", trial_log)

    # The same trial, uninterrupted: its own reproducing command (launch.sh outside SLURM), another run.dir.
    base = tmp_path / "uninterrupted"
    cmd = trial.user_attrs["command"].split() + [f"--run.dir={base}"]
    env = base_env(USE_CPU="1", PATH=f"{Path(sys.executable).parent}:{base_env()['PATH']}")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=JOB_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = load_file(run_dir / "last" / "model.safetensors"), load_file(base / "last" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ta, tb = (json.loads((d / "test_metrics.json").read_text()) for d in (run_dir, base))
    assert ta["loss"] == tb["loss"] and ta["accuracy"] == tb["accuracy"]
