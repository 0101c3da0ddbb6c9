"""OMP_WAIT_POLICY is the entry points' choice, not an import's side effect: importing any module of
the package leaves os.environ as it was; a run chooses cifar_dist.distributed.wait_policy.DEFAULT when the
environment says nothing, keeps the user's value otherwise, and says which in its start line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, SMALL, base_env, run, train_cmd

from cifar_dist.distributed.wait_policy import DEFAULT, GPU_DEFAULT

IMPORT_ALL = """
import json, os, pkgutil, importlib
before = dict(os.environ)
import cifar_dist
names = [m.name for m in pkgutil.walk_packages(cifar_dist.__path__, "cifar_dist.") if not m.name.endswith("__main__")]
for name in names:  # every module, in every folder
    importlib.import_module(name)
after = dict(os.environ)
print(json.dumps({"modules": len(names), "changed": sorted(set(before.items()) ^ set(after.items()))}))
"""


def test_importing_the_package_leaves_the_environment_alone():
    env = base_env()
    env.pop("OMP_WAIT_POLICY")
    p = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["modules"] > 20 and result["changed"] == [], result


@pytest.mark.slow
@pytest.mark.parametrize("given", [None, "PASSIVE"], ids=["unset", "user-set"])  # PASSIVE: not the default
def test_a_run_chooses_the_default_unless_told_and_says_so(tmp_path, data_root, given):
    env = base_env()
    env.pop("OMP_WAIT_POLICY")
    if given:
        env["OMP_WAIT_POLICY"] = given
    cmd = train_cmd(*SMALL, f"--data.root={data_root}", f"--run.dir={tmp_path / 'r'}", "--train.epochs=1")
    p = run([*cmd, "--train.max_steps=2", "--run.progress=false"], env=env, check=True)
    [start] = [line for line in p.stdout.splitlines() if line.startswith("model ")]
    if given:
        assert f"OMP_WAIT_POLICY {given} (from the environment)" in start, start
    elif DEFAULT is None:
        assert "OMP_WAIT_POLICY unset" in start, start
    else:
        assert f"OMP_WAIT_POLICY {DEFAULT} (cifar-dist default)" in start, start


@pytest.mark.slow
def test_a_cpu_run_on_a_gpu_machine_keeps_the_cpu_default(tmp_path, data_root):
    """CUDA_VISIBLE_DEVICES names a device, so wait_policy.gpu_machine() judges this a GPU machine (index 99 is no
    GPU here, nor on a GPU machine), and the command line says --train.device=cpu: the run takes DEFAULT, not
    GPU_DEFAULT, because train.py hands its arguments to choose_wait_policy (issue 34)."""
    assert GPU_DEFAULT != DEFAULT  # else this run could not tell which one was chosen
    env = base_env(CUDA_VISIBLE_DEVICES="99")
    env.pop("OMP_WAIT_POLICY")
    cmd = train_cmd(*SMALL, f"--data.root={data_root}", f"--run.dir={tmp_path / 'r'}", "--train.epochs=1")
    p = run([*cmd, "--train.device=cpu", "--train.max_steps=2", "--run.progress=false"], env=env, check=True)
    [start] = [line for line in p.stdout.splitlines() if line.startswith("model ")]
    want = "OMP_WAIT_POLICY unset" if DEFAULT is None else f"OMP_WAIT_POLICY {DEFAULT} (cifar-dist default)"
    assert want in start, start
