"""On-disk state of containers: one folder per container, JSON files written atomically.

Layout under the state directory::

    pause.json               identity of the namespace-holder process (pid, start time)
    pause.sock               its control socket (0600)
    containers/NAME/
        launch.json          the resolved launch plan (spec + host paths), written at create
        run.json             the current run: init pid + start time, slirp pid, forwards
        exit.json            written by the container's init when the command exits
        output.log           the command's stdout and stderr
        slirp.sock           slirp4netns API socket; slirp.log its messages
        skel/  root/         mount-point skeleton and the root mount point

Processes are identified by pid *and* start time (``/proc/PID/stat`` field 22), so a
recycled pid is never taken for a container.
"""

from __future__ import annotations

import json
import os
import select
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = (
    "ProcessId",
    "close_fds_except",
    "proc_start_time",
    "read_json",
    "reap_children",
    "wait_readable",
    "write_json_atomic",
)


def write_json_atomic(path: Path, data: Any, *, dir_fd: int | None = None) -> None:
    """Write JSON to ``path`` with write, fsync, rename: readers see old or new, never half."""
    name = path.name if dir_fd is not None else str(path)
    tmp = f"{name}.tmp.{os.getpid()}"
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None if it is missing or unreadable as JSON."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return None


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process.

    A zombie counts as gone.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def wait_readable(fds: list[int], timeout: float | None) -> list[int]:
    """Those of ``fds`` that are readable within ``timeout`` seconds (``None``: no limit).

    ``poll``, not ``select``: the holder keeps namespace descriptors numbered above
    ``select``'s limit of 1024.
    """
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    wait_ms = None if timeout is None or timeout == float("inf") else max(0, int(timeout * 1000))
    return [fd for fd, _ in poller.poll(wait_ms)]


class ProcessId:
    """A process identity that survives pid reuse: (pid, start time)."""

    __slots__ = ("pid", "start_time")

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid = pid
        self.start_time = start_time

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start)

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: Any) -> ProcessId | None:
        if not isinstance(data, dict):
            return None
        pid, start = data.get("pid"), data.get("start_time")
        if not isinstance(pid, int) or not isinstance(start, int):
            return None
        return cls(pid, start)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start_time

    def send(self, signum: int) -> bool:
        """Send ``signum`` through a pidfd, so a recycled pid is never signalled; False if
        the process is gone."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        try:
            if not self.alive():  # checked after the pidfd pins the process
                return False
            signal.pidfd_send_signal(pidfd, signum)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(pidfd)

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the process has exited; True if it did within ``timeout``."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return True
        try:
            if self.alive():  # a pidfd is readable once the process has exited
                wait_readable([pidfd], timeout)
            return not self.alive()  # a zombie counts as gone
        finally:
            os.close(pidfd)

    def __repr__(self) -> str:
        return f"ProcessId(pid={self.pid}, start_time={self.start_time})"


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every descriptor above stdio except ``keep`` (close_range under the hood)."""
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def reap_children() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status
