"""Fixtures shared by the tests: small synthetic CIFAR-10 sets written once per session, and one trained
run for read-only tests. The helpers themselves are in helpers.py (`from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL, run, synthetic_root, train_cmd


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps one AcceleratorState per process, and a second Accelerator with another precision
    raises. In-process tests train with different ones (`auto` is bf16 on a CPU with bf16 units), so each
    test starts without it, as Accelerate's own AccelerateTestCase does in its tearDown."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def data_root_medium(tmp_path_factory) -> Path:
    """The synthetic CIFAR-10 that MEDIUM names (2,000 training, 101 test images)."""
    return synthetic_root(tmp_path_factory, 2000, 101)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The small synthetic CIFAR-10 that SMALL names (500 training, 101 test images)."""
    return synthetic_root(tmp_path_factory, 500, 101)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root) -> Path:
    """One 2-epoch single-process run on the small synthetic set, shared by read-only tests."""
    run_dir = tmp_path_factory.mktemp("runs") / "shared"
    run(
        train_cmd(
            *SMALL, f"--data.root={data_root}", "--train.epochs=2", f"--run.dir={run_dir}", "--run.progress=false"
        ),
        check=True,
    )
    return run_dir
