"""tracking.backend=tensorboard and mlflow: a 2-process run writes one run, and the files read back
with the libraries' own readers hold the config, the per-epoch metrics and the test results that
test_metrics.json holds."""

from __future__ import annotations

import json

import pytest
from helpers import SMALL, accelerate_cmd, base_env, run, train_cmd

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard")


def _train(run_dir, data_root, backend, *extra, env=None):
    return run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--train.epochs=2",
            "--train.log_every_steps=5",
            f"--tracking.backend={backend}",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            *extra,
            launch=accelerate_cmd(),
        ),
        env=env,
        check=True,
    )


@pytest.mark.slow
def test_tensorboard_event_files_hold_metrics_config_and_test(tmp_path, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    _train(run_dir, data_root, "tensorboard")
    folders = {p.parent for p in (run_dir / "tensorboard").rglob("events.out.tfevents.*")}
    main = run_dir / "tensorboard" / "cifar-dist"
    assert main in folders  # one run (add_hparams writes its own sub-folder beside it)
    acc = EventAccumulator(str(main)).Reload()
    tags = acc.Tags()["scalars"]
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert acc.Scalars("test/accuracy")[-1].value == pytest.approx(test["accuracy"])
    assert acc.Scalars("test/loss")[-1].value == pytest.approx(test["loss"])
    assert [e.step for e in acc.Scalars("epoch/val_loss")] == [e.step for e in acc.Scalars("epoch/epoch")]
    assert len(acc.Scalars("epoch/val_loss")) == 2 and "train/loss" in tags and "best/epoch" in tags
    assert any(t.startswith("test/per_class/") for t in tags)
    (hparams_file,) = main.rglob("hparams.yml")  # Accelerate writes it beside add_hparams' own folder
    hparams = hparams_file.read_text()
    assert "optim.lr: 0.01" in hparams and "job.world_size: 2" in hparams


@pytest.mark.slow
def test_mlflow_file_store_holds_metrics_params_test_and_model(tmp_path, data_root, monkeypatch):
    pytest.importorskip("mlflow", reason="the dev extra installs mlflow")
    run_dir = tmp_path / "run"
    env = base_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    _train(run_dir, data_root, "mlflow", env=env)
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when asked to

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1  # one run per job, whatever the number of processes
    r = runs[0]
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert r.data.metrics["test/accuracy"] == pytest.approx(test["accuracy"])
    assert r.data.params["optim.lr"] == "0.01" and r.data.params["job.world_size"] == "2"
    assert len(client.get_metric_history(r.info.run_id, "epoch/val_loss")) == 2
    assert "best.pt" in [a.path for a in client.list_artifacts(r.info.run_id)]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["tracking"]["backend"] == "mlflow"
