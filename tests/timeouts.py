"""Every test has a deadline, so one hung test fails with its name instead of stalling the suite (and CI's
90 minutes). A pytest plugin over pytest-timeout, loaded by conftest.py: a test marked `slow` gets
SLOW_TIMEOUT_S, any other QUICK_TIMEOUT_S; a test's own `@pytest.mark.timeout(N)` wins. The deadline
counts the test's fixtures too. The signal method (SIGALRM, pytest-timeout's default on Linux) fails the
test and lets the suite go on; each test's `finally` blocks then stop the processes it started.

    python -m pytest -p timeouts ...     # outside this folder's conftest (tests/system/test_never_hangs.py)
"""

from __future__ import annotations

import os

import pytest

# Generous: the slowest test takes about 3 minutes on 2 loaded cores; the quick tier's slowest fixture
# (one trained run in a subprocess) under a minute. The variables exist for test_never_hangs.
QUICK_TIMEOUT_S = float(os.environ.get("CIFAR_DIST_QUICK_TIMEOUT_S", "300"))
SLOW_TIMEOUT_S = float(os.environ.get("CIFAR_DIST_SLOW_TIMEOUT_S", "1200"))


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            seconds = SLOW_TIMEOUT_S if item.get_closest_marker("slow") else QUICK_TIMEOUT_S
            item.add_marker(pytest.mark.timeout(seconds, method="signal"))
