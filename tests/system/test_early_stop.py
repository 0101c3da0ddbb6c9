"""train.early_stop_patience and train.best_metric: a 2-process run whose validation accuracy cannot
improve (a learning rate of 1e-12 leaves every prediction as it was) stops after `patience`
validations on both ranks at the same epoch, exits 0 without a hang, and tests the best epoch."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SMALL, accelerate_cmd, read_metrics, run, train_cmd

from cifar_dist.config import resolve
from cifar_dist.errors import UserError


@pytest.mark.slow
def test_two_processes_stop_together_when_accuracy_stalls(tmp_path, data_root):
    run_dir = tmp_path / "run"
    p = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=6",
            "--optim.lr=1e-12",
            "--train.best_metric=val_accuracy",
            "--train.early_stop_patience=2",
            "--eval.per_device_batch_size=16",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            "--tracking.backend=none",
            launch=accelerate_cmd(),
        ),
        timeout=300,  # a rank left waiting in a collective would hang until this kills the test
        check=True,
    )
    assert "world size 2" in p.stdout
    assert "Early stop: val_accuracy has not improved for 2 validation(s)" in p.stdout
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # epoch 1 sets the best; 2 and 3 do not beat it
    assert [r["early_stop"] for r in rows] == [False, False, True]
    assert len({r["val_accuracy"] for r in rows}) == 1
    summary = json.loads((run_dir / "test_metrics.json").read_text())
    assert (summary["best_epoch"], summary["epochs"], summary["stopped_early"]) == (1, 3, True)
    assert summary["best_metric"] == "val_accuracy"
    assert torch.load(run_dir / "best.pt", weights_only=True)["epoch"] == 1
    # a resume of a run that stopped early does not train on
    again = run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=6",
            "--optim.lr=1e-12",
            "--train.best_metric=val_accuracy",
            "--train.early_stop_patience=2",
            f"--run.dir={run_dir}",
            "--train.resume=true",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    assert "Epoch: 4" not in again.stdout
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 3


def test_best_metric_choices():
    assert resolve().train.best_metric == "val_loss"  # the tutorial's rule stays the default
    with pytest.raises(UserError, match="val_loss, val_accuracy"):
        resolve(overrides=["--train.best_metric=accuracy"])
