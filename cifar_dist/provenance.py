"""Where a result came from, built once per run and written the same way everywhere it is kept
(best.pt, model/config.json, W&B's run config): library versions, the code's git commit, the command.

    from cifar_dist.provenance import collect
    collect()    # {"versions": {...}, "git": {"commit": ..., "dirty": ...}, "command": "train.py --preset ..."}
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def collect() -> dict:
    """The provenance of a run, built once (trainer) and written as it is into best.pt, model/config.json
    and the W&B run's config."""
    return {"versions": versions(), "git": git_state(), "command": command()}


def versions() -> dict:
    """The versions a result depends on (heavy imports: they are loaded by then anyway)."""
    import accelerate
    import torch
    import torchvision

    try:
        wandb = metadata.version("wandb")  # read from the installed metadata: no import of wandb
    except metadata.PackageNotFoundError:
        wandb = None
    return {
        "python": sys.version.split()[0],
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "accelerate": str(accelerate.__version__),
        "wandb": wandb,
        "cuda": torch.version.cuda,
    }


def command(argv: list[str] | None = None) -> str:
    """The command line that ran, quoted so a shell runs it again as it was."""
    return shlex.join(sys.argv if argv is None else argv)


def git_state(repo: Path | None = None) -> dict:
    """The commit of the code that runs, and whether tracked files differ from it."""
    repo = repo or Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown (git failed)", "dirty": None}
    return {"commit": commit or "unknown", "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
