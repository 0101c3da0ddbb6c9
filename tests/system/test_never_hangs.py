"""No test can stall the suite: a planted hanging test fails by its deadline, with its name, and the tests
after it still run. The real plugin (tests/timeouts.py over pytest-timeout) in a real pytest process.

    python -m pytest tests/system/test_never_hangs.py
"""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, base_env

PLANTED = """
import subprocess, sys

def test_a_child_that_never_answers():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE)
    try:
        child.stdout.read()  # waits for the child's output: forever
    finally:
        child.kill()

def test_after_the_hang():
    assert True
"""


def test_a_planted_hanging_test_fails_by_timeout_and_the_suite_goes_on(tmp_path):
    (tmp_path / "test_planted.py").write_text(PLANTED)
    env = base_env(PYTHONPATH=f"{REPO / 'tests'}:{REPO}", CIFAR_DIST_QUICK_TIMEOUT_S="3")
    cmd = [sys.executable, "-m", "pytest", "-p", "timeouts", "-p", "no:cacheprovider", "-q", "-rf", str(tmp_path)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]
    assert "FAILED test_planted.py::test_a_child_that_never_answers" in out and "Timeout" in out, out[-3000:]
    assert "1 failed, 1 passed" in out, out[-3000:]
