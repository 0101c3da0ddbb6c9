"""The OpenMP wait policy of a training or evaluation process, chosen by the entry points (train.py,
evaluate.py, `python -m cifar_dist`, the console scripts), never on import: a library leaves its
host's environment alone.

    from cifar_dist.distributed.wait_policy import choose_wait_policy
    choose_wait_policy()   # before torch is imported: OpenMP reads OMP_WAIT_POLICY once, at start

What a user's own `OMP_WAIT_POLICY` says always wins. The trade-off (idle threads spin or sleep,
quiet cores against shared ones) is measured by `benchmarks/wait_policy.py`; the figures are in
docs/performance.md.
"""

from __future__ import annotations

import os

# The one place to change the default: "PASSIVE", "ACTIVE", or None (leave it unset: GNU OpenMP
# spins briefly, then sleeps).
DEFAULT = "ACTIVE"

# On a GPU machine: spinning CPU threads (one pool per rank, 8 ranks on a node) compete with the threads that
# launch the GPU's kernels, and a GPU run's CPU threads have little to do; they sleep.
GPU_DEFAULT = "PASSIVE"
NVIDIA_DRIVER = "/proc/driver/nvidia/version"

_chosen_here = False


def gpu_machine(env=None, driver: str = NVIDIA_DRIVER) -> bool:
    """Whether this process is likely to train on a GPU, decided before torch is imported (so without CUDA):
    CUDA_VISIBLE_DEVICES names devices, SLURM granted GPUs, or an NVIDIA driver is loaded."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    if env.get("SLURM_GPUS_ON_NODE", "").strip() not in ("", "0"):
        return True
    return os.path.exists(driver)


def choose_wait_policy(argv=None) -> None:
    """Set OMP_WAIT_POLICY to DEFAULT, or GPU_DEFAULT on a GPU machine unless the command line says
    --train.device=cpu (read now, so a benchmark may try another), unless the environment already has one."""
    global _chosen_here
    on_cpu = any(a in ("--train.device=cpu",) for a in (argv or []))
    policy = GPU_DEFAULT if gpu_machine() and not on_cpu else DEFAULT
    if "OMP_WAIT_POLICY" not in os.environ and policy is not None:
        os.environ["OMP_WAIT_POLICY"] = policy
        _chosen_here = True


def describe_wait_policy() -> str:
    """For the start line: the policy this process runs with, and who chose it."""
    value = os.environ.get("OMP_WAIT_POLICY")
    if value is None:
        return "OMP_WAIT_POLICY unset"
    return f"OMP_WAIT_POLICY {value} ({'cifar-dist default' if _chosen_here else 'from the environment'})"
