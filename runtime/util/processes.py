"""Processes and descriptors: identities that survive pid reuse, waiting, reaping, closing.

Processes are identified by pid *and* start time (``/proc/PID/stat`` field 22), so a
recycled pid is never taken for a container.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runtime.util.files import read_small

__all__ = (
    "ProcessId",
    "close_fds_except",
    "descendants",
    "parent_pids",
    "proc_start_time",
    "raise_fd_limit",
    "reap_children",
    "retitle",
    "wait_readable",
)


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if there is no such process.

    A zombie counts as gone.
    """
    try:
        raw = read_small(f"/proc/{pid}/stat")
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

    def name(self) -> str | None:
        """The program it runs (``comm``, at most 15 bytes), or None if it is gone."""
        try:
            comm = Path(f"/proc/{self.pid}/comm").read_text().rstrip("\n")
        except (FileNotFoundError, ProcessLookupError):
            return None
        return comm if self.alive() else None  # read, then checked still the same process

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


def parent_pids() -> dict[int, int]:
    """pid -> parent pid, of every process this ``/proc`` shows (as its namespace sees
    them)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                found[int(entry)] = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
    return found


def descendants(root: int, parent_of: dict[int, int] | None = None) -> list[int]:
    """Every process below ``root``, breadth first (its children first), from
    ``parent_of`` (:func:`parent_pids` when not given)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in (parent_pids() if parent_of is None else parent_of).items():
        children.setdefault(ppid, []).append(pid)
    found = list(children.get(root, ()))
    seen = set(found)
    for pid in found:  # grows as it goes
        for child in children.get(pid, ()):
            if child not in seen:  # a pid reused while /proc was read may loop
                seen.add(child)
                found.append(child)
    return found


def raise_fd_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one (at most 65,536), for a
    process that holds one or more per container: the usual soft limit, 1,024, would be
    a thousand containers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 16), hard))


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


def retitle(title: str, *, name: bool = False) -> bool:
    """Show ``title`` as this process's command line from now on (``/proc/PID/cmdline``,
    what ``ps`` prints): the memory its arguments were passed in is overwritten, the rest
    of it zeroed. A fork of the holder keeps the holder's command line (the interpreter's
    path, the state folder's and the cgroup's), which any process that can see it may
    read; Python keeps copies of its arguments of its own. With ``name``, its name
    (``comm``) becomes ``title`` too. Whether it was written: a process that is not
    dumpable may not (``/proc/self/mem`` is then root's), nor one whose kernel refuses
    writes to it."""
    if name:
        with contextlib.suppress(OSError):
            Path("/proc/self/comm").write_text(title[:15])
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end: fields 48 and 49
    data = title.encode()[: max(0, end - start - 1)].ljust(end - start, b"\0")
    try:
        mem = os.open("/proc/self/mem", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.pwrite(mem, data, start) == len(data)
    except OSError:
        return False
    finally:
        os.close(mem)
