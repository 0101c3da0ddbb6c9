"""Preparing data files once when several independent jobs share a data folder.

    from cifar_dist.prepare import build_once
    folder = build_once(Path("data/cache/x"), write_files_into, what="the image cache", fix="set --data.cache_dir")

A sweep or a SLURM array starts several jobs at once on one data folder, often on a shared
filesystem; `main_process_first` only orders the ranks of one job. Every preparation step (the
CIFAR download and unpacking, the synthetic files, Fashion-MNIST's decompression, the image-folder
cache and unpacked archives) goes through `build_once`:

- a cross-process lock (`filelock`, next to the target as `.<name>.lock`): one job builds, the
  others wait for the lock, then find the finished folder and read it;
- the builder writes into a temporary folder of its own and renames it into place (`os.replace` of
  a folder is atomic within one filesystem); a `.complete` marker is written last, inside it, so a
  folder is either absent or whole;
- a job killed halfway leaves only its temporary folder (its lock dies with it), which the next
  builder removes before building again: nothing a later job could take for finished data.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError

COMPLETE = ".complete"


def has_marker(folder: Path) -> bool:
    return (folder / COMPLETE).is_file()


@contextmanager
def locked(target: Path, what: str, fix: str) -> Iterator[None]:
    """Hold the cross-process lock that guards `target` (blocks while another job holds it)."""
    from filelock import FileLock

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(target.parent / f".{target.name}.lock")
        lock.acquire()
    except OSError as e:
        raise UserError(f"cannot write {what} in {target.parent} ({e.strerror or e}); {fix}") from None
    try:
        yield
    finally:
        lock.release()


def build_once(
    target: Path, build: Callable[[Path], None], what: str, fix: str, is_complete: Callable[[Path], bool] = has_marker
) -> Path:
    """Return `target` complete, built at most once across processes by `build(tmp)`, which fills
    the empty folder `tmp` with what `target` must hold. `is_complete` may accept folders made
    before markers existed (torchvision's md5 check, files that are written whole)."""
    if is_complete(target):
        return target
    with locked(target, what, fix):
        if is_complete(target):  # another job built it while this one waited for the lock
            return target
        # We hold the lock, so no temporary folder belongs to a live builder: they are a killed job's.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = target.parent / f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}"
        try:
            tmp.mkdir()
        except OSError as e:
            raise UserError(f"cannot write {what} in {target.parent} ({e.strerror or e}); {fix}") from None
        try:
            build(tmp)
            (tmp / COMPLETE).write_text("written last: everything else in this folder is whole\n")
            if target.exists():  # incomplete or corrupt (it failed is_complete): replaced only now that tmp is whole
                shutil.rmtree(target)
            os.replace(tmp, target)
        except OSError as e:  # builders raise UserError for what they know (a bad file, no network)
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(f"preparing {what} in {target.parent} failed ({e.strerror or e}); {fix}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
