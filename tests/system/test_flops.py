"""Training compute counted in every run (issue 25): flops.train_flops_per_image against hand counts of
the layers, its lack of side effects, and the figures a run records.

    python -m pytest tests/system/test_flops.py
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SMALL, read_metrics, run, train_cmd

from cifar_dist.models import build_model
from cifar_dist.models.flops import pflops, train_flops_per_image


def conv(c_in: int, c_out: int, k: int, side_out: int) -> int:
    """Forward FLOPs of a convolution: 2 per multiply-add."""
    return 2 * c_in * c_out * k * k * side_out * side_out


def test_tutorial_cnn_costs_what_its_layers_add_up_to():
    # forward: conv1 3→16 at 32², conv2 16→32 at 16², conv3 32→64 at 8², fc1 1024→500, fc2 500→10
    forward = conv(3, 16, 3, 32) + conv(16, 32, 3, 16) + conv(32, 64, 3, 8) + 2 * 1024 * 500 + 2 * 500 * 10
    assert forward == 6_637_328  # FACTS: 6.64 MFLOP forward
    # backward: a weight gradient for every layer (= its forward), an input gradient for all but the
    # first (the images need none)
    conv1 = conv(3, 16, 3, 32)
    training = 3 * forward - conv1
    assert training == 19_027_248  # FACTS: 0.019 GFLOP per training image
    assert train_flops_per_image(build_model("tutorial_cnn", 3, 32, 10), 3, 32) == training


@pytest.mark.parametrize("width", [16, 32])
def test_airbench_costs_what_its_layers_add_up_to(width):
    w1, w2 = width, 4 * width
    stem = conv(3, 24, 2, 31)  # 2×2, no padding: 32 → 31
    body = (
        conv(24, w1, 3, 31) + conv(w1, w1, 3, 15)  # group 1, pooled to 15 between its convs
        + conv(w1, w2, 3, 15) + conv(w2, w2, 3, 7)
        + conv(w2, w2, 3, 7) + conv(w2, w2, 3, 3)
        + 2 * w2 * 10  # the head
    )  # fmt: skip
    net = build_model("airbench", 3, 32, 10, width=width)
    assert train_flops_per_image(net, 3, 32) == 2 * stem + 3 * body
    net.whiten.weight.requires_grad_(False)  # model.whiten freezes it: no backward through the stem at all
    assert train_flops_per_image(net, 3, 32) == stem + 3 * body


def test_counting_changes_neither_the_model_nor_the_random_streams():
    torch.manual_seed(0)
    net = build_model("tutorial_cnn_bn", 3, 32, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    train_flops_per_image(net, 3, 32)
    assert torch.equal(torch.get_rng_state(), rng)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included
    assert all(p.grad is None for p in net.parameters())


def test_pflops():
    assert pflops(0.708e9, 500_000) == pytest.approx(0.354)  # airbench94's shape, 10 epochs of 50,000


@pytest.mark.slow
def test_a_run_records_its_compute(tmp_path, data_root):
    """metrics.jsonl per epoch, test_metrics.json and the model card: FLOPs per image × images trained."""
    run_dir = tmp_path / "r"
    run(
        train_cmd(
            *SMALL,
            f"--data.root={data_root}",
            "--preset=tutorial_fast",
            "--train.epochs=2",
            "--train.eval_every_epochs=1",
            f"--run.dir={run_dir}",
            "--run.progress=false",
            "--tracking.backend=none",
        ),
        check=True,
    )
    rows = read_metrics(run_dir / "metrics.jsonl")
    per_image = 19_027_248  # the tutorial's layers, counted by hand above
    for r in rows:
        assert r["train_flops_per_image"] == per_image
        assert r["train_pflops"] == pytest.approx(per_image * r["step"] * 128 / 1e15)
    assert rows[1]["train_pflops"] == pytest.approx(2 * rows[0]["train_pflops"])
    test = json.loads((run_dir / "test_metrics.json").read_text())
    assert test["train_pflops"] == rows[-1]["train_pflops"] and test["train_flops_per_image"] == per_image
    card = (run_dir / "model" / "README.md").read_text()
    assert f"training compute: {rows[-1]['train_pflops']:.4g} PFLOP" in card


@pytest.mark.slow
def test_frontier_counts_each_presets_compute_and_draws_the_figure(tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    png = tmp_path / "frontier.png"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "frontier.py"), "--figure", str(png)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    # resnet_fast on photos: width 16, 26 epochs of 40,000 // 256 = 156 steps of 256 images
    per_image = train_flops_per_image(build_model("resnet_fast", 3, 32, 10, width=16), 3, 32)
    line = next(s for s in p.stdout.splitlines() if s.startswith("| resnet_fast |"))
    assert f"| {26 * 156 * 256:,} | {pflops(per_image, 26 * 156 * 256):.4g} |" in line
    # fast: airbench width 32 with its whitening stem frozen, 26 epochs of 50,000 // 512 = 97 steps of 512
    net = build_model("airbench", 3, 32, 10, width=32)
    net.whiten.weight.requires_grad_(False)
    line = next(s for s in p.stdout.splitlines() if s.startswith("| fast "))
    assert f"| {26 * 97 * 512:,} | {pflops(train_flops_per_image(net, 3, 32), 26 * 97 * 512):.4g} |" in line
    assert "| airbench94 (published) | — | — | 0.36 | 0.9401 | published |" in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
