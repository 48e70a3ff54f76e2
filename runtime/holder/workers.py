"""Work the holder never waits for: a forked child does it and answers the client.

The holder is single-threaded; a command run in a container, a TCP probe or a restarted
slirp4netns can take seconds. For each such request it forks a *worker* that keeps only
the client's connection (and the descriptors it is given), does the work, writes the
reply and exits; the holder reaps it like any other child and serves the next request
at once. A client that gives up closes its connection; the worker's answer is dropped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterable

from runtime.holder.protocol import ErrorCode, Failure, Reply, encode
from runtime.util.processes import close_fds_except

__all__ = ("become_child", "fork_worker")


def become_child(keep: Iterable[int]) -> None:
    """What every child the holder forks does first: leave the holder's signal wake-up
    and SIGCHLD handling, and close every descriptor of the holder but ``keep``."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    close_fds_except(set(keep))


def fork_worker(
    conn: socket.socket, keep: Iterable[int], work: Callable[[], Reply], failure: ErrorCode
) -> int:
    """Fork a worker that runs ``work`` and answers on ``conn`` (the caller closes its
    copy); an exception becomes a ``failure`` reply. Returns the worker's pid."""
    worker = os.fork()
    if worker != 0:
        return worker
    try:
        become_child((conn.fileno(), *keep))
        reply = work()
    except BaseException as exc:  # a worker must never return into the holder
        reply = Failure(failure, f"{type(exc).__name__}: {exc}")
    with contextlib.suppress(BaseException):
        conn.sendall(encode(reply))
    os._exit(0)
