"""Calls with a deadline: a library call that may never return (wandb's teardown, whose service died
with the same Ctrl-C, waits on a thread forever) runs in a daemon thread, and the caller gives up on it
after `seconds`. A call given up on is remembered, so the process leaves without running exit hooks
that would wait on the same dead peer (cli.exit_process asks `abandoned()`).

    from cifar_dist.tracking.deadline import finished_within
    if not finished_within(wandb.teardown, 8.0, "wandb teardown"):
        ...  # still waiting after 8 s: go on without it
"""

from __future__ import annotations

import threading

_abandoned: list[str] = []  # names of the calls that outran their deadline in this process


def finished_within(fn, seconds: float, name: str) -> bool:
    """Run fn() in a daemon thread and wait at most `seconds`. True when it returned (or raised: its
    exception is swallowed, the caller only learns that it ended); False when it is still running or a
    KeyboardInterrupt (a second Ctrl-C) cut the wait. A daemon thread never keeps the process alive."""
    done = threading.Event()

    def call() -> None:
        try:
            fn()
        except BaseException:  # noqa: BLE001, S110 - the caller asked only whether it ended
            pass
        finally:
            done.set()

    threading.Thread(target=call, name=name, daemon=True).start()
    try:
        ended = done.wait(seconds)
    except KeyboardInterrupt:  # the user asked twice: stop waiting now
        ended = False
    if not ended:
        _abandoned.append(name)
    return ended


def abandoned() -> list[str]:
    """The calls this process gave up on: its exit hooks may wait on the same dead peer, so skip them."""
    return list(_abandoned)
