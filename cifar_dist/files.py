"""Atomic file writes: a reader sees the old file or the new one, never a mix.

from cifar_dist.files import atomic_write_bytes
atomic_write_bytes(path, data)     # temporary name, fsync, rename, fsync of the folder
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `.<name>.tmp<pid>` beside `path`, fsync it, rename it over `path`. A crash
    leaves the temporary name behind (run_dir.STALE_PATTERNS), never a half-written `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
