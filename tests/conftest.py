"""Fixtures shared by the tests: small synthetic CIFAR-10 sets written once per session, and one trained
run for read-only tests. The helpers themselves are in helpers.py (`from helpers import ...`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# The suite never reads the machine's own state: `accelerate config default` (README command 1), a
# logged-in W&B, a Hugging Face token or an odd ~/.cache must not change a result. Set here, before any
# test module imports accelerate or wandb (Accelerate reads its default config's path at import), and
# inherited by every process a test starts. A test that wants a user's machine builds its own HOME.
_ISOLATED = Path(tempfile.mkdtemp(prefix="cifar-dist-tests-home-"))
for _name, _sub in {
    "HOME": "home",  # ~/.netrc (W&B credentials), ~/.cache, ~/.config
    "HF_HOME": "hf",  # Accelerate's default_config.yaml, the Hub token
    "XDG_CACHE_HOME": "cache",
    "XDG_CONFIG_HOME": "config",
    "WANDB_CONFIG_DIR": "wandb-config",  # wandb's settings file: api_key, base_url
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_DATA_DIR": "wandb-data",
    "NETRC": "netrc",  # W&B's credentials: a file that does not exist
}.items():
    os.environ[_name] = str(_ISOLATED / _sub)
for _name in [n for n in os.environ if n.startswith("ACCELERATE_") or n in ("WANDB_API_KEY", "HF_TOKEN")]:
    del os.environ[_name]

import pytest  # noqa: E402
from helpers import SMALL, run, synthetic_root, train_cmd  # noqa: E402

pytest_plugins = ["timeouts"]  # every test has a deadline (tests/timeouts.py)


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
