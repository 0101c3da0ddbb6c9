"""train/checkpoint.py, train/best.py and train/state.py without a run: when the full state is due, how a
new last/ replaces the old one, which epoch is best and when early stopping ends a run, and what a
mid-epoch save carries.

    python -m pytest tests/unit/test_checkpoint.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cifar_dist.artifacts.run_dir import STATE_FILE, RunDir
from cifar_dist.config import resolve
from cifar_dist.train.best import Best
from cifar_dist.train.checkpoint import Checkpointer
from cifar_dist.train.state import TrainState


def accelerator():
    import torch

    return SimpleNamespace(num_processes=1, is_main_process=True, device=torch.device("cpu"), print=lambda *a: None)


def checkpointer(tmp_path, *overrides):
    cfg = resolve("tutorial", None, [*overrides])
    state = TrainState(config=cfg.to_dict())
    return Checkpointer(accelerator(), RunDir(tmp_path), cfg, {}, state), state


def test_the_full_state_is_due_at_epoch_ends_every_n_steps_and_on_a_stop(tmp_path, monkeypatch):
    # every epoch end (the auto cadence's decision is save_cadence's, tested in test_gpu_loop)
    ckpt, state = checkpointer(tmp_path, "--train.checkpoint_every_steps=5", "--train.checkpoint_every_epochs=1")
    saves = []
    monkeypatch.setattr(ckpt, "save_state", lambda: saves.append(state.step))
    for step in range(1, 12):
        state.step = step
        ckpt.maybe_save(running=(0.0, 0, 0))
    ckpt.maybe_save(epoch_end=True)
    state.step = 12
    ckpt.maybe_save(running=(6.0, 3, 4), stop=True)
    assert saves == [5, 10, 11, 12]
    assert state.partial == {"loss_sum": 6.0, "correct": 3, "seen": 4}  # a mid-epoch save keeps the sums


def test_a_new_last_replaces_the_old_one_and_writes_config_json(tmp_path):
    ckpt, state = checkpointer(tmp_path)
    run = RunDir(tmp_path)
    for step in (1, 2):
        tmp = run.last_tmp(step)
        tmp.mkdir()
        (tmp / STATE_FILE).write_text(str(step))
        ckpt._publish(tmp)
    assert (run.last / STATE_FILE).read_text() == "2" and not run.last_old.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "last"]


def test_the_best_epoch_by_validation_loss_and_early_stopping(tmp_path):
    cfg = resolve("tutorial", None, ["--train.early_stop_patience=2"])
    state = TrainState()
    best = Best(accelerator(), cfg, state)
    losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.72]
    verdicts, stops = [], []
    for epoch, loss in enumerate(losses, start=1):
        verdicts.append(best.judge(epoch, {"val_loss": loss, "val_accuracy": 0.5}))
        stops.append(best.should_stop_early())
    assert verdicts == [True, True, False, True, False, False]
    assert stops == [False, False, False, False, False, True] and state.stopped_early
    assert (state.best_epoch, state.best_val_loss) == (4, 0.7)


def test_best_by_accuracy_and_without_a_validation_split(tmp_path):
    cfg = resolve("tutorial", None, ["--train.best_metric=val_accuracy"])
    state = TrainState()
    best = Best(accelerator(), cfg, state)
    assert best.judge(1, {"val_loss": 1.0, "val_accuracy": 0.5})
    assert not best.judge(2, {"val_loss": 0.1, "val_accuracy": 0.5})  # a lower loss does not count here
    assert best.judge(3, None) and state.best_epoch == 3  # no validation split: the newest weights
    assert not best.should_stop_early()  # patience 0: never


@pytest.mark.parametrize("main", [True, False])
def test_a_resumed_epoch_carries_the_saved_sums_on_rank_0_only(main):
    state = TrainState()
    assert state.carried(main) == {} and not state.rng_to_restore()
    state.keep_partial(6.0, 3, 4)
    state.step_in_epoch, state.rng_state = 2, ["rng"]
    assert state.carried(main) == ({"loss_sum": 6.0, "correct": 3, "seen": 4} if main else {})
    assert state.rng_to_restore()
    state.end_epoch()
    assert (state.epoch, state.step_in_epoch, state.partial) == (1, 0, {})
