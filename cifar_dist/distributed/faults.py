"""What a run does when something outside the code fails: a write that hits a full or read-only
disk, a rank that dies. Each ends in one line (the leftovers of an interrupted write: run_dir.clean_stale).

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

from ..errors import first_line


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    # gloo prefixes its messages with its source location: "[/__w/.../pair.cc:561] Connection closed ..."
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", str(exc).strip())
    return first_line(text, 120) if text else type(exc).__name__


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
    return (
        f"could not write {what} to {path} ({_reason(exc)}; {where}); {fix}, then continue with "
        f"--resume: {kept} is untouched"
    )


# What gloo, NCCL and the c10d store say when the process at the other end of a collective is gone
# or silent (measured with gloo: a SIGKILLed peer gives "Connection reset by peer" within ~1 s; a
# stopped one, after train.dist_timeout_s, "Timed out waiting ..." or "Application timeout caused
# pair closure"; NCCL, from PyTorch's and NCCL's messages: "remote process exited or there was a network
# error" (ncclRemoteError) and the watchdog's "Watchdog caught collective operation timeout").
_PEER_SIGNS = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "timed out",
    "application timeout caused pair closure",
    "watchdog caught collective operation timeout",
    "remote process exited",
    "ncclremoteerror",
)
# What NCCL says when it cannot work at all: a setting or the network, not a dead peer (before issue 27 any
# message naming "nccl", "socket" or "timeout" read as one). NCCL_SOCKET_IFNAME naming an interface the
# machine lacks gives "Bootstrap : no socket interface found" (ncclInternalError) or "... is neither AF_INET(2)
# nor AF_INET6(10)"; an unreachable address "socketStartConnect: Connect to ... failed : No route to host"
# (ncclSystemError).
_SETUP_SIGNS = (
    "no socket interface found",
    "neither af_inet",
    "no route to host",
    "ncclinvalidusage",
    "ncclinvalidargument",
    "ncclinternalerror",
    "ncclsystemerror",
    "ncclunhandledcudaerror",
    "unhandled cuda error",
    "invalid usage",
)


def classify_collective_failure(text: str, dist_error: bool = False) -> str | None:
    """A failed collective's message -> "setup" (NCCL cannot work here: interface, network, CUDA), "peer"
    (another rank died or hung), "backend" (NCCL failed for a reason not known here) or None (not a
    collective's failure). Pure, so it is tested on the libraries' real messages."""
    text = text.lower()
    if any(s in text for s in _SETUP_SIGNS):
        return "setup"
    if any(s in text for s in _PEER_SIGNS):
        return "peer"
    if "nccl" in text:
        return "backend" if dist_error or "nccl error" in text else None
    return "peer" if dist_error else None


def _nccl_reason(exc: BaseException) -> str:
    """NCCL's own cause sits on the line after "Last error:"; PyTorch's first line names only the call site."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.lower().startswith("last error"):
            return f"{first_line(lines[0], 80)} ... {first_line(lines[i + 1], 120)}"
    return _reason(exc)


def peer_failure(exc: BaseException) -> str | None:
    """If `exc` is a collective that failed because another rank died or hung, or because NCCL cannot
    communicate here, one line saying so; else None. Only meaningful once a process group exists."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    kind = classify_collective_failure(str(exc), isinstance(exc, dist.DistError))
    if kind is None or not isinstance(exc, (RuntimeError, dist.DistError)):
        return None
    rank, world = dist.get_rank(), dist.get_world_size()
    if kind != "peer":
        return (
            f"rank {rank} of {world}: NCCL could not run a collective ({_nccl_reason(exc)}); check that "
            f"NCCL_SOCKET_IFNAME names an interface every machine has (ip -br addr) and that the machines reach "
            f"each other, rerun with NCCL_DEBUG=INFO to see NCCL's choice; the last complete state is kept"
        )
    # With two ranks the silent one is the other; with more, only the launcher knows which one went first.
    who = f"rank {1 - rank}" if world == 2 else "another rank (the launcher's summary names it)"
    return (
        f"rank {rank} of {world}: {who} died, hung or became unreachable during a collective "
        f"({_reason(exc)}); this rank stops too and saved nothing after that point; fix the cause, then "
        f"continue with --resume from the last complete state"
    )
