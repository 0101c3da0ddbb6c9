"""The OpenMP wait policy of a training or evaluation process, chosen by the entry points (train.py,
evaluate.py, `python -m cifar_dist`, the console scripts), never on import: a library leaves its
host's environment alone.

    from cifar_dist.wait_policy import choose_wait_policy
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

_chosen_here = False


def choose_wait_policy() -> None:
    """Set OMP_WAIT_POLICY to DEFAULT (read now, so a benchmark may try another) unless the
    environment already has one."""
    global _chosen_here
    if "OMP_WAIT_POLICY" not in os.environ and DEFAULT is not None:
        os.environ["OMP_WAIT_POLICY"] = DEFAULT
        _chosen_here = True


def describe_wait_policy() -> str:
    """For the start line: the policy this process runs with, and who chose it."""
    value = os.environ.get("OMP_WAIT_POLICY")
    if value is None:
        return "OMP_WAIT_POLICY unset"
    return f"OMP_WAIT_POLICY {value} ({'cifar-dist default' if _chosen_here else 'from the environment'})"
