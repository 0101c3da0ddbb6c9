"""Sweeps that train: two workers started together on one study folder, a trial of two processes that
is pruned on both ranks at once, and a worker killed with SIGKILL mid-trial whose trial is retried.

    WANDB_MODE=offline python -m pytest tests/system/test_sweep_run.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CPU_DDP, REPO, base_env

pytest.importorskip("optuna")

LAUNCHER = f"{sys.executable} -m accelerate.commands.launch -q --num_processes 1 -m cifar_dist"
WORKER_GUARD_S = 900  # hang guard only: a trial takes 20-40 s here


def space_yaml(tmp_path: Path, trials: int, lrs: str, epochs: int = 2, extra: str = "") -> Path:
    """tutorial_fast on 500 synthetic images; lr 20 diverges (validation loss ~1e12 after one epoch,
    NaN in the second), which the threshold pruner stops after its first epoch."""
    path = tmp_path / "space.yaml"
    path.write_text(
        f"""
preset: tutorial_fast
objective: val_loss
trials: {trials}
sampler: grid
pruner: {{name: threshold, upper: 10.0}}
fixed:
  data.name: synthetic
  data.root: {tmp_path / "data"}
  data.synthetic_train_size: 500
  data.synthetic_test_size: 101
  train.epochs: {epochs}
  train.eval_every_epochs: 1
  train.threads_per_process: 1
  tracking.backend: wandb{extra}
params:
  optim.lr: {lrs}
  optim.weight_decay: [0.0, 0.0005]
"""
    )
    return path


def start_worker(space: Path, study: Path, log: Path, launcher: str = LAUNCHER, index: int = 0, **env):
    cmd = [sys.executable, "-m", "cifar_dist.sweep", str(space), "--study", str(study), "--launcher", launcher]
    cmd += ["--worker-index", str(index), "--heartbeat", "1"]
    out = open(log, "w")  # noqa: SIM115 - the worker writes it until it ends
    env = base_env(WANDB_MODE="offline", **env)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait(proc: subprocess.Popen, log: Path) -> str:
    try:
        proc.wait(timeout=WORKER_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"worker still running after {WORKER_GUARD_S} s\n{log.read_text()[-3000:]}") from None
    return log.read_text()


def trials_of(study: Path) -> list:
    from cifar_dist.sweep.study import StudyDir, load

    return load(StudyDir(study)).get_trials()


def wandb_run(run_dir: Path) -> tuple[dict, dict]:
    """(the run record, the config) of the one offline W&B run in run_dir."""
    from cifar_dist.wandb_records import find_run_files, inspect, read_run

    [path] = find_run_files(run_dir)
    records = [json.loads(line) for line in inspect(path, "--json").splitlines()]
    run = next(r["run"] for r in records if r.get("type") == "run")
    return run, read_run(path).config


@pytest.mark.slow
def test_two_workers_share_one_study_prune_report_and_group_in_wandb(tmp_path):
    space = space_yaml(tmp_path, 6, "[0.05, 0.1, 20.0]")
    study = tmp_path / "grid"
    workers = [start_worker(space, study, tmp_path / f"w{i}.log", index=i) for i in range(2)]
    logs = [wait(w, tmp_path / f"w{i}.log") for i, w in enumerate(workers)]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)

    trials = trials_of(study)
    assert len(trials) == 6, [t.state for t in trials]
    points = {(t.params["optim.lr"], t.params["optim.weight_decay"]) for t in trials}
    assert len(points) == 6  # the whole grid, no point (and so no trial) run twice
    states = {t.number: t.state.name for t in trials}
    assert {n for n, s in states.items() if s == "PRUNED"} == {t.number for t in trials if t.params["optim.lr"] == 20.0}
    assert all(s == "COMPLETE" for n, s in states.items() if trials[n].params["optim.lr"] != 20.0), states
    for t in trials:  # one run folder and one start per trial, each a normal run with its parameters
        run_dir = study / "trials" / f"{t.number:04d}"
        assert (study / "trials" / f"{t.number:04d}.log").read_text().count("### trial") == 1
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optim"]["lr"] == t.params["optim.lr"] and config["train"]["best_metric"] == "val_loss"
        assert f"--optim.lr={t.params['optim.lr']}" in (run_dir / "model" / "README.md").read_text()
        epochs = [json.loads(r)["epoch"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == ([1] if t.state.name == "PRUNED" else [1, 2]), (t.number, epochs)
        run, wconfig = wandb_run(run_dir)
        assert run["run_group"] == study.name and run["display_name"] == f"grid-trial-{t.number}"
        assert wconfig["sweep"]["trial"] == t.number and wconfig["optim"]["lr"] == t.params["optim.lr"]
    text = "".join(logs)
    assert text.count(" COMPLETE: val_loss ") == 4 and text.count(" PRUNED: val_loss ") == 2, text[-3000:]
    assert "6/6 finished" in text
    report = (study / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 6 and all(" COMPLETE " in r for r in rows[:4]) and all(" PRUNED " in r for r in rows[4:])
    assert [float(r.split(" | ")[3]) for r in rows[:4]] == sorted(float(r.split(" | ")[3]) for r in rows[:4])
    best = min((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert f"best: trial {best.number}, val_loss {best.value:.4f}" in report
    assert best.user_attrs["command"] in report and "--optim.lr=" in best.user_attrs["command"]
    for name in ("optimization_history", "slice", "param_importances"):
        assert (study / "figures" / f"{name}.png").stat().st_size > 5000, name
    p = subprocess.run(
        [sys.executable, "-m", "cifar_dist.sweep", "--report", str(study)],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0 and "6/6 trials finished" in p.stdout and report.splitlines()[2] in p.stdout


@pytest.mark.slow
def test_a_two_process_trial_is_pruned_on_both_ranks_at_the_same_epoch(tmp_path):
    launcher = f"{sys.executable} -m accelerate.commands.launch -q --config_file {CPU_DDP} -m cifar_dist"
    space = space_yaml(tmp_path, 1, "[20.0]", epochs=3)
    study = tmp_path / "ddp"
    w = start_worker(space, study, tmp_path / "w.log", launcher=launcher, ACCELERATE_USE_CPU="1")
    text = wait(w, tmp_path / "w.log")
    assert w.returncode == 0, text[-3000:]
    [trial] = trials_of(study)
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1], text[-3000:]
    run_dir = study / "trials" / "0000"
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert test["world_size"] == 2 and test["epochs"] == 1  # both ranks left at epoch 1, then tested
    assert (run_dir / "last").is_dir() and (run_dir / "best.pt").is_file()
    assert (study / "trials" / "0000.log").read_text().count("Pruned by the sweep's threshold pruner") == 1


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_trial_that_is_retried_once(tmp_path):
    space = space_yaml(tmp_path, 2, "[0.05]", epochs=6, extra="\n  train.checkpoint_every_steps: 2")
    study = tmp_path / "kill"
    a = start_worker(space, study, tmp_path / "a.log", index=0)
    beat, t0 = study / "heartbeats" / "0000", time.monotonic()
    while not (study / "trials" / "0000" / "last").exists():  # trial 0 is training, with a saved state
        assert a.poll() is None and time.monotonic() - t0 < WORKER_GUARD_S, (tmp_path / "a.log").read_text()
        time.sleep(0.2)
    trial_group = int(beat.read_text())
    os.killpg(a.pid, signal.SIGKILL)  # the machine is gone: the worker and its trial's processes
    os.killpg(trial_group, signal.SIGKILL)
    a.wait(timeout=30)
    b = start_worker(space, study, tmp_path / "b.log", index=1)
    text = wait(b, tmp_path / "b.log")
    assert b.returncode == 0, text[-3000:]
    trials = trials_of(study)
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") == 2 and len(trials) == 3, states
    failed = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    assert "no heartbeat" in text and "queued once more" in text, text[-3000:]
    log = (study / "trials" / f"{failed.number:04d}.log").read_text()
    assert log.count("### trial") == 2 and "resumed " in log  # the retry continued the killed run's last/


def test_the_search_files_in_sweeps_load():
    from cifar_dist.sweep.space import load_space

    space = load_space(REPO / "sweeps" / "tutorial_fast_lr_wd.yaml")
    assert [p.key for p in space.params] == ["optim.lr", "optim.weight_decay"] and space.trials >= 12
    import yaml

    w = yaml.safe_load((REPO / "sweeps" / "wandb_tutorial_fast_lr_wd.yaml").read_text())
    assert set(w["parameters"]) == {p.key for p in space.params} and w["metric"]["name"] == "epoch/val_accuracy"
    assert w["command"][:4] == ["${env}", "accelerate", "launch", "${program}"] and w["command"][-1] == "${args}"


@pytest.mark.slow
def test_the_wandb_sweep_command_expands_to_a_run_that_trains(tmp_path):
    """W&B's agent builds a trial's command from `command:` with its own functions (wandb_agent.py): the
    macros ${env}, ${program} and ${args} (--key=value per parameter). Expanded here the same way, with
    the smallest values of the ranges and, after them, a small synthetic dataset instead of CIFAR-10."""
    import yaml
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    w = yaml.safe_load((REPO / "sweeps" / "wandb_tutorial_fast_lr_wd.yaml").read_text())
    values = {k: {"value": v["min"]} for k, v in w["parameters"].items()}
    macros = sweep_utils.create_sweep_command_args({"args": values})
    macros.update(env=["/usr/bin/env"], program=[w["program"]], interpreter=["python"])
    command = []
    for c in sweep_utils.create_sweep_command(list(w["command"])):
        command += macros.get(c[2:-1]) or [] if c.startswith("${") else [c]
    assert "--optim.lr=0.01" in command and "--optim.weight_decay=1e-05" in command, command
    run_dir = tmp_path / "run"
    small = ["--data.name=synthetic", f"--data.root={tmp_path}", "--data.synthetic_train_size=300"]
    small += ["--data.synthetic_test_size=50", "--train.epochs=1", f"--run.dir={run_dir}", "--tracking.backend=none"]
    env = base_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(command + small, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["optim"]["lr"] == 0.01 and config["optim"]["weight_decay"] == 1e-05
    assert config["preset"] == "tutorial_fast" and (run_dir / "test_metrics.json").exists()
