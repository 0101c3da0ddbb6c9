"""Real images (issue 8): a short seed_fast run on Fashion-MNIST (Debian's dataset-fashion-mnist)
through benchmarks/accuracy.py must land well above chance on the real test split.

    OMP_NUM_THREADS=1 python -m pytest tests/test_accuracy.py
"""
import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, require, run

DEBIAN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.system
def test_short_fashion_mnist_run_is_far_above_chance(tmp_path):
    require(DEBIAN.exists(), "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "acc.json"
    # 100 steps of batch 128 = 12,800 of the 48,000 training images (no warm-up: the run is cut short
    # long before the epoch the warm-up spans), then the full 10,000-image test split
    p = run([sys.executable, str(REPO / "benchmarks" / "accuracy.py"), "--preset", "seed_fast", "--data.name", "fashion_mnist",
             f"--data.root={tmp_path / 'data'}", "--train.epochs=1", "--train.max_steps=100", "--optim.warmup_epochs=0", "--quiet",
             "--json", str(out)], timeout=400, check=True)
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("test_accuracy=") and " train_seconds=" in last
    result = json.loads(out.read_text())
    assert result["data"] == "fashion_mnist" and result["model"] == "seed_cnn"
    assert sum(c["total"] for c in result["per_class"].values()) == 10_000
    assert result["test_accuracy"] > 0.6, result["test_accuracy"]  # chance is 0.1
    assert float(last.split()[0].split("=")[1]) == pytest.approx(result["test_accuracy"], abs=1e-4)
