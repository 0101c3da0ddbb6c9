"""The in-process tier: `train(cfg)` called in this very process on the small synthetic set, for the
trainer, the run folder, stop requests, the loaders, the evaluation path and the command line's entry
functions. No training process is started, so these run in the quick loop (`pytest -m "not slow"`);
the same behaviours through real launchers are in the slow tier (test_core_runs, test_faults, ...).
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from helpers import SMALL, read_metrics

from cifar_dist.config import resolve
from cifar_dist.errors import UserError
from cifar_dist.train.loop import train


def config(data_root, run_dir, *extra: str, preset: str = "tutorial"):
    return resolve(
        preset,
        None,
        [
            *SMALL,
            f"--data.root={data_root}",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            "--tracking.backend=none",
            "--train.threads_per_process=1",
            *extra,
        ],
    )


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """A stopped run keeps its handlers installed (cli's exit path asks them); put them back after."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture(scope="module")
def tutorial_run(tmp_path_factory, data_root):
    """The tutorial's recipe (per-sample torch loader), 2 epochs, trained in this process."""
    run_dir = tmp_path_factory.mktemp("inprocess") / "tutorial"
    return run_dir, train(config(data_root, run_dir, "--train.epochs=2"))


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_writes_the_run_folder(tutorial_run):
    run_dir, summary = tutorial_run
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"best.pt", "model", "last", "config.json", "metrics.jsonl", "test_metrics.json"}, names
    rows = read_metrics(run_dir / "metrics.jsonl")
    # 400 training images (the 80 % of 500), batch 16: 25 steps an epoch, the last batch full
    assert [(r["epoch"], r["step"], r["train_samples"]) for r in rows] == [(1, 25, 400), (2, 50, 400)]
    assert all(r["val_samples"] == 100 for r in rows)
    assert json.loads((run_dir / "test_metrics.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["num_samples"] == 101 and summary["epochs"] == 2 and summary["steps"] == 50
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    assert ckpt["epoch"] == summary["best_epoch"]
    assert ckpt["val_metrics"]["val_loss"] == min(r["val_loss"] for r in rows) == summary["best_val_loss"]
    assert json.loads((run_dir / "config.json").read_text()) == ckpt["config"]
    assert json.loads((run_dir / "model" / "config.json").read_text())["architecture"] == "tutorial_cnn"


def test_provenance_is_one_record_in_best_pt_and_the_model_folder(tutorial_run):
    run_dir, _ = tutorial_run
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    training = json.loads((run_dir / "model" / "config.json").read_text())["training"]
    for k in ("versions", "git", "command"):
        assert training[k] == ckpt[k], k
    assert ckpt["versions"]["torch"] == torch.__version__ and "commit" in ckpt["git"]


def test_a_run_folder_that_holds_a_run_is_refused_unchanged(tutorial_run, data_root):
    run_dir, _ = tutorial_run
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        train(config(data_root, run_dir, "--train.epochs=2"))
    assert snapshot(run_dir) == before


def test_checkpoints_and_folders_written_under_the_old_names_still_load(tmp_path, tutorial_run):
    # Before issue 23 the tutorial's network was `seed_cnn` (class SeedCNN) and its preset `seed`.
    from cifar_dist.artifacts.run_dir import RunDir
    from cifar_dist.config import from_dict
    from cifar_dist.export import build_model_from_checkpoint, load_checkpoint, load_model, write_model_folder
    from cifar_dist.models import SeedCNN, TutorialCNN

    ckpt = load_checkpoint(tutorial_run[0])
    assert ckpt["model"]["name"] == "tutorial_cnn"
    ckpt["model"]["name"], ckpt["config"]["model"]["name"], ckpt["config"]["preset"] = "seed_cnn", "seed_cnn", "seed"
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / "best.pt")
    write_model_folder(RunDir(old), ckpt)
    assert json.loads((old / "model" / "config.json").read_text())["architecture"] == "seed_cnn"
    for model in (load_model(old / "best.pt"), load_model(old / "model"), SeedCNN.from_pretrained(old / "model")):
        assert isinstance(model, TutorialCNN)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["model_state"].items())
    assert isinstance(build_model_from_checkpoint(load_checkpoint(old)), TutorialCNN)
    cfg = from_dict(load_checkpoint(old / "model")["config"])
    assert (cfg.preset, cfg.model.name) == ("tutorial", "tutorial_cnn")


def stop_after_epoch(n: int, sig: int):
    """An after_epoch hook that sends this process `sig` at the end of epoch n, as SLURM or scancel
    would: the loop sees it at the next step boundary."""

    def hook(epoch, row, evaluate_split) -> bool:
        if epoch == n:
            os.kill(os.getpid(), sig)
        return False

    return hook


def test_a_stop_request_saves_the_state_and_reports_the_exit_status(tmp_path, data_root):
    run_dir = tmp_path / "run"
    out = train(config(data_root, run_dir, "--train.epochs=3"), after_epoch=stop_after_epoch(1, signal.SIGUSR1))
    # Stopped at the first step boundary after the signal (step 26: epoch 2's first), not by SystemExit.
    assert out == {"stopped_at_step": 26, "exit_code": 0}
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]
    assert (run_dir / "last" / "custom_checkpoint_0.pkl").exists() and not (run_dir / "test_metrics.json").exists()
    # --resume continues at that step and finishes the run.
    summary = train(config(data_root, run_dir, "--train.epochs=3", "--train.resume=true"))
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 25), (2, 50), (3, 75)]
    assert summary["epochs"] == 3 and summary["steps"] == 75 and summary["num_samples"] == 101


def test_sigterm_reports_143(tmp_path, data_root):
    out = train(
        config(data_root, tmp_path / "run", "--train.epochs=2"), after_epoch=stop_after_epoch(1, signal.SIGTERM)
    )
    assert out == {"stopped_at_step": 26, "exit_code": 143}


def test_tensor_loader_run_and_evaluate_py_report_the_same_test(tmp_path, data_root, capsys):
    """tutorial_fast: the tensor loader with crop/flip augmentation, channels_last, flip TTA. evaluate.py's
    entry function, in this process, measures the best model exactly as the run's own test did."""
    from cifar_dist.cli.main import _eval, run_cli

    run_dir = tmp_path / "fast"
    summary = train(
        config(data_root, run_dir, "--train.epochs=1", "--train.eval_every_epochs=1", preset="tutorial_fast")
    )
    rows = read_metrics(run_dir / "metrics.jsonl")
    # 400 images, batch 128: 3 full steps (the tensor loader drops the ragged tail, 16 images)
    assert [(r["step"], r["train_samples"]) for r in rows] == [(3, 384)]
    capsys.readouterr()
    assert run_cli(_eval, ["--checkpoint", str(run_dir), "--json", str(tmp_path / "eval.json")]) == 0
    printed = capsys.readouterr().out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for k in ("loss", "accuracy", "num_samples", "per_class", "confusion"):
        assert evaluated[k] == summary[k], k
    assert f"Test Loss: {summary['loss']:.6f}" in printed and "Test Accuracy (Overall)" in printed


def test_the_command_line_entry_returns_its_status(tmp_path, capsys):
    from cifar_dist.cli.main import _train, run_cli

    assert run_cli(_train, ["--preset", "seed_fast", "--print-config"]) == 0  # the old name still runs
    assert "preset: tutorial_fast" in capsys.readouterr().out
    assert run_cli(_train, ["--optim.lr=-1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: optim.lr=-1.0 must be > 0"]


def test_python_m_cifar_dist_takes_train_and_eval(tmp_path):
    """`python -m cifar_dist` (cifar_dist/__main__.py): train by default, `eval` as its first word; and
    `python -m cifar_dist.export` / `.wandb_records`."""
    import subprocess
    import sys

    from helpers import REPO, base_env

    def main(*args):
        return subprocess.run(
            [sys.executable, "-m", "cifar_dist", *args], cwd=REPO, env=base_env(), capture_output=True, text=True
        )

    p = main("--preset", "seed", "--print-config")  # no subcommand: train
    assert p.returncode == 0 and "name: tutorial_cnn" in p.stdout, p.stderr
    p = main("eval", "--checkpoint", str(tmp_path / "nothing"))
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: checkpoint "), p.stderr
    # The commands of the export and wandb_records packages (their __main__.py) leave through cli too.
    for module, line in (("export", "error: checkpoint "), ("wandb_records", "error: no run-*.wandb file under ")):
        cmd = [sys.executable, "-m", f"cifar_dist.{module}", str(tmp_path / "nothing")]
        p = subprocess.run(cmd, cwd=REPO, env=base_env(), capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith(line)
