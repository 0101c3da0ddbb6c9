"""train.ema_decay: the EMA of weights and BatchNorm buffers (cifar_dist/optim/ema.py), and that a run
with it validates, saves, tests and exports the EMA network, saying so. Its exact resume is in
tests/system/test_resume_exact.py (one process, mid-epoch) and tests/system/test_own_model.py (2 processes with
BatchNorm, where the ranks' buffers must be averaged for the EMA to agree everywhere)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from helpers import SMALL, eval_cmd, read_metrics, run, train_cmd
from torch import nn

from cifar_dist.optim.ema import EMA


def test_update_is_the_exponential_average_of_weights_and_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = EMA(net, 0.9, Accelerator(cpu=True))
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(8, 3, 10, 10))  # moves the BatchNorm running statistics and the counter
    ema.update(net)
    now = net.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * start[k] + 0.1 * now[k]), k
        else:
            assert torch.equal(v, now[k]), k  # num_batches_tracked is copied
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    restored = EMA(net, 0.9, Accelerator(cpu=True))
    restored.load_state_dict(ema.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values())
    )


@pytest.mark.slow
def test_a_run_validates_saves_and_exports_the_ema(tmp_path, data_root):
    run_dir = tmp_path / "run"
    args = [*SMALL, f"--data.root={data_root}", "--model.name=seed_cnn_bn", "--train.ema_decay=0.9"]
    out = run(
        train_cmd(*args, "--train.epochs=1", f"--run.dir={run_dir}", "--run.progress=false", "--tracking.backend=none"),
        check=True,
    ).stdout
    assert "EMA of the weights, decay 0.9" in out
    from safetensors.torch import load_file

    best = torch.load(run_dir / "best.pt", weights_only=True)
    ema = torch.load(run_dir / "last" / "custom_checkpoint_1.pkl", weights_only=False)["module"]
    trained = load_file(run_dir / "last" / "model.safetensors")
    assert all(torch.equal(best["model_state"][k], ema[k]) for k in ema)
    assert not all(torch.equal(best["model_state"][k], trained[k]) for k in trained)
    assert best["weights"] == "ema 0.9"
    conf = json.loads((run_dir / "model" / "config.json").read_text())
    assert (
        conf["training"]["weights"] == "ema 0.9" and "weights: ema 0.9" in (run_dir / "model" / "README.md").read_text()
    )
    exported = load_file(run_dir / "model" / "model.safetensors")
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    # The epoch's validation loss is the EMA network's: evaluate.py on best.pt gives the same number,
    # and the run's test is that network's test.
    row = read_metrics(run_dir / "metrics.jsonl")[0]
    val = tmp_path / "val.json"
    run(eval_cmd(f"--checkpoint={run_dir}", "--split=val", f"--json={val}"), check=True)
    assert json.loads(val.read_text())["loss"] == row["val_loss"]
    test = tmp_path / "test.json"
    run(eval_cmd(f"--checkpoint={run_dir}", f"--json={test}"), check=True)
    assert (
        json.loads(test.read_text())["accuracy"] == json.loads((run_dir / "test_metrics.json").read_text())["accuracy"]
    )
    # The row also holds the trained (non-EMA) weights' validation: the EMA never steers training, so
    # those equal a run without the EMA, and the EMA's gain is read off one run.
    off_dir = tmp_path / "off"
    off_args = [*args[:-1], "--train.epochs=1", f"--run.dir={off_dir}", "--run.progress=false"]
    run(train_cmd(*off_args, "--tracking.backend=none"), check=True)
    off = read_metrics(off_dir / "metrics.jsonl")[0]
    assert "val_loss_raw" not in off
    assert (row["val_loss_raw"], row["val_accuracy_raw"]) == (off["val_loss"], off["val_accuracy"])
    assert row["val_loss_raw"] != row["val_loss"]
