"""tests/unit/: tests that start no process and train nothing, in seconds (`python -m pytest tests/unit`).
tests/system/ holds the rest: training runs, launchers, SLURM, network namespaces. The fixtures and
helpers of tests/conftest.py and tests/helpers.py serve both."""

from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def no_process_started(monkeypatch):
    """What makes a unit test: starting a process here fails, so a slow test cannot creep in."""

    def refuse(*args, **kwargs):
        raise AssertionError("a unit test starts no process: move it to tests/system/")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
