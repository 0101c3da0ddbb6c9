"""What a run does when something outside the code fails: a write that hits a full or read-only
disk, a rank that dies, the leftovers of a write that a crash interrupted. Each ends in one line.

    from cifar_dist.faults import write_failure, peer_failure
    try:
        save()
    except Exception as e:
        raise UserError(write_failure("the training state", path, e, kept="run/last (step 40)"))

The guarantees these serve are listed in the README, "What happens when things go wrong".
"""
from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

# Leftovers of an interrupted write: `last.tmp-<step>/` (Checkpointer.save_state) and
# `.<name>.tmp<pid>` (atomic_write_bytes). Neither is ever read; both can be large.
STALE_PATTERNS = ("last.tmp-*", ".*.tmp[0-9]*")


def clean_stale(run_dir: Path) -> list[Path]:
    """Delete what interrupted writes left in run_dir (main process only); returns what it removed."""
    removed = []
    for pattern in STALE_PATTERNS:
        for p in Path(run_dir).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def make_run_dir(run_dir: Path) -> None:
    """`mkdir -p run_dir`, undone at exit when the run saved nothing there: a run that fails before
    its first saved state (data that will not load, a bad resume, a loss that blows up) leaves no
    folder behind, while a folder it did not create stays exactly as it was. The check runs from
    atexit, registered before W&B registers its own teardown, so it comes after that teardown has
    written its last file (atexit runs newest first; exit_process runs it too)."""
    import atexit

    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    if created:
        atexit.register(_remove_if_nothing_saved, run_dir, created)


def _remove_if_nothing_saved(run_dir: Path, created: list[Path]) -> None:
    if (run_dir / "best.pt").exists() or any((run_dir / p / "custom_checkpoint_0.pkl").exists()
                                             for p in ("last", "last.old")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in created[1:]:  # only while empty: another job may have started in it meanwhile
        try:
            parent.rmdir()
        except OSError:
            break


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # gloo prefixes its messages with its source location: "[/__w/.../pair.cc:561] Connection closed ..."
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", str(exc).strip())
    return (text.splitlines()[0][:120] if text else type(exc).__name__)


def _free_bytes(path: Path) -> int | None:
    for p in (Path(path), *Path(path).parents):  # the file itself may not exist (yet, or any more)
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def write_failure(what: str, path: Path, exc: BaseException, kept: str) -> str:
    """One line for a failed write. torch.save reports a full disk only as 'unexpected pos', and
    safetensors as its own error type, so the free space is measured and said rather than guessed
    from the exception."""
    free = _free_bytes(Path(path))
    where = f"{free / 2**20:.1f} MiB free there" if free is not None else "free space unknown"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable or choose another --run.dir"
    else:
        fix = "free space (or choose another --run.dir)"
    return (f"could not write {what} to {path} ({_reason(exc)}; {where}); {fix}, then continue with "
            f"--resume: {kept} is untouched")


# What gloo, NCCL and the c10d store say when the process at the other end of a collective is gone
# or silent (measured with gloo: a SIGKILLed peer gives "Connection reset by peer" within ~1 s; a
# stopped one, after train.dist_timeout_s, "Timed out waiting ..." or "Application timeout caused
# pair closure").
_PEER_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out",
               "timeout", "socket", "nccl", "gloo")


def peer_failure(exc: BaseException) -> str | None:
    """If `exc` is a collective that failed because another rank died or hung, one line saying so;
    else None. Only meaningful once a process group exists."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(exc).lower()
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(s in text for s in _PEER_SIGNS))):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    # With two ranks the silent one is the other; with more, only the launcher knows which one went first.
    who = f"rank {1 - rank}" if world == 2 else "another rank (the launcher's summary names it)"
    return (f"rank {rank} of {world}: {who} died, hung or became unreachable during a collective "
            f"({_reason(exc)}); this rank stops too and saved nothing after that point; fix the cause, then "
            f"continue with --resume from the last complete state")
