"""The search space file and the study's bookkeeping, without training: bad input is one line, exit 2
and nothing written; a study folder holds one space; a dead worker's trial is failed and queued once
more (same parameters, same run folder); the pruning hook reports, decides and leaves its marker.

    python -m pytest tests/system/test_sweep_space.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, base_env

pytest.importorskip("optuna")

from cifar_dist.sweep.pruning import PruningHook  # noqa: E402
from cifar_dist.sweep.space import load_space  # noqa: E402
from cifar_dist.sweep.study import StudyDir, check_folder, fail_stale, open_study, root_number, save_space, tally  # noqa: E402
from cifar_dist.sweep.toolkit import UserError  # noqa: E402

GOOD = """
preset: tutorial_fast
objective: val_accuracy
trials: 4
fixed: {data.name: synthetic, train.epochs: 2}
params:
  optim.lr: {low: 0.01, high: 1.0, log: true}
  optim.weight_decay: [0.0, 0.0005]
"""


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sweep(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cifar_dist.sweep", *args],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_good_space_loads_with_the_objective_picking_best_pt(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    assert [p.key for p in space.params] == ["optim.lr", "optim.weight_decay"]
    assert space.params[0].kind == "float" and space.params[0].log
    assert space.params[1].choices == (0.0, 0.0005) and space.direction == "maximize"
    args = space.overrides({"optim.lr": 0.1, "optim.weight_decay": 0.0})
    assert args[:2] == ["--preset", "tutorial_fast"] and "--train.best_metric=val_accuracy" in args
    assert args[-2:] == ["--optim.lr=0.1", "--optim.weight_decay=0.0"]
    bigger = load_space(write(tmp_path, GOOD.replace("trials: 4", "trials: 9"), "more.yaml"))
    assert bigger.fingerprint() == space.fingerprint()  # a study may be extended


BAD = {
    "unknown key": ("optim.lrr: {low: 0.01, high: 1.0}", "unknown key 'optim.lrr' in params; did you mean optim.lr?"),
    "wrong type": ("optim.lr: {low: fast, high: 1.0}", "optim.lr must be a number, got 'fast'"),
    "empty range": ("optim.lr: {low: 0.5, high: 0.1}", "an empty range (low 0.5 is not below high 0.1)"),
    "range on text": ("data.loader: {low: 1, high: 2}", "a range on a non-numeric key"),
    "out of bounds": ("data.val_fraction: {low: 0.1, high: 1.5}", "data.val_fraction=1.5 must be in [0, 1)"),
    "bad choice": ("data.loader: [torch, fast]", "data.loader='fast' is not valid; choose one of: torch, tensor"),
    "reserved": ("run.dir: [a, b]", "params run.dir is set by the sweep for every trial"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    line, expected = BAD[case]
    space = write(tmp_path, GOOD.replace("  optim.lr: {low: 0.01, high: 1.0, log: true}", "  " + line))
    study = tmp_path / "study"
    p = sweep(str(space), "--study", str(study))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], p.stderr
    assert not study.exists()


def test_objective_test_accuracy_only_without_validation(tmp_path):
    text = GOOD.replace("objective: val_accuracy", "objective: test_accuracy")
    with pytest.raises(UserError, match="only for runs without validation"):
        load_space(write(tmp_path, text))
    ok = load_space(write(tmp_path, text.replace("train.epochs: 2}", "train.epochs: 2, data.val_fraction: 0}"), "b"))
    assert ok.direction == "maximize" and "train.best_metric" not in ok.fixed


def test_a_study_folder_with_a_different_space_is_refused_untouched(tmp_path):
    sd = StudyDir(tmp_path / "study")
    save_space(load_space(write(tmp_path, GOOD)), sd)
    before = {p: p.stat().st_mtime_ns for p in sd.path.rglob("*")}
    other = write(tmp_path, GOOD.replace("[0.0, 0.0005]", "[0.0, 0.001]"), "other.yaml")
    p = sweep(str(other), "--study", str(sd.path))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "holds a different space (its 'params' differs" in p.stderr
    assert {p: p.stat().st_mtime_ns for p in sd.path.rglob("*")} == before
    check_folder(load_space(write(tmp_path, GOOD.replace("trials: 4", "trials: 6"), "more.yaml")), sd)  # same space


def test_report_of_a_folder_that_is_no_study_is_one_line(tmp_path):
    p = sweep("--report", str(tmp_path))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "not a study folder" in p.stderr


def test_a_trial_without_heartbeat_fails_and_is_queued_once_more(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    sd = StudyDir(tmp_path / "study")
    save_space(space, sd)
    study, storage = open_study(space, sd)
    trial = study.ask()
    lr = trial.suggest_float("optim.lr", 0.01, 1.0, log=True)
    trial.report(0.3, 1)
    sd.heartbeat(trial.number).parent.mkdir(parents=True)
    sd.heartbeat(trial.number).touch()
    assert fail_stale(study, storage, sd, grace_s=30) == []  # alive
    old = time.time() - 60
    os.utime(sd.heartbeat(trial.number), (old, old))
    said = fail_stale(study, storage, sd, grace_s=30)
    assert len(said) == 1 and "failed; queued once more" in said[0], said
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].params["optim.lr"] == lr and trials[1].intermediate_values == {1: 0.3}
    assert root_number(study, 1) == 0  # the retry trains in trial 0's run folder, from its last/
    assert tally(study).done == 0 and tally(study).waiting == 1  # the failed one is not counted: it is retried
    retry = study.ask()  # taken again, then dies again: not retried a second time
    assert retry.number == 1
    said = fail_stale(study, storage, sd, grace_s=-1)
    assert "not retried (max 1)" in said[0] and tally(study).done == 1


def test_pruning_hook_reports_prunes_and_leaves_its_marker(tmp_path, monkeypatch):
    space = load_space(write(tmp_path, GOOD.replace("trials: 4", "trials: 4\npruner: {name: threshold, lower: 0.2}")))
    sd = StudyDir(tmp_path / "study")
    save_space(space, sd)
    study, _ = open_study(space, sd)
    trial = study.ask()
    marker = tmp_path / "pruned.json"
    spec = {
        "journal": str(sd.journal),
        "study": sd.name,
        "trial": trial.number,
        "objective": "val_accuracy",
        "pruner": space.pruner,
        "params": {},
        "marker": str(marker),
    }
    monkeypatch.setenv("CIFAR_DIST_SWEEP_TRIAL", json.dumps(spec))
    from cifar_dist.sweep.pruning import hook_from_env

    hook = hook_from_env()
    assert isinstance(hook, PruningHook)
    assert hook(1, {"train_loss": 2.0}) is False  # not a validated epoch: nothing reported
    assert hook(1, {"val_accuracy": 0.5}) is False and not marker.exists()
    assert hook(2, {"val_accuracy": 0.1}) is True
    assert json.loads(marker.read_text()) == {"epoch": 2, "value": 0.1}
    assert study.get_trials()[0].intermediate_values == {1: 0.5, 2: 0.1}
    monkeypatch.delenv("CIFAR_DIST_SWEEP_TRIAL")
    assert hook_from_env() is None


def test_a_trials_outcome_is_read_from_what_every_run_writes(tmp_path):
    from cifar_dist.sweep.trial import read_outcome

    run, marker = tmp_path / "0000", tmp_path / "0000.pruned.json"
    (run / "last").mkdir(parents=True)
    assert read_outcome(0, run, marker, "val_loss").state == "STOPPED"  # USR1: saved, exit 0
    assert read_outcome(1, run, marker, "val_loss", ("", True)).state == "STOPPED"  # TERM under accelerate -q
    diverged = read_outcome(2, run, marker, "val_loss", ("error: training loss became nan by step 6", False))
    assert diverged.state == "PRUNED" and diverged.value is None and "became nan" in diverged.error
    failed = read_outcome(2, run, marker, "val_loss", ("error: data.root x does not exist", False))
    assert failed.state == "FAIL" and failed.error.startswith("error: data.root")
    rows = [{"epoch": 1, "val_loss": 2.0, "val_accuracy": 0.3}, {"epoch": 2, "val_loss": 1.5, "val_accuracy": 0.2}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "test_metrics.json").write_text(json.dumps({"accuracy": 0.25, "epochs": 2}))
    assert (read_outcome(0, run, marker, "val_loss").value, read_outcome(0, run, marker, "val_accuracy").value) == (
        1.5,
        0.3,
    )
    assert read_outcome(0, run, marker, "test_accuracy").value == 0.25
    marker.write_text(json.dumps({"epoch": 1, "value": 2.0}))
    pruned = read_outcome(0, run, marker, "val_loss")
    assert (pruned.state, pruned.value, pruned.epochs) == ("PRUNED", 2.0, 2)


def test_report_of_a_moved_study_folder_with_its_figures(tmp_path):
    space = load_space(
        write(tmp_path, GOOD.replace("optim.weight_decay: [0.0, 0.0005]", "train.epochs: {low: 1, high: 4}"))
    )
    sd = StudyDir(tmp_path / "study")
    save_space(space, sd)
    study, _ = open_study(space, sd)
    from optuna.trial import TrialState

    for lr, epochs, value in ((0.1, 2, 0.5), (0.3, 3, 0.6), (0.02, 1, None)):  # None: pruned
        study.enqueue_trial({"optim.lr": lr, "train.epochs": epochs})
        trial = study.ask()
        trial.suggest_float("optim.lr", 0.01, 1.0, log=True)
        trial.suggest_int("train.epochs", 1, 4)
        study.tell(trial, value, state=TrialState.COMPLETE if value else TrialState.PRUNED)
    moved = tmp_path / "moved"
    sd.path.rename(moved)
    p = sweep("--report", str(moved))
    assert p.returncode == 0, p.stderr
    assert "# Study study: 3/4 trials finished" in p.stdout and "best: trial 1, val_accuracy 0.6000" in p.stdout
    for name in ("optimization_history", "slice", "param_importances", "trials"):
        assert (moved / "figures" / f"{name}.png").stat().st_size > 5000, name
